"""BFD beside exabgp: a BIRD that speaks only BFD, supervised by the agent the way exabgp is.

exabgp has no BFD. Without it a node that goes silent (a frozen VM, a cut link) keeps its
paths on the router until the BGP hold timer expires (3 s at best), and a third of the clients
fail meanwhile. With BFD the router learns of it after interval x multiplier (300 ms with the
defaults) and drops the node's paths at once. One single-hop session per BGP peer, from that
session's source address; the router must run BFD on its side too (docs/routers.md).

Why BIRD and not FRR's bfdd: the appliance's agent runs unprivileged with three capabilities
(NET_ADMIN, NET_RAW, NET_BIND_SERVICE) and no way to gain more (NoNewPrivileges). bfdd insists
on CAP_SYS_ADMIN and on switching groups at start ("initial cap_set_proc failed"), so it cannot
run as the agent's child there; BIRD runs with what the agent has (BFD needs a socket on UDP
port 3784 and interface events, nothing else). This BIRD has `protocol device` and `protocol bfd`
only: no kernel, no BGP, so it touches no route.

Its state is read every `poll` seconds from its control socket (`show bfd sessions`), so
`status()` never blocks and costs nothing whatever the rate it is asked at.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path
from typing import Any

from announce.child import Supervised

log = logging.getLogger("raftlb.bfd")
BIRD = Path("/usr/sbin/bird")
Address = IPv4Address | IPv6Address
STATES = {"Up": "up", "Down": "down", "Init": "init", "AdminDown": "admin-down"}


@dataclass(frozen=True, slots=True)
class BfdPeer:
    address: Address
    local_address: Address


@dataclass(frozen=True, slots=True)
class BfdTiming:
    interval_ms: int = 100  # both ways
    multiplier: int = 3  # packets missed in a row: down


def render_bird(peers: Sequence[BfdPeer], router_id: IPv4Address, timing: BfdTiming) -> str:
    """bird.conf: BFD sessions only, the same interval both ways on every interface."""
    lines = [
        "# raftlb: BFD with the BGP peers; this BIRD imports and exports no route.",
        f"router id {router_id};",
        "log stderr all;",
        "timeformat protocol iso long;",  # `Since` as a full date: the session's age is read
        "protocol device { scan time 10; }",
        "protocol bfd raftlb {",
        f'    interface "*" {{ interval {timing.interval_ms} ms; '
        f"multiplier {timing.multiplier}; }};",
    ]
    lines += [f"    neighbor {p.address} local {p.local_address};" for p in peers]
    lines += ["}", ""]
    return "\n".join(lines)


def parse_sessions(text: str, now: datetime | None = None) -> dict[str, dict[str, Any]]:
    """`show bfd sessions` -> {peer address: {status, up_for or down_for}}.

    A row is `ADDRESS INTERFACE STATE DATE TIME INTERVAL TIMEOUT`; the interface column may be
    missing or wider than its header, so the row is read around its state word."""
    now = now or datetime.now()
    out: dict[str, dict[str, Any]] = {}
    for line in text.splitlines():
        words = line.split()
        at = next((i for i, w in enumerate(words) if w in STATES), None)
        if at is None or at == 0 or words[0] == "IP":
            continue
        age: float | None = None
        with contextlib.suppress(ValueError):
            since = datetime.strptime(" ".join(words[at + 1 : at + 3]), "%Y-%m-%d %H:%M:%S")
            age = max(0.0, (now - since).total_seconds())
        status = STATES[words[at]]
        out[words[0]] = {
            "status": status,
            "up_for": age if status == "up" else None,
            "down_for": None if status == "up" else age,
        }
    return out


class BirdError(RuntimeError):
    """BIRD refused a command (its reply code 8xxx or 9xxx)."""


async def birdc(path: Path, command: str, timeout: float = 2.0) -> str:
    """One command on BIRD's control socket (what birdc does, without a process).

    Each reply line starts with a four-digit code and `-` (more follow) or ` ` (the last);
    a line starting with a space continues the previous code. 8xxx/9xxx are errors."""

    async def ask() -> str:
        reader, writer = await asyncio.open_unix_connection(str(path))
        try:
            await reader.readline()  # 0001 BIRD x.y ready.
            writer.write(command.encode() + b"\n")
            await writer.drain()
            lines: list[str] = []
            while True:
                raw = await reader.readline()
                if not raw:
                    raise ConnectionError(f"{path} closed mid-answer")
                text = raw.decode(errors="replace").rstrip("\n")
                if text[:4].isdigit() and text[4:5] in ("-", " "):
                    if text[0] in "89":
                        raise BirdError(text[5:])
                    lines.append(text[5:])
                    if text[4] == " ":
                        return "\n".join(lines)
                else:
                    lines.append(text[1:])
        finally:
            writer.close()

    return await asyncio.wait_for(ask(), timeout)


class BfdDaemon:
    """BIRD for `peers`, its files under `run_dir` (asyncio; create it inside the loop)."""

    def __init__(
        self,
        peers: Sequence[BfdPeer],
        router_id: IPv4Address,
        timing: BfdTiming,
        run_dir: Path,
        bird: Path = BIRD,
        poll: float = 1.0,
    ) -> None:
        self.peers = tuple(peers)
        self.router_id = router_id
        self.timing = timing
        self.dir = run_dir
        self.bird = bird
        self.poll = poll
        self.sessions: dict[str, dict[str, Any]] = {}
        self.child: Supervised | None = None
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def control(self) -> Path:
        return self.dir / "bird.ctl"

    async def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o750)
        conf = self.dir / "bird.conf"
        conf.write_text(render_bird(self.peers, self.router_id, self.timing))
        argv = [str(self.bird), "-f", "-c", str(conf), "-s", str(self.control)]
        argv += ["-P", str(self.dir / "bird.pid")]
        self.child = Supervised("bfd (bird)", argv, log, on_exit=self.sessions.clear)
        self._tasks = [
            asyncio.create_task(self.child.run(), name="bfd"),
            asyncio.create_task(self._watch(), name="bfd-status"),
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
        shutil.rmtree(self.dir, ignore_errors=True)  # socket and pid of a stopped BIRD

    async def _watch(self) -> None:
        was: dict[str, str] = {}
        failing_since: float | None = None
        warned = 0.0
        while True:
            await asyncio.sleep(self.poll)
            if self.child is None or not self.child.running():
                failing_since = None
                continue
            try:
                self.sessions = parse_sessions(await birdc(self.control, "show bfd sessions"))
            except (OSError, TimeoutError, BirdError) as exc:
                # Right after a start the socket is not there yet; a state unread for longer
                # is said once a minute at most.
                now = time.monotonic()
                failing_since = failing_since or now
                if now - failing_since > 5.0 and now - warned > 60.0:
                    log.warning(
                        "BFD state not read from %s for %.0fs (%s): `raftlb status` shows it "
                        "as unknown; the agent log at debug level has BIRD's own output",
                        self.control,
                        now - failing_since,
                        exc,
                    )
                    warned = now
                continue
            failing_since = None
            for peer, session in self.sessions.items():
                if was.get(peer) != session["status"]:
                    log.info("BFD session with %s is %s", peer, session["status"])
                    was[peer] = session["status"]
