"""Importing the Raft layer leaves the socket module as the standard library made it."""

from __future__ import annotations

import subprocess
import sys


def test_importing_raft_cluster_keeps_a_working_inet_ntop() -> None:
    # A fresh interpreter: in this one, other test modules may already have imported it.
    code = (
        "import socket, raft.cluster\n"
        "print(socket.inet_ntop(socket.AF_INET6, bytes(15) + b'\\x01'))\n"
        "print(socket.inet_ntop(socket.AF_INET, bytes([192, 0, 2, 1])))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["::1", "192.0.2.1"]
