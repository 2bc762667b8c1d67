"""The Kubernetes client is an extra (`raftlb[k8s]`): raftlb works without it, and the sync,
the one part that needs it, says what to install."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from appliance.cli.main import cli

EXTRA = "pip install 'raftlb[k8s]'"


@pytest.fixture
def no_client(monkeypatch: pytest.MonkeyPatch) -> None:
    """Importing kubernetes fails from now on, as where it is not installed."""
    monkeypatch.setitem(sys.modules, "kubernetes", None)


@pytest.mark.usefixtures("no_client")
def test_k8s_sync_without_the_client_names_the_extra(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("k8s-extra-test-token-0123456789\n")
    args = ["k8s-sync", "--in-cluster", "--api", "http://127.0.0.1:9", "--token-file", str(token)]
    result = CliRunner(env={"RAFTLB_KUBECONFIG": None}).invoke(
        cli, [*args, "--cluster-name", "prod"]
    )
    assert result.exit_code == 1, result.output
    assert EXTRA in result.output
    assert "Traceback" not in result.output


@pytest.mark.usefixtures("no_client")
def test_the_informer_without_the_client_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "k8s_sync.informer", raising=False)
    with pytest.raises(ModuleNotFoundError, match=r"raftlb\[k8s\]"):
        importlib.import_module("k8s_sync.informer")


def test_the_agent_and_the_cli_load_neither_kubernetes_nor_scapy() -> None:
    # A fresh interpreter: this one has both loaded for other tests.
    code = (
        "import sys, appliance.cli.main, appliance.agent\n"
        "print([m for m in sys.modules if m.partition('.')[0] in ('kubernetes', 'scapy')])\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["[]"]
