"""pysyncobj replaces socket.inet_ntop when imported; raft/ puts it back whichever of its
modules a process imports first (pyroute2 and scapy decode addresses with it)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from raft import pysyncobj_lib

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


def test_the_installed_pysyncobj_has_every_part_raft_uses() -> None:
    pysyncobj_lib.check()  # what the import ran; a mismatch raises


def test_a_missing_method_fails_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(pysyncobj_lib.TcpConnection, pysyncobj_lib.CONNECTION_READ)
    named = r"TcpConnection\._TcpConnection__processRead"
    with pytest.raises(pysyncobj_lib.PysyncobjMismatchError, match=named):
        pysyncobj_lib.check()


def test_an_instance_attribute_no_longer_assigned_fails_naming_it() -> None:
    class Renamed:
        def __init__(self) -> None:
            self.__log = []  # was __raftLog

    with pytest.raises(pysyncobj_lib.PysyncobjMismatchError, match=r"Renamed\.__raftLog"):
        pysyncobj_lib._require_assigned(Renamed, "__raftLog")
