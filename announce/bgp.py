"""The BGP announcer: one exabgp child per agent, driven through its API.

exabgp runs as a child of the agent (in its process group, with a parent-death signal, so a
killed agent leaves no exabgp), in the foreground, as the agent's user: `raftlb` in the image,
whose capabilities it inherits (see raftlb-agent.service), root in the namespace lab, where
`daemon.user=root` keeps it from switching to its default user `nobody`. Its API process is
`announce.exabgp_relay`, which connects back to the agent's unix socket. `set(routes)` is
idempotent: the announcer keeps the desired routes and sends exabgp only the difference; when
exabgp (re)starts, everything is sent again. exabgp that dies is restarted with backoff;
meanwhile `status()` says it is not announcing. `close()` withdraws everything first, so a
graceful stop drains the node.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from announce.bgp_config import Route, Session, changes, render_config
from announce.child import Supervised

log = logging.getLogger("raftlb.bgp")
ENV = {
    "exabgp_daemon_daemonize": "false",
    "exabgp_daemon_user": "root",
    "exabgp_daemon_drop": "false",
    "exabgp_log_destination": "stdout",
    "exabgp_api_cli": "false",
}


def exabgp_binary() -> str:
    beside = Path(sys.executable).parent / "exabgp"
    return str(beside) if beside.exists() else "exabgp"


class BgpAnnouncer:
    """Announces routes through a supervised exabgp (asyncio; create it inside the loop)."""

    def __init__(self, session: Session, run_dir: Path, exabgp: str | None = None) -> None:
        self.session = session
        self.dir = run_dir
        self.exabgp = exabgp or exabgp_binary()
        self.socket_path = run_dir / "exabgp.sock"
        self.config_path = run_dir / "exabgp.conf"
        self.desired: frozenset[Route] = frozenset()
        self.sent: frozenset[Route] = frozenset()
        self.peers: dict[str, str] = {str(p.address): "down" for p in session.peers}
        self.up_since: dict[str, float] = {}  # peer -> monotonic time its session came up
        self.refreshes: dict[str, int] = {str(p.address): 0 for p in session.peers}
        self.errors = 0
        self.child: Supervised | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._server: asyncio.base_events.Server | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._readers: set[asyncio.Task[None]] = set()
        self._closing = False

    async def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        self._server = await asyncio.start_unix_server(self._on_relay, path=str(self.socket_path))
        relay = [sys.executable, "-m", "announce.exabgp_relay", str(self.socket_path)]
        self.config_path.write_text(render_config(self.session, relay))
        self.child = Supervised(
            "exabgp",
            [self.exabgp, "server", str(self.config_path)],
            log,
            env=ENV,
            on_exit=self._lost_relay,
        )
        self._supervisor = asyncio.create_task(self.child.run(), name="exabgp")

    # --- what the agent calls ----------------------------------------------------------------

    def set(self, routes: Iterable[Route]) -> None:
        self.desired = frozenset(routes)
        self._flush()

    @property
    def restarts(self) -> int:
        return self.child.restarts if self.child is not None else 0

    def announcing(self) -> bool:
        return self._writer is not None

    def status(self) -> dict[str, Any]:
        now = time.monotonic()
        sent = len(self.sent)
        return {
            "running": self.child is not None and self.child.running(),
            "announcing": self.announcing(),
            "peers": dict(self.peers),
            "sessions": {
                peer: {
                    "state": state,
                    "up_for": round(now - self.up_since[peer], 1)
                    if peer in self.up_since
                    else None,
                    # exabgp sends every route to every established peer.
                    "routes_sent": sent if state == "up" else 0,
                    "refreshes": self.refreshes.get(peer, 0),
                }
                for peer, state in sorted(self.peers.items())
            },
            "routes": sorted(r.prefix for r in self.sent),
            "restarts": self.restarts,
            "errors": self.errors,
        }

    async def close(self, withdraw_wait: float = 1.0) -> None:
        """Withdraw every route (a graceful stop drains the node), then stop exabgp.

        The node keeps forwarding for `withdraw_wait` while routers act on the withdraw: as
        long as a planned withdraw's grace (the reconciler's withdraw_grace), since FRR on a
        loaded machine took more than the 0.5 s this was (one failed request in a CI run)."""
        self._closing = True
        if self._writer is not None and self.sent:
            self._send(changes(self.sent, ()))  # withdraw everything
            self.sent = frozenset()
            with contextlib.suppress(ConnectionError):
                await self._writer.drain()
            await asyncio.sleep(withdraw_wait)  # let the UPDATE leave before the session ends
        if self.child is not None:
            await self.child.stop()
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
        if self._server is not None:
            self._server.close()
        for task in list(self._readers):
            task.cancel()
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()

    # --- exabgp and its relay ----------------------------------------------------------------

    async def _on_relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._writer is not None:
            self._writer.close()
        self._writer = writer
        self.sent = frozenset()  # a new exabgp knows nothing: send everything again
        log.info("exabgp API connected; announcing %d route(s)", len(self.desired))
        self._flush()
        task = asyncio.current_task()
        if task is not None:
            self._readers.add(task)
        try:
            async for line in reader:
                self._on_message(line.decode(errors="replace").strip())
        finally:
            if self._writer is writer:
                self._lost_relay()
            if task is not None:
                self._readers.discard(task)

    def _lost_relay(self) -> None:
        self._writer = None
        self.sent = frozenset()
        for peer in self.peers:
            self.peers[peer] = "down"
        self.up_since.clear()

    def _on_message(self, line: str) -> None:
        if not line or line == "done":
            return
        if line.startswith("error"):
            self.errors += 1
            log.error("exabgp refused a command: %s", line)
            return
        try:
            message = json.loads(line)
        except ValueError:
            return
        neighbor = message.get("neighbor") or {}
        peer = str((neighbor.get("address") or {}).get("peer"))
        if peer not in self.peers:
            return
        if message.get("type") == "state":
            state = str(neighbor.get("state"))
            if self.peers[peer] != state:
                log.info("BGP session with %s is %s", peer, state)
                self.peers[peer] = state
                if state == "up":
                    self.up_since[peer] = time.monotonic()
                else:
                    self.up_since.pop(peer, None)
        elif message.get("type") == "refresh" and neighbor.get("direction") == "receive":
            # exabgp answers it from its adj-rib-out; counted, so an operator sees that the
            # router re-read this node's routes (after a restart or a policy change).
            self.refreshes[peer] += 1
            log.info("BGP peer %s asked for the routes again (route refresh)", peer)

    def _flush(self) -> None:
        # Once closing, nothing is announced again (the reconciler still runs meanwhile).
        if self._closing or self._writer is None or self.desired == self.sent:
            return
        commands = changes(self.sent, self.desired)
        self._send(commands)
        for command in commands:
            log.info("bgp: %s", command)
        self.sent = self.desired

    def _send(self, commands: list[str]) -> None:
        assert self._writer is not None
        # exabgp reads one command per line: a command holding a line break (an address with
        # a zone id that carried one) would become two. The model refuses such values; this
        # is the last line of defence between a stored value and the routers.
        safe = [c for c in commands if c.isprintable()]
        for command in commands:
            if not command.isprintable():
                log.error("bgp: not sent, it holds control characters: %r", command[:200])
        self._writer.write("".join(f"{c}\n" for c in safe).encode())
