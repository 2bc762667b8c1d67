"""The router guide's snippets are what the lab's routers run (so the guide is tested)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from appliance.lab.routers import Peering, bird_config, bird_filter, bird_peer, frr_config

GUIDE = Path(__file__).resolve().parents[3] / "docs" / "routers.md"
# The guide's example values.
EXAMPLE = Peering(
    router_id="192.0.2.1",
    peers=(("n1", "192.0.2.11"), ("n2", "192.0.2.12"), ("n3", "192.0.2.13")),
    vips4="198.51.100.0/24",
    vips6="2001:db8:2::/120",
)


def snippets() -> dict[str, str]:
    text = GUIDE.read_text()
    found = re.findall(r"<!-- router-guide: (\S+) -->\n```\n(.*?)\n```", text, re.DOTALL)
    return {name: body for name, body in found}


@pytest.mark.parametrize(
    ("name", "rendered"),
    [
        ("frr.conf", frr_config(EXAMPLE)),
        ("bird.conf", bird_config(EXAMPLE)),
        ("filter.conf", bird_filter(EXAMPLE.vips4, EXAMPLE.vips6)),
        ("peers.conf", bird_peer("n1", EXAMPLE.router_id, "192.0.2.11", EXAMPLE.hold)),
    ],
)
def test_the_guide_shows_what_the_lab_router_runs(name: str, rendered: str) -> None:
    assert snippets()[name] == rendered.rstrip("\n")


def test_the_frr_policy_accepts_only_host_routes_of_the_pools_and_sends_nothing() -> None:
    text = frr_config(EXAMPLE)
    assert "permit 198.51.100.0/24 ge 32" in text
    assert "permit 2001:db8:2::/120 ge 128" in text
    assert "route-map raftlb-out deny 10" in text
    assert "no bgp ebgp-requires-policy" not in text  # the route-maps are the policy
    denied = frr_config(EXAMPLE, accept=False)
    assert "route-map raftlb-in deny 10" in denied and "permit 10" not in denied


def test_the_guides_bfd_lines_are_those_the_lab_router_runs() -> None:
    with_bfd = Peering(**{**EXAMPLE.__dict__, "bfd_ms": 100})
    frr, bird = frr_config(with_bfd), bird_config(with_bfd)
    for line in snippets()["frr-bfd"].splitlines():
        assert f"{line}\n" in frr, line
    assert snippets()["bird-bfd"] in bird
    assert "bfd on;" in bird_peer("n1", EXAMPLE.router_id, "192.0.2.11", bfd=True)
    assert "bfd" not in frr_config(EXAMPLE) and "bfd" not in bird_config(EXAMPLE)
