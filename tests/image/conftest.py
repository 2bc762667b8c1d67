"""Fixtures of the image tests: one image built per session by `images/build.sh` (as CI and
operators build it), kept with its root folder for the build checks, then booted under qemu.

Skipped, with the reason, when not root or when a tool is missing. `RAFTLB_TEST_IMAGE=PATH`
reuses an image already built, and `RAFTLB_TEST_IMAGE_ROOT` the root folder that
`images/build.sh --keep-work` kept (without it, the checks that need that folder skip).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.image.vmkit import have_tools

ROOT = Path(__file__).resolve().parents[2]
IMAGE_TESTS = Path(__file__).parent


@dataclass(frozen=True)
class BuiltImage:
    path: Path
    root: Path | None  # the image's root folder (None for RAFTLB_TEST_IMAGE)
    seconds: float
    manifest: Path | None


def skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "building and booting the image needs root (mmdebstrap, network namespaces, taps)"
    return have_tools()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = skip_reason()
    for item in items:
        if IMAGE_TESTS in item.path.parents and reason:
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def built_image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BuiltImage]:
    given = os.environ.get("RAFTLB_TEST_IMAGE")
    if given:
        root = os.environ.get("RAFTLB_TEST_IMAGE_ROOT")  # a --keep-work folder's root/
        manifest = next(Path(given).parent.glob("raftlb-*.manifest"), None)
        yield BuiltImage(Path(given), Path(root) if root else None, 0.0, manifest)
        return
    out = tmp_path_factory.mktemp("image")
    started = time.monotonic()
    # The build's numbered steps are shown as they come (pytest -s): a slow mirror shows as such.
    lines = []
    with subprocess.Popen(
        ["bash", str(ROOT / "images/build.sh"), "--out", str(out), "--keep-work"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    ) as build:
        assert build.stdout is not None
        for line in build.stdout:
            print(line, end="", flush=True)
            lines.append(line)
    output = "".join(lines)
    kept = re.search(r"work directory kept: (\S+)", output)
    work = Path(kept.group(1)) if kept else None
    try:
        assert build.returncode == 0, f"images/build.sh failed:\n{output}"
        image = next(out.glob("raftlb-*.qcow2"))
        manifest = next(out.glob("raftlb-*.manifest"))
        assert work is not None
        yield BuiltImage(image, work / "root", time.monotonic() - started, manifest)
    finally:
        if work is not None:
            shutil.rmtree(work, ignore_errors=True)
