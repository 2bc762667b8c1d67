"""The nftables applier against the real nft, inside a scratch network namespace."""

from __future__ import annotations

import ipaddress
import os
import random
import re
import secrets
import subprocess
from collections.abc import Iterator

import pytest
from pyroute2 import netns as pyroute2_netns

from appliance.dataplane.firewall import Firewall
from appliance.dataplane.forwards import Forward, Target, forwards
from appliance.dataplane.hashing import Hashing
from appliance.dataplane.nft import DataPlane, NftApplier, NftError
from appliance.dataplane.render import SHARDS, chain_name, render, shard_table
from appliance.lab.netns import NsThread
from appliance.model import Service, ServiceSpec

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(os.geteuid() != 0, reason="loads nftables rules in a namespace: needs root"),
]
ip = ipaddress.ip_address
ip_network = ipaddress.ip_network
WEB = Forward(ip("192.0.2.200"), "tcp", 80, (Target(ip("192.0.2.51"), 80),), service="a/web")


@pytest.fixture
def ns() -> Iterator[NsThread]:
    name = f"rlbt-{secrets.token_hex(3)}-nft"
    pyroute2_netns.create(name)
    thread = NsThread(name)
    try:
        yield thread
    finally:
        thread.close()
        pyroute2_netns.remove(name)


def listed(ns: NsThread) -> str:
    def run() -> str:
        return subprocess.run(
            ["nft", "list", "ruleset"], check=True, capture_output=True, text=True
        ).stdout

    return ns.run(run)


def test_a_broken_ruleset_changes_nothing(ns: NsThread) -> None:
    applier = ns.run(NftApplier)
    assert applier.how == "libnftables"
    ns.run(applier.apply, render([WEB]))
    before = listed(ns)
    assert "dnat ip to 192.0.2.51:80" in before
    with pytest.raises(NftError, match="nothing changed"):
        ns.run(applier.apply, render([WEB]).replace("dnat ip to", "dnat ip too"))
    assert listed(ns) == before


@pytest.mark.parametrize("nft", [None, "nft"])
def test_a_full_load_replaces_every_table_never_duplicates(ns: NsThread, nft: str | None) -> None:
    applier = ns.run(NftApplier, "raftlb", nft)
    ns.run(applier.apply, render([WEB]))
    other = Forward(ip("192.0.2.201"), "udp", 53, (), service="a/dns")
    ns.run(applier.apply, render([WEB, other]))
    text = listed(ns)
    assert text.count("table inet raftlb {") == 1  # replaced, never duplicated
    assert text.count("table inet raftlb_f") == SHARDS
    assert "192.0.2.201 . udp . 53 : goto" in text
    assert '"a/dns: no healthy backend"' in text


def test_the_firewall_loads(ns: NsThread) -> None:
    fw = Firewall(7001, 8080, (ip("192.0.2.11"), ip("2001:db8:1::b")), (ip_network("0.0.0.0/0"),))
    ns.run(ns.run(NftApplier).apply, render([WEB], firewall=fw))
    assert "tcp dport 7001 reject with tcp reset" in listed(ns)


def test_remove_leaves_no_table_and_tolerates_none(ns: NsThread) -> None:
    applier = ns.run(NftApplier)
    ns.run(applier.apply, render([]))
    assert "table inet raftlb" in listed(ns)
    ns.run(applier.remove)
    assert "raftlb" not in listed(ns)
    ns.run(applier.remove)  # already gone: still fine


def _service(sid: str, vip: str, *backends: str, port: int = 80) -> Service:
    return Service(
        spec=ServiceSpec(
            id=sid,
            ports=[{"port": port, "backends": [{"address": b, "port": 8080} for b in backends]}],
        ),
        address=ip(vip),
    )


def test_dataplane_loads_whole_once_then_changes_by_delta(ns: NsThread) -> None:
    plane = ns.run(DataPlane, ns.run(NftApplier))
    web = _service("a/web", "192.0.2.200", "192.0.2.51")
    ns.run(plane.update, {web.address: tuple(forwards([web], [web.address]))})
    assert "192.0.2.51:8080" in listed(ns)
    assert (plane.loads, plane.deltas) == (1, 0)
    moved = _service("a/web", "192.0.2.200", "192.0.2.52")
    ns.run(plane.update, {web.address: tuple(forwards([moved], [web.address]))})
    assert "192.0.2.52:8080" in listed(ns) and "192.0.2.51" not in listed(ns)
    ns.run(plane.update, {web.address: tuple(forwards([moved], [web.address]))})  # the same
    assert (plane.loads, plane.deltas) == (1, 1)
    ns.run(plane.update, {web.address: ()})
    assert "192.0.2.200" not in listed(ns)  # released: its rules are gone
    ns.run(plane.stop)
    assert "raftlb" not in listed(ns)


