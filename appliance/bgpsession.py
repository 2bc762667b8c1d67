"""An agent's BGP config as exabgp's session, and exabgp's own verdict on it.

The agent builds its exabgp session here, and `raftlb config check` asks exabgp itself
(`exabgp validate`) about the very config the agent would render: what exabgp refuses makes it
restart in a loop with the node announcing nothing, so the check must refuse it first, not only
the cases the config model knows of.
"""

from __future__ import annotations

import ipaddress
import subprocess
import sys
import tempfile
from pathlib import Path

from announce.bgp import exabgp_binary
from announce.bgp_config import Peer, Session, render_config
from appliance.config import BgpConfig, split_host_port


def session_of(bgp: BgpConfig, raft_address: str) -> Session:
    """This node's sessions (config.cross_checks refused a peer without a source)."""
    host, _ = split_host_port(raft_address)
    router_id = bgp.router_id or ipaddress.IPv4Address(host)
    peers = []
    for p in bgp.peers:
        local = bgp.peer_local(p, router_id)
        if local is None:
            raise ValueError(f"peer {p.address} has no source address of its family")
        peers.append(Peer(p.address, p.asn, local, p.hold_time, p.passive))
    return Session(bgp.asn, router_id, tuple(peers))


class ExabgpUnavailableError(RuntimeError):
    """exabgp could not be asked (not installed, or no answer in time): no verdict either way."""


def exabgp_verdict(session: Session, exabgp: str | None = None, timeout: float = 60) -> str | None:
    """None if exabgp accepts the rendered config, else the end of what it said."""
    relay = [sys.executable, "-m", "announce.exabgp_relay", "/dev/null"]
    with tempfile.TemporaryDirectory(prefix="raftlb-check-") as tmp:
        conf = Path(tmp) / "exabgp.conf"
        conf.write_text(render_config(session, relay))
        try:
            done = subprocess.run(
                [exabgp or exabgp_binary(), "validate", str(conf)],
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ExabgpUnavailableError(f"exabgp could not be asked ({exc})") from exc
    if done.returncode == 0:
        return None
    said = [line.strip() for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    return "; ".join(said[-3:]) or f"exabgp validate exited with {done.returncode}"
