"""The nftables applier against the real nft, inside a scratch network namespace."""

from __future__ import annotations

import ipaddress
import os
import secrets
import subprocess
from collections.abc import Iterator

import pytest
from pyroute2 import netns as pyroute2_netns

from appliance.dataplane.nft import DataPlane, NftApplier, NftError
from appliance.dataplane.render import Firewall, Forward, Target, digest_of, render
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


def test_apply_loads_once_and_a_broken_ruleset_changes_nothing(ns: NsThread) -> None:
    applier = NftApplier()
    assert ns.run(applier.apply, render([WEB])) is True
    assert "192.0.2.200 tcp dport 80 dnat ip to" in listed(ns)
    assert ns.run(applier.apply, render([WEB])) is False  # same text: not reloaded
    assert applier.loads == 1
    before = listed(ns)
    text = render([WEB])
    digest = digest_of(text)
    assert digest is not None
    broken = text.replace("dnat ip to", "dnat ip too").replace(digest, "0" * 16)
    with pytest.raises(NftError, match="nothing changed"):
        ns.run(applier.apply, broken)
    assert listed(ns) == before


def test_a_restarted_agent_does_not_reload_the_same_rules(ns: NsThread) -> None:
    ns.run(NftApplier().apply, render([WEB]))
    restarted = NftApplier()
    assert ns.run(restarted.apply, render([WEB])) is False
    other = Forward(ip("192.0.2.201"), "udp", 53, (), service="a/dns")
    assert ns.run(restarted.apply, render([WEB, other])) is True
    text = listed(ns)
    assert text.count("table inet raftlb") == 1  # replaced, never duplicated
    assert "192.0.2.201 udp dport 53 reject" in text


def test_the_firewall_loads(ns: NsThread) -> None:
    fw = Firewall(7001, 8080, (ip("192.0.2.11"), ip("2001:db8:1::b")), (ip_network("0.0.0.0/0"),))
    assert ns.run(NftApplier().apply, render([WEB], firewall=fw)) is True
    assert "tcp dport 7001 reject with tcp reset" in listed(ns)


def test_remove_leaves_no_table_and_tolerates_none(ns: NsThread) -> None:
    applier = NftApplier()
    ns.run(applier.apply, render([]))
    assert "table inet raftlb" in listed(ns)
    ns.run(applier.remove)
    assert "raftlb" not in listed(ns)
    ns.run(applier.remove)  # already gone: still fine


def test_dataplane_follows_held_vips_and_service_changes(ns: NsThread) -> None:
    plane = DataPlane(NftApplier())
    web = Service(
        spec=ServiceSpec(
            id="a/web", ports=[{"port": 80, "backends": [{"address": "192.0.2.51", "port": 80}]}]
        ),
        address=ip("192.0.2.200"),
    )
    ns.run(plane.sync, [web], [ip("192.0.2.200")])
    assert "192.0.2.51 . 80" in listed(ns)
    ns.run(plane.sync, [web], [ip("192.0.2.200")])
    assert plane.applier.loads == 1  # same input objects: not even rendered again
    moved = Service(
        spec=ServiceSpec(
            id="a/web", ports=[{"port": 80, "backends": [{"address": "192.0.2.52", "port": 80}]}]
        ),
        address=ip("192.0.2.200"),
    )
    ns.run(plane.sync, [moved], [ip("192.0.2.200")])
    assert "192.0.2.52 . 80" in listed(ns) and "192.0.2.51" not in listed(ns)
    ns.run(plane.sync, [moved], [])
    assert "192.0.2.200" not in listed(ns)  # released: its rules are gone
    ns.run(plane.stop)
    assert "raftlb" not in listed(ns)