def test_a_hand_edit_makes_the_next_change_load_everything_again(ns: NsThread) -> None:
    plane = ns.run(DataPlane, ns.run(NftApplier))
    web = _service("a/web", "192.0.2.200", "192.0.2.51")
    dns = _service("a/dns", "192.0.2.201", "192.0.2.53", port=53)
    ns.run(plane.update, {s.address: tuple(forwards([s], [s.address])) for s in (web, dns)})
    # Someone deletes a table by hand: the next delta for that VIP is refused whole...
    name = chain_name(forwards([web], [web.address])[0])
    ns.run(subprocess.run, ["nft", "delete", "table", "inet", shard_table(web.address)], check=True)
    moved = _service("a/web", "192.0.2.200", "192.0.2.52")
    assert not ns.run(plane.update, {web.address: tuple(forwards([moved], [web.address]))})
    assert plane.errors == 1 and not plane.loaded
    # ...and the whole table comes back (after the backoff) with both VIPs, nothing lost.
    plane._retry_at = 0.0
    assert ns.run(plane.repair)
    text = listed(ns)
    assert name in text and "192.0.2.52:8080" in text and "192.0.2.53:8080" in text
    assert plane.loads == 2


def _canonical(text: str) -> list[str]:
    """A listing's lines, sorted, with each set's elements sorted (long element lists wrap
    over lines, and element and chain order is the kernel's)."""

    def elements(match: re.Match[str]) -> str:
        items = sorted(part.strip() for part in match[1].split(",") if part.strip())
        return "elements = { " + ", ".join(items) + " }"

    flat = re.sub(r"elements = \{([^}]*)\}", elements, text, flags=re.S)
    return sorted(line.strip() for line in flat.splitlines() if line.strip() not in ("", "}"))


def test_random_deltas_end_where_a_full_load_of_the_same_state_does(ns: NsThread) -> None:
    """Deltas against the real nft: after 60 random changes over 40 VIPs (add, change backends,
    add or drop ports, drop), the tables list exactly as a fresh full load of the same
    forwards does."""
    rnd = random.Random(7)
    plane = ns.run(DataPlane, ns.run(NftApplier))
    desired: dict[ipaddress.IPv4Address | ipaddress.IPv6Address, tuple[Forward, ...]] = {}
    for _ in range(60):
        changes = {}
        for _ in range(rnd.randint(1, 5)):
            vip = ip(rnd.choice(["192.0.2.", "2001:db8:100::"]) + str(rnd.randint(1, 20)))
            if rnd.random() < 0.2:
                changes[vip] = ()
                continue
            host = "198.51.100." if vip.version == 4 else "2001:db8:2::"
            ports = rnd.sample([80, 443, 8080], rnd.randint(1, 3))
            snat = rnd.random() < 0.5
            forwards = []
            for port in ports:
                count = rnd.randint(0, 20)
                # Consistent ports over few id sets (so tables are shared, then freed), some
                # backends down (their chains read a second table).
                hashed = rnd.random() < 0.5
                up = [b for b in range(count) if not hashed or rnd.random() < 0.8]
                forwards.append(
                    Forward(
                        vip,
                        rnd.choice(["tcp", "udp"]),
                        port,
                        tuple(Target(ip(f"{host}{b + 1}"), 30000 + port, 1, b) for b in up),
                        affinity=not hashed and rnd.random() < 0.3,
                        service=f"s/{port}",
                        hashing=Hashing(tuple((b, 1) for b in range(count)), 251)
                        if hashed and count
                        else None,
                        snat=snat,
                    )
                )
            changes[vip] = tuple(forwards)
        assert ns.run(plane.update, changes)
        for vip, wanted in changes.items():
            if wanted:
                desired[vip] = wanted
            else:
                desired.pop(vip, None)
    assert plane.loads == 1 and plane.deltas > 0
    assert any(name.startswith("t-") for name in plane.uses)  # shared tables were in use
    after_deltas = _canonical(listed(ns))
    ns.run(ns.run(NftApplier).apply, render([f for fs in desired.values() for f in fs]))
    assert after_deltas == _canonical(listed(ns))
