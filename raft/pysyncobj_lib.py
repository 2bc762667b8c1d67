"""pysyncobj, imported once, repaired and checked: the one seam between raft/ and pysyncobj.

raft/ needs a few of pysyncobj's private parts (its journal, transport, election deadline and
role; the journal's file; the connection's read path). They are reached through the functions
below only, and checked here at import: a pysyncobj release that renamed one fails the agent's
start with the attribute's name instead of degrading (a role shown as "unknown", a journal
that silently stops syncing, a Raft port without its frame bounds).

Importing pysyncobj also replaces socket.inet_ntop process-wide, on Linux too, with a
Windows-only function that raises TypeError (pysyncobj/win_inet_pton.py; pysyncobj only ever
uses inet_pton). scapy and pyroute2 decode addresses with inet_ntop: the real one goes back at
once, whichever raft module is imported first (a process that imported raft.durable before
raft.cluster had pyroute2 return addresses as bytes).
"""

from __future__ import annotations

import _socket
import inspect
import logging
import re
import socket
import threading
from typing import Any

from pysyncobj import (
    FAIL_REASON,
    SyncObj,
    SyncObjConf,
    SyncObjConsumer,
    journal,
    replicated,
    syncobj,
)
from pysyncobj.monotonic import monotonic as _pysyncobj_clock
from pysyncobj.tcp_connection import TcpConnection
from pysyncobj.transport import TCPTransport
from pysyncobj.version import VERSION

socket.inet_ntop = _socket.inet_ntop

log = logging.getLogger(__name__)

TESTED_VERSION = "0.3.17"

# SyncObj's handler of every incoming message, overridden by raft/guarded.py (PreVote).
ON_MESSAGE = "_SyncObj__onMessageReceived"
# TcpConnection's read path, wrapped by raft/wire.py.
CONNECTION_READ = "_TcpConnection__processRead"
CONNECTION_PARSE = "_TcpConnection__processParseMessage"
CONNECTION_BUFFER = "_TcpConnection__readBuffer"


class PysyncobjMismatchError(RuntimeError):
    """The installed pysyncobj lacks a part raft/ relies on."""


def _require(owner: Any, name: str) -> None:
    if not hasattr(owner, name):
        raise PysyncobjMismatchError(
            f"pysyncobj {VERSION} has no {owner.__name__}.{name}; raftlb was built against "
            f"pysyncobj {TESTED_VERSION}: install that version"
        )


def _require_assigned(cls: type, *names: str) -> None:
    """Instance attributes exist only once an object is built: check that the class's own
    source assigns them (`self.__raftLog = ...`, name-mangled to _SyncObj__raftLog)."""
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError) as exc:
        problem = f"cannot read pysyncobj's {cls.__name__} source: {exc}"
        raise PysyncobjMismatchError(problem) from None
    for name in names:
        if not re.search(rf"self\.{re.escape(name)}\s*=", source):
            raise PysyncobjMismatchError(
                f"pysyncobj {VERSION} no longer sets {cls.__name__}.{name}; raftlb was built "
                f"against pysyncobj {TESTED_VERSION}: install that version"
            )


def check() -> None:
    """Every private part raft/ uses exists (run at import)."""
    for name in ("_onTick", "_getLeader", "_isLeader", "isNodeConnected", "addOnTickCallback"):
        _require(SyncObj, name)
    _require_assigned(SyncObj, "__raftLog", "__transport", "__raftElectionDeadline")
    _require_assigned(SyncObj, "__raftState", "__thread", "__raftCurrentTerm", "__otherNodes")
    _require_assigned(SyncObj, "__transferInProgress", "__lastResponseTime")
    for name in (ON_MESSAGE, "_SyncObj__getCurrentLogIndex", "_SyncObj__getCurrentLogTerm"):
        _require(SyncObj, name)
    _require(SyncObj, "_SyncObj__connectedToAnyone")
    for name in ("FileJournal", "MemoryJournal", "MetaStorer", "ResizableFile", "dumps"):
        _require(journal, name)
    _require_assigned(journal.FileJournal, "__journalFile", "__metaStorer")
    _require_assigned(journal.ResizableFile, "__f")
    _require(syncobj, "createJournal")
    _require(syncobj, "_RAFT_STATE")
    for name in ("FOLLOWER", "CANDIDATE", "LEADER"):
        _require(syncobj._RAFT_STATE, name)
    _require(TcpConnection, CONNECTION_READ)
    _require(TcpConnection, CONNECTION_PARSE)
    _require_assigned(TcpConnection, "__readBuffer")
    for name in ("_onNewIncomingConnection", "_onTick", "send"):
        _require(TCPTransport, name)
    _require_assigned(TCPTransport, "_unknownConnections")
    if VERSION != TESTED_VERSION:
        log.warning(
            "pysyncobj %s is installed; raftlb was tested with %s (its private parts are "
            "present, but check the release notes)",
            VERSION,
            TESTED_VERSION,
        )


