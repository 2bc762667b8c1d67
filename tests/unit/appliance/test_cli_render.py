"""The CLI's tables: our styles render (colour on a terminal, nothing left in plain text), and
text from the API (names, keys, error messages) prints literally, never as rich markup."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console, RenderableType

from appliance.bodies import ServiceHealth, Status, VipEntry
from appliance.cli.render import service_view, status_view, vips_table
from appliance.model import Service, ServiceSpec

RED = "\x1b[31m"
BOLD = "\x1b[1m"


def plain(renderable: RenderableType) -> str:
    """What a pipe gets: no colour, runs of spaces squeezed."""
    console = Console(width=250, record=True, color_system=None)
    console.print(renderable)
    return " ".join(console.export_text().split())


def terminal(renderable: RenderableType) -> str:
    """What a colour terminal gets, escape sequences and all."""
    console = Console(width=250, record=True, force_terminal=True, color_system="standard")
    console.print(renderable)
    return console.export_text(styles=True)


def failing_status(error: str = "nft: exit 1", **changes: Any) -> Status:
    raft = {
        "node": "n1",
        "role": "leader",
        "leader": "n1",
        "term": 2,
        "commit_index": 9,
        "last_applied": 5,
        "has_quorum": True,
        "ready": True,
        "connected": {},
    }
    bgp = {"running": False, "announcing": False, "peers": {}, "routes": [], "restarts": 3}
    return Status.model_validate(
        {
            "node": "n1",
            "version": "1",
            "raft": raft,
            "leader_api_url": None,
            **dict.fromkeys(("members", "members_connected", "pools", "services"), 0),
            **dict.fromkeys(("allocations", "vips", "revision"), 0),
            "apply_backlog": 4,
            "lease_ages": {},
            "drained": [],
            "dataplane": {
                "forward": "nftables",
                "sysctl_problems": ["rp_filter"],
                "last_error": error,
            },
            "bgp": {**bgp, "errors": 0},
            "l2": None,
            **changes,
        }
    )


def vip(**changes: Any) -> VipEntry:
    entry: dict[str, Any] = {
        "address": "192.0.2.200",
        "pool": "lan",
        "announce": "l2",
        "owners": ["c/ns/web"],
        "services": ["c/ns/web"],
        "ports": ["80/tcp"],
        "node": "n1",
        "backends": {"healthy": 0, "total": 2},
    }
    for key in ("sharing_key", "epoch", "since", "releasing", "previous", "reason", "dead_for"):
        entry[key] = None
    return VipEntry.model_validate({**entry, "bgp_announced_here": None, **changes})


def down_service(reason: str = "connect refused", sharing_key: str | None = None) -> Any:
    spec = ServiceSpec(
        id="c/ns/web",
        sharing_key=sharing_key,
        ports=[{"port": 80, "backends": [{"address": "192.0.2.51", "port": 8080}]}],
    )
    service = Service(spec=spec, address="192.0.2.200")
    health = ServiceHealth.model_validate(
        {
            "node": "n1",
            "backends": [
                {"address": "192.0.2.51", "port": 8080, "healthy": False, "reason": reason},
            ],
        }
    )
    return service_view(service, None, health)


def test_our_markup_renders_and_leaves_no_markup_text() -> None:
    for view, says in [
        (status_view(failing_status()), "exabgp not running: not announcing (3 restarts)"),
        (status_view(failing_status()), "WRONG sysctls: rp_filter; last load failed: nft"),
        (status_view(failing_status()), "(applied here: 5) apply backlog: 4 entries"),
        (vips_table([vip()]), "0/2 (rejecting)"),
        (down_service(), "DOWN (connect refused)"),
    ]:
        text = plain(view)
        assert says in text
        assert "[red]" not in text and "[yellow]" not in text and "[/" not in text
        assert RED in terminal(view)


def test_text_from_the_api_stays_literal() -> None:
    """A name, key or message holding markup prints as written and styles nothing."""
    hostile = "[bold]x[/bold]"
    status = failing_status(error=f"boom {hostile}", node=hostile)
    for view, says in [
        (status_view(status), f"node {hostile} (version 1)"),
        (status_view(status), f"last load failed: boom {hostile}"),
        (vips_table([vip(sharing_key=hostile)]), f"{hostile} n1"),
        (down_service(reason=hostile), f"DOWN ({hostile})"),
        (down_service(sharing_key=hostile), f"sharing key {hostile}"),
    ]:
        assert says in plain(view)
        shown = terminal(view)
        assert hostile in shown and f"{BOLD}x" not in shown


def test_the_health_footer_is_literal_and_escaped() -> None:
    spec = ServiceSpec(id="c/ns/web", ports=[{"port": 80}])
    service = Service(spec=spec, address="192.0.2.200")
    health = ServiceHealth(node="[bold]n1\x1b[2J", backends=[])
    text = plain(service_view(service, None, health))
    assert "health as seen by [bold]n1\\x1b[2J" in text
    assert "\x1b" not in text


def test_a_healthy_backend_is_not_red() -> None:
    healthy = vip(backends={"healthy": 2, "total": 2}, since=time.time())
    assert RED not in terminal(vips_table([healthy]))


def test_status_shows_layer2_conflicts_in_red() -> None:
    l2 = {"interface": "eth1", "held": 3, "conflicts": 2, "send_errors": 1, "stale_refusals": 0}
    view = status_view(failing_status(l2=l2))
    assert (
        "layer 2 eth1: 3 VIP(s) answered; 2 conflict(s): another MAC claims a VIP held here; "
        "1 send error(s)" in plain(view)
    )
    assert f"{RED}2 conflict(s)" in terminal(view)
    calm = status_view(failing_status(l2={**l2, "conflicts": 0, "send_errors": 0}))
    assert "layer 2 eth1: 3 VIP(s) answered; 0 conflicts" in plain(calm)
    assert "layer 2 not announcing by layer 2" in plain(status_view(failing_status()))


def test_vips_table_shows_the_last_change_of_owner() -> None:
    moved = vip(node="n3", epoch=4, since=time.time() - 5, previous="n1")
    dead = moved.model_copy(update={"reason": "dead", "dead_for": 0.842})
    drained = moved.model_copy(update={"reason": "drain"})
    text = plain(vips_table([dead, drained]))
    assert "n3 4 5s ago dead (from n1, silent 842 ms)" in text
    assert "drain (from n1)" in text


def test_tables_never_send_control_characters_to_the_terminal() -> None:
    """A value stored before the API refused them (ESC, NUL, a right-to-left override) prints
    escaped: an ESC sequence could clear the operator's screen or fake output."""
    text = plain(vips_table([vip(node="n3", sharing_key="k\x1b[2J\u202eevil\x00")]))
    assert "\x1b" not in text and "\u202e" not in text and "\x00" not in text
    assert "k\\x1b[2J\\u202eevil\\x00" in text
