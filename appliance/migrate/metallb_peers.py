"""MetalLB's BGP peers as the agent's `bgp` section: the BGP half of the MetalLB migration.

MetalLB configures its sessions per cluster, raftlb per agent (`bgp` in each node's agent.yaml),
with one AS number and fewer session settings. `Peers` collects a peer from each BGPPeer spec
(v1beta1/v1beta2) or entry of the ConfigMap's `peers`, read through `Fields`, so both spellings
share one reader and every setting raftlb drops or changes becomes a finding of the same report;
`agent_bgp` then answers the section the agents need. The pools and their advertisements stay in
`appliance.migrate.metallb`, which holds a `Peers` and asks it whether any peer is given.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from pydantic import ValidationError

from appliance.config import BgpConfig, BgpPeerConfig
from appliance.migrate import Fields, duration_seconds
from appliance.model import field_errors

NO_BFD = (
    "raftlb sets BFD per agent, not per profile: give each node's agent.yaml "
    "bgp.bfd: {interval_ms, multiplier} (BIRD's BFD beside exabgp)"
)
NO_PASSWORD = "raftlb's BGP sessions have no TCP MD5 password: the router must accept them without"
_PEER_IGNORED = {
    "nodeSelectors": "every appliance node peers with the peers of its own agent.yaml: leave "
    "this peer out of the agent.yaml of the nodes that must not reach it",
    "passwordSecret": NO_PASSWORD,
    "bfdProfile": NO_BFD,
    "ebgpMultiHop": "raftlb has no ebgp-multihop setting: check that a router more than one "
    "hop away accepts exabgp's session",
    "vrf": "raftlb's sessions use the appliance's main routing table",
    "enableGracefulRestart": "raftlb has no BGP graceful restart, on purpose: a router helping "
    "a restarting speaker keeps a dead node's paths for the restart time",
    "connectTime": "raftlb has no such setting: exabgp retries on its own schedule",
    "localASN": "raftlb has no local-AS override: its sessions speak as bgp.asn",
    "disableMP": "raftlb has no such setting",
    "dualStackAddressFamily": "raftlb has no such setting",
}
_PEER_CHANGED = {
    # Not copied to the peer: every agent would then claim the one node's address.
    "sourceAddress": "an address of one node: set it as this peer's local_address (or "
    "bgp.local_address) in the agent.yaml of the node that has it",
    "routerID": "raftlb sets the router id per agent (bgp.router_id, by default the IPv4 "
    "address of raft.address): set it in each node's agent.yaml if the router expects it",
}


@dataclass
class _PeerIn:
    fields: Fields  # kept to report on the peer once every peer is known
    my_asn: int
    peer: BgpPeerConfig


class Peers:
    """The peers of one migration's input; the findings and errors go to each Fields' Problems."""

    def __init__(self) -> None:
        self._peers: list[_PeerIn] = []

    def __len__(self) -> int:
        """How many peers translate to a raftlb peer (before `agent_bgp` leaves any out)."""
        return len(self._peers)

    def add(self, f: Fields) -> None:
        """One BGPPeer spec or ConfigMap peer entry (read to the last key: `f.finish` is done)."""
        my_asn, asn, address = f.number("myASN"), f.number("peerASN"), f.text("peerAddress")
        dynamic = f.unsupported("dynamicASN", "raftlb needs the peer's AS number: peer left out")
        unnumbered = f.unsupported("interface", "raftlb has no unnumbered BGP: peer left out")
        left_out = bool(dynamic or unnumbered)
        if my_asn is None or not 1 <= my_asn <= 0xFFFFFFFF:
            f.error("myASN", my_asn, "missing or not an AS number (1-4294967295)")
        if asn is None and not left_out:
            f.error("peerASN", asn, "missing")
        if address is None and not left_out:
            f.error("peerAddress", address, "missing")
        f.unsupported("peerPort", "raftlb's sessions dial port 179", default=179)
        hold = _hold_time(f)
        if f.raw("password"):
            f.report("password", "(hidden)", "ignored", NO_PASSWORD)
        for key, message in _PEER_IGNORED.items():
            f.unsupported(key, message)
        for key, message in _PEER_CHANGED.items():
            f.unsupported(key, message, "changed")
        f.finish()
        if left_out or my_asn is None or asn is None or address is None:
            return
        try:
            peer = BgpPeerConfig.model_validate(
                {"address": address, "asn": asn, **({} if hold is None else {"hold_time": hold})}
            )
        except ValidationError as exc:
            for err in field_errors(exc):
                name = {"address": "peerAddress", "asn": "peerASN"}.get(err["field"], "holdTime")
                f.error(name, err["value"], err["message"])
            return
        self._peers.append(_PeerIn(f, my_asn, peer))

    def agent_bgp(self) -> BgpConfig | None:
        """The agents' `bgp` section (None: no peer), reporting each peer it leaves out."""
        if not self._peers:
            return None
        asn = Counter(p.my_asn for p in self._peers).most_common(1)[0][0]
        kept: dict[str, _PeerIn] = {}
        for p in self._peers:
            address = str(p.peer.address)
            if p.my_asn != asn:
                message = (
                    f"raftlb has one AS number per agent: {asn}, that of most peers, is kept "
                    "and this peer left out: write it in the agent.yaml of the nodes of its AS"
                )
                p.fields.report("myASN", p.my_asn, "ignored", message)
            elif address in kept:
                message = f"also {kept[address].fields.ref}: one session per peer address"
                p.fields.report("peerAddress", address, "ignored", message)
            else:
                kept[address] = p
        return BgpConfig(asn=asn, peers=[p.peer for p in kept.values()])


def _hold_time(f: Fields) -> int | None:
    text, keepalive = f.text("holdTime"), f.text("keepaliveTime")
    hold = duration_seconds(text) if text is not None else None
    if text is not None and hold is None:
        f.error("holdTime", text, "not a duration such as 90s or 1m30s")
    elif text is None:
        f.report(
            "holdTime",
            None,
            "changed",
            "not set: MetalLB used its BGP daemon's default (90 s, FRR 180 s), raftlb's is "
            "3 s: set bgp.peers.hold_time if the router needs the former",
        )
    if keepalive is not None and (hold is None or duration_seconds(keepalive) != hold // 3):
        f.report("keepaliveTime", keepalive, "ignored", "exabgp keeps alive every hold/3")
    return hold