check()
_ROLES = {
    syncobj._RAFT_STATE.FOLLOWER: "follower",
    syncobj._RAFT_STATE.CANDIDATE: "candidate",
    syncobj._RAFT_STATE.LEADER: "leader",
}


# -- SyncObj ------------------------------------------------------------------------------------


def raft_log(obj: Any) -> Any:
    """The node's journal (raft.durable.DurableJournal when durable)."""
    return obj._SyncObj__raftLog


def transport(obj: Any) -> Any:
    return obj._SyncObj__transport


def role(obj: Any) -> str:
    """The node's Raft role: follower, candidate or leader."""
    return _ROLES[obj._SyncObj__raftState]


def now() -> float:
    """pysyncobj's clock: CLOCK_MONOTONIC_RAW, not time.monotonic (0.15 s apart here, and the
    gap drifts as NTP slews CLOCK_MONOTONIC). Every time compared with its election deadline
    must come from this clock."""
    return float(_pysyncobj_clock())


def set_election_deadline(obj: Any, deadline: float) -> None:
    obj._SyncObj__raftElectionDeadline = deadline


def election_deadline(obj: Any) -> float:
    return float(obj._SyncObj__raftElectionDeadline)


def current_term(obj: Any) -> int:
    return int(obj._SyncObj__raftCurrentTerm)


def last_log(obj: Any) -> tuple[int, int]:
    """(term, index) of the node's last log entry."""
    return int(obj._SyncObj__getCurrentLogTerm()), int(obj._SyncObj__getCurrentLogIndex())


def other_nodes(obj: Any) -> list[Any]:
    return list(obj._SyncObj__otherNodes)


def transfer_in_progress(obj: Any) -> bool:
    """A leadership transfer asked this node to campaign at once (TimeoutNow)."""
    return bool(obj._SyncObj__transferInProgress)


def connected_to_anyone(obj: Any) -> bool:
    return bool(obj._SyncObj__connectedToAnyone())


def response_ages(obj: Any, at: float) -> dict[str, float]:
    """A leader's view: seconds since each follower last answered (its check-quorum input)."""
    return {str(node.id): at - float(t) for node, t in obj._SyncObj__lastResponseTime.items()}


def on_message(obj: Any, node: Any, message: Any) -> None:
    """pysyncobj's own handling of an incoming message (under an override)."""
    getattr(SyncObj, ON_MESSAGE)(obj, node, message)


def tick_thread(obj: Any) -> threading.Thread | None:
    thread = obj._SyncObj__thread
    return thread if isinstance(thread, threading.Thread) else None


# -- FileJournal --------------------------------------------------------------------------------


def journal_fd(file_journal: Any) -> int:
    """The journal file's descriptor. ResizableFile reopens its file when it grows it: look
    it up at each use."""
    return int(file_journal._FileJournal__journalFile._ResizableFile__f.fileno())


def set_meta_storer(file_journal: Any, storer: Any) -> None:
    file_journal._FileJournal__metaStorer = storer


__all__ = [
    "CONNECTION_BUFFER",
    "CONNECTION_PARSE",
    "CONNECTION_READ",
    "FAIL_REASON",
    "ON_MESSAGE",
    "PysyncobjMismatchError",
    "SyncObj",
    "SyncObjConf",
    "SyncObjConsumer",
    "TCPTransport",
    "TcpConnection",
    "connected_to_anyone",
    "current_term",
    "election_deadline",
    "journal",
    "journal_fd",
    "last_log",
    "now",
    "on_message",
    "other_nodes",
    "raft_log",
    "replicated",
    "response_ages",
    "role",
    "set_election_deadline",
    "set_meta_storer",
    "syncobj",
    "tick_thread",
    "transfer_in_progress",
    "transport",
]
