"""pysyncobj, imported once and repaired: the modules of raft/ import it from here only.

Importing pysyncobj replaces socket.inet_ntop process-wide, on Linux too, with a Windows-only
function that raises TypeError (pysyncobj/win_inet_pton.py; pysyncobj only ever uses
inet_pton). scapy and pyroute2 decode addresses with inet_ntop: the real one goes back at once,
whichever raft module is imported first (a process that imported raft.durable before
raft.cluster had pyroute2 return addresses as bytes).
"""

from __future__ import annotations

import _socket
import socket

from pysyncobj import (
    FAIL_REASON,
    SyncObj,
    SyncObjConf,
    SyncObjConsumer,
    journal,
    replicated,
    syncobj,
)
from pysyncobj.tcp_connection import TcpConnection
from pysyncobj.transport import TCPTransport

socket.inet_ntop = _socket.inet_ntop

__all__ = [
    "FAIL_REASON",
    "SyncObj",
    "SyncObjConf",
    "SyncObjConsumer",
    "TCPTransport",
    "TcpConnection",
    "journal",
    "replicated",
    "syncobj",
]
