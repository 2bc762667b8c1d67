"""BFD beside exabgp: FRR's bfdd, supervised by the agent the way exabgp is.

exabgp has no BFD. Without it a node that goes silent (a frozen VM, a cut link) keeps its
paths on the router until the BGP hold timer expires (3 s at best), and a third of the clients
fail meanwhile. With BFD the router learns of it after interval x multiplier (300 ms with the
defaults) and drops the node's paths at once. bfdd runs standalone (no zebra: it needs no
routes, only its sessions), single hop, one session per BGP peer from that session's source
address; the router must run BFD on its side too (docs/routers.md).

bfdd drops to user `frr` when started as root (its runtime directory is made theirs); its
state is read every `poll` seconds from its vty socket (`show bfd peers json`), so `status()`
never blocks and costs nothing whatever the rate it is asked at.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path
from typing import Any

from announce.child import Supervised

log = logging.getLogger("raftlb.bfd")
BFDD = Path("/usr/lib/frr/bfdd")
Address = IPv4Address | IPv6Address
VTY_END = b"\0\0\0"  # then one status byte: the end of an answer on a daemon's vty socket


@dataclass(frozen=True, slots=True)
class BfdPeer:
    address: Address
    local_address: Address
    interval_ms: int = 100
    multiplier: int = 3


def render_bfdd(peers: Sequence[BfdPeer]) -> str:
    """bfdd.conf: one single-hop session per peer, the same interval both ways."""
    lines = ["bfd"]
    for peer in peers:
        lines += [
            f" peer {peer.address} local-address {peer.local_address}",
            f"  receive-interval {peer.interval_ms}",
            f"  transmit-interval {peer.interval_ms}",
            f"  detect-multiplier {peer.multiplier}",
            " exit",
        ]
    lines += ["exit", ""]
    return "\n".join(lines)


def parse_peers(text: str) -> dict[str, dict[str, Any]]:
    """`show bfd peers json` -> {peer address: {status, uptime or downtime, diagnostic}}."""
    out: dict[str, dict[str, Any]] = {}
    for entry in json.loads(text or "[]"):
        if not isinstance(entry, dict) or "peer" not in entry:
            continue
        out[str(entry["peer"])] = {
            "status": str(entry.get("status", "unknown")),
            "up_for": entry.get("uptime"),
            "down_for": entry.get("downtime"),
            "diagnostic": entry.get("diagnostic"),
            "remote_diagnostic": entry.get("remote-diagnostic"),
        }
    return out


async def vty(path: Path, command: str, timeout: float = 2.0) -> str:
    """One command on an FRR daemon's vty socket (what vtysh does, without a process)."""

    async def ask() -> str:
        reader, writer = await asyncio.open_unix_connection(str(path))
        try:
            answer = b""
            for line in ("enable", command):
                writer.write(line.encode() + b"\0")
                await writer.drain()
                answer = b""
                while not (len(answer) >= 4 and answer[-4:-1] == VTY_END):
                    chunk = await reader.read(65536)
                    if not chunk:
                        raise ConnectionError(f"{path} closed mid-answer")
                    answer += chunk
            return answer[:-4].decode(errors="replace")
        finally:
            writer.close()

    return await asyncio.wait_for(ask(), timeout)


class BfdDaemon:
    """bfdd for `peers`, its files under `run_dir` (asyncio; create it inside the loop)."""

    def __init__(
        self, peers: Sequence[BfdPeer], run_dir: Path, bfdd: Path = BFDD, poll: float = 1.0
    ) -> None:
        self.peers = tuple(peers)
        self.dir = run_dir
        self.bfdd = bfdd
        self.poll = poll
        self.sessions: dict[str, dict[str, Any]] = {}
        self.child: Supervised | None = None
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        conf = self.dir / "bfdd.conf"
        conf.write_text(render_bfdd(self.peers))
        if os.geteuid() == 0:
            with contextlib.suppress(LookupError):  # no user frr: bfdd says so in its log
                shutil.chown(self.dir, "frr", "frr")
                shutil.chown(conf, "frr", "frr")
        argv = [str(self.bfdd), "-f", str(conf), "-i", str(self.dir / "bfdd.pid")]
        argv += ["--vty_socket", str(self.dir), "--bfdctl", str(self.dir / "bfdd.sock")]
        argv += ["-z", str(self.dir / "zserv.api"), "--log", "stdout"]
        self.child = Supervised("bfdd", argv, log, on_exit=self.sessions.clear)
        self._tasks = [
            asyncio.create_task(self.child.run(), name="bfdd"),
            asyncio.create_task(self._watch(), name="bfdd-status"),
        ]

    def status(self) -> dict[str, Any]:
        return {
            "running": self.child is not None and self.child.running(),
            "restarts": self.child.restarts if self.child is not None else 0,
            "peers": {
                str(p.address): self.sessions.get(str(p.address), {"status": "unknown"})
                for p in self.peers
            },
        }

    async def close(self) -> None:
        if self.child is not None:
            await self.child.stop()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        shutil.rmtree(self.dir, ignore_errors=True)  # sockets and pid of a stopped bfdd

    async def _watch(self) -> None:
        was: dict[str, str] = {}
        while True:
            await asyncio.sleep(self.poll)
            if self.child is None or not self.child.running():
                continue
            try:
                self.sessions = parse_peers(await vty(self.dir / "bfdd.vty", "show bfd peers json"))
            except (OSError, ValueError, TimeoutError) as exc:
                log.debug("bfdd's state not read (%s); trying again in %.1fs", exc, self.poll)
                continue
            for peer, session in self.sessions.items():
                if was.get(peer) != session["status"]:
                    log.info("BFD session with %s is %s", peer, session["status"])
                    was[peer] = session["status"]
