"""The import contracts of pyproject.toml hold for the tree, and each breaks on the import it
forbids, made by a module the contracts have never heard of (they name whole packages).

lint-imports runs in a fresh interpreter whose working directory, first on its import path, holds
the packages to check: the real tree, or a copy with one module added.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "pyproject.toml"
PACKAGES = ("appliance", "raft", "announce", "k8s_sync")
CONTRACTS = {
    c["id"]: c["name"]
    for c in tomllib.loads(CONFIG.read_text())["tool"]["importlinter"]["contracts"]
}

# (new module, its source, the contract it breaks)
LEAKS = [
    ("raft/leak.py", "from appliance import health\n", "layers"),
    ("k8s_sync/leak.py", "from appliance.api import views\n", "layers"),
    ("announce/leak.py", "import raft.state\n", "layers"),
    ("raft/leak.py", "from pysyncobj import SyncObj\n", "pysyncobj"),
    ("appliance/dataplane/leak.py", "import pysyncobj\n", "pysyncobj"),
    ("appliance/leak.py", "import kubernetes\n", "kubernetes"),
    ("raft/leak.py", "import pyroute2\n", "network-libraries"),
    ("k8s_sync/leak.py", "from scapy.layers.l2 import Ether\n", "network-libraries"),
    ("appliance/dataplane/leak.py", "import exabgp\n", "network-libraries"),
    ("appliance/cli/leak.py", "from appliance.lab import local\n", "lab"),
    # Imported only when called: still an import of the lab.
    ("appliance/leak.py", "def run() -> None:\n    from appliance.lab import cli\n", "lab"),
]


def lint_imports(cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-c",
            "from importlinter.cli import lint_imports_command; lint_imports_command()",
            str(CONFIG),
            "--no-cache",
            "--no-logo",
        ],
        cwd=cwd,
        # Wide, so that no contract name is wrapped.
        env={**os.environ, "COLUMNS": "300"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture(scope="module")
def copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The packages of the tree, copied once for every case."""
    root = tmp_path_factory.mktemp("tree")
    for package in PACKAGES:
        shutil.copytree(
            ROOT / package, root / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    return root


@pytest.fixture
def leak(copy: Path) -> Iterator[Path]:
    """The copy, for a case to add its module to; the module is removed afterwards."""
    yield copy
    for path in copy.glob("**/leak.py"):
        path.unlink()


def test_the_tree_keeps_every_contract() -> None:
    done = lint_imports(ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"Contracts: {len(CONTRACTS)} kept, 0 broken." in done.stdout


@pytest.mark.parametrize(("module", "source", "contract"), LEAKS)
def test_a_new_module_with_a_forbidden_import_breaks_its_contract(
    leak: Path, module: str, source: str, contract: str
) -> None:
    (leak / module).write_text(source)
    done = lint_imports(leak)
    assert done.returncode == 1, done.stdout + done.stderr
    importer = module.removesuffix(".py").replace("/", ".")
    assert f"{CONTRACTS[contract]} BROKEN" in done.stdout, done.stdout
    assert f"Contracts: {len(CONTRACTS) - 1} kept, 1 broken." in done.stdout, done.stdout
    assert f"{importer} ->" in done.stdout, done.stdout


def test_the_base_is_checked_in_place(copy: Path) -> None:
    tally = copy / "appliance" / "tally.py"
    before = tally.read_text()
    tally.write_text(before + "\nfrom appliance import config  # noqa: E402\n")
    try:
        done = lint_imports(copy)
    finally:
        tally.write_text(before)
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"{CONTRACTS['base']} BROKEN" in done.stdout, done.stdout
    assert f"Contracts: {len(CONTRACTS) - 1} kept, 1 broken." in done.stdout, done.stdout
    assert "appliance.tally -> appliance.config" in done.stdout, done.stdout
