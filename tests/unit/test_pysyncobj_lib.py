"""pysyncobj replaces socket.inet_ntop when imported; raft/ puts it back whichever of its
modules a process imports first (pyroute2 and scapy decode addresses with it)."""

from __future__ import annotations

import subprocess
import sys

import pytest

CHECK = (
    "import socket, {module}\n"
    "print(socket.inet_ntop(socket.AF_INET, bytes([127, 0, 0, 1])), "
    "socket.inet_ntop(socket.AF_INET6, bytes(15) + bytes([1])))"
)


@pytest.mark.parametrize("module", ["raft.durable", "raft.wire", "raft.cluster"])
def test_inet_ntop_works_after_importing_any_raft_module(module: str) -> None:
    done = subprocess.run(
        [sys.executable, "-c", CHECK.format(module=module)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["127.0.0.1", "::1"]
