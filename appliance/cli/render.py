"""Human views of API answers: pure functions from model values to rich tables.

Nothing here talks to the API or prints; the commands do. Missing values show as "-".

Cells are never parsed as rich markup: a `str` is text from the API and prints as written, a
`Text` carries a style chosen here (`_styled`). Markup would mix the two, and a sharing key or
service name holding "[red]" would then restyle the table or hide its own text.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from rich import box
from rich.console import Group
from rich.table import Table
from rich.text import Text

from appliance.bodies import (
    BackendCounts,
    BackendHealth,
    BgpInfo,
    BgpSession,
    DataplaneInfo,
    L2Info,
    RaftInfo,
    ServiceHealth,
    Status,
    VipEntry,
)
from appliance.model import Allocation, IPFamily, NodeInfo, Pool, Service


def _table(*columns: str) -> Table:
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    for column in columns:
        table.add_column(column, overflow="fold")
    return table


# A cell: a str is literal text (from the API), a Text was built here by `_styled`/`_cell`.
Cell = str | Text


def _add(table: Table, *cells: Cell) -> None:
    table.add_row(*(_literal(cell) if isinstance(cell, str) else cell for cell in cells))


def _literal(text: str) -> Text:
    # Text, not markup: a sharing key like "[red]" must print as written; control characters
    # (ESC, NUL, a right-to-left override) are shown escaped, never sent to the terminal
    # (the API refuses them now; a state written before may still hold some).
    return Text(text if text.isprintable() else _escaped(text))


def _styled(style: str, text: str) -> Text:
    """`text` in one of our styles; literal and escaped like any cell (it may hold API values)."""
    return Text(text if text.isprintable() else _escaped(text), style=style)


def _cell(*parts: Cell, sep: str = "") -> Text:
    """One cell of several parts, each str literal, each Text in its own style."""
    out = Text()
    for i, part in enumerate(parts):
        if i and sep:
            out.append(sep)
        out.append_text(_literal(part) if isinstance(part, str) else part)
    return out


def _escaped(text: str) -> str:
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


def _grid(rows: Iterable[tuple[str, Cell]]) -> Table:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column(overflow="fold")
    for key, value in rows:
        _add(grid, key, value)
    return grid


def _text(value: Any) -> str:
    if value is None or value in ([], ""):
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def status_view(status: Status) -> Table:
    """`raftlb status`: this node's view of Raft, the members and the state sizes."""
    raft = status.raft
    if raft.leader is None:
        leader_text = "none (no quorum, or an election is running)"
    elif status.leader_api_url:
        leader_text = f"{raft.leader} ({status.leader_api_url})"
    else:
        leader_text = raft.leader
    quorum = (
        "yes"
        if raft.has_quorum
        else "NO: writes fail until a majority of the nodes reach each other"
    )
    return _grid(
        [
            ("node", f"{status.node} (version {status.version})"),
            ("role", _text(raft.role)),
            ("leader", leader_text),
            ("term", _text(raft.term)),
            ("commit index", _commit(raft, status.apply_backlog)),
            ("quorum", quorum),
            ("members", f"{status.members_connected}/{status.members} connected"),
            ("pools", _text(status.pools)),
            ("services", _text(status.services)),
            ("allocations", _text(status.allocations)),
            ("vips", _text(status.vips)),
            ("data plane", _dataplane(status.dataplane)),
            ("layer 2", _l2(status.l2)),
            ("bgp", _bgp(status.bgp)),
        ]
    )


def _commit(raft: RaftInfo, backlog: int) -> Cell:
    text = f"{raft.commit_index} (applied here: {raft.last_applied})"
    if backlog > 0:
        return _cell(text, " ", _styled("yellow", f"apply backlog: {backlog} entries"))
    return text


def _bgp(bgp: BgpInfo | None) -> Cell:
    if bgp is None:
        return "not announcing by BGP"
    if not bgp.announcing:
        return _styled(
            "red",
            "exabgp not running: not announcing"
            + (f" ({bgp.restarts} restarts)" if bgp.restarts else ""),
        )
    peers = ", ".join(_session(p, s, bgp.sessions.get(p)) for p, s in sorted(bgp.peers.items()))
    routes = bgp.routes
    text = f"peers: {peers or 'none'}; {len(routes)} route(s): {', '.join(routes) or '-'}"
    if bgp.bfd is None:
        return text
    if not bgp.bfd.running:
        return _cell(text, "; ", _styled("red", "BFD daemon not running: hold time only"))
    states = ", ".join(f"{p} {s.status}" for p, s in sorted(bgp.bfd.peers.items()))
    return f"{text}; BFD: {states or 'no session'}"


def _session(peer: str, state: str, session: BgpSession | None) -> str:
    """`192.0.2.1 up 5m, 2 sent, 1 refresh`: what this side can know (BGP never says what the
    router accepted; a refresh says it re-read the routes)."""
    if session is None or session.up_for is None:
        return f"{peer} {state}"
    extra = f", {session.refreshes} refresh(es)" if session.refreshes else ""
    up = session.up_for
    for_ = f"{up:.0f}s" if up < 120 else f"{up / 60:.0f}m" if up < 7200 else f"{up / 3600:.0f}h"
    return f"{peer} {state} {for_}, {session.routes_sent} sent{extra}"


def _l2(l2: L2Info | None) -> Cell:
    """The layer-2 announcer: what it answers for, and what an operator must look at (another
    MAC claiming a VIP held here, frames that could not be sent)."""
    if l2 is None:
        return "not announcing by layer 2"
    parts: list[Cell] = [
        f"{l2.interface}: {l2.held} VIP(s) answered",
        _styled("red", f"{l2.conflicts} conflict(s): another MAC claims a VIP held here")
        if l2.conflicts
        else "0 conflicts",
    ]
    if l2.send_errors:
        parts.append(_styled("red", f"{l2.send_errors} send error(s)"))
    if l2.stale_refusals:
        parts.append(f"{l2.stale_refusals} frame(s) held back on a lapsed lease")
    return _cell(*parts, sep="; ")


def _dataplane(plane: DataplaneInfo) -> Cell:
    if plane.forward != "nftables":
        return "not forwarding (forward: none)"
    parts: list[Cell] = [
        f"nftables, {plane.vips} VIP(s), {plane.loads} full load(s), {plane.deltas} change(s)"
    ]
    if plane.last_update_ms:
        parts.append(
            "last "
            + ", ".join(f"{kind} {ms:g} ms" for kind, ms in sorted(plane.last_update_ms.items()))
        )
    if plane.sysctl_problems:
        parts.append(_styled("red", "WRONG sysctls: " + ", ".join(plane.sysctl_problems)))
    if plane.last_error:
        parts.append(_styled("red", f"last load failed: {plane.last_error}"))
    return _cell(*parts, sep="; ")


def nodes_table(nodes: list[NodeInfo]) -> Table:
    """`raftlb nodes`: every configured member and what this node knows of it."""
    table = _table(
        "NODE",
        "ROLE",
        "CONNECTED",
        "LEASE",
        "VIPS",
        "RAFT ADDRESS",
        "API URL",
        "VERSION",
        "REPORTED",
    )
    for node in nodes:
        age = None if node.last_report_age is None else f"{node.last_report_age:.1f}s ago"
        lease = None if node.lease_age is None else f"{1000 * node.lease_age:.0f} ms ago"
        notes = [n for n, on in (("drained", node.drained), ("warming", node.warming)) if on]
        _add(
            table,
            node.id,
            node.role + "".join(f" ({n})" for n in notes),
            _text(node.connected),
            _text(lease),
            str(node.vips),
            node.raft_address,
            _text(node.api_url),
            _text(node.version),
            _text(age),
        )
    return table


def pools_table(pools: list[Pool], allocations: list[Allocation] | None = None) -> Table:
    """Pools with their blocks; with `allocations`, how many addresses are in use of how many."""
    columns = ["NAME", "ADDRESSES", "ANNOUNCE", "DEFAULT", "AVOID BUGGY IPS"]
    if allocations is not None:
        columns.append("IN USE")
    table = _table(*columns)
    for pool in pools:
        row = [
            pool.name,
            ", ".join(pool.addresses),
            str(pool.announce),
            _text(pool.default),
            _text(pool.avoid_buggy_ips),
        ]
        if allocations is not None:
            used = len({a.address for a in allocations if a.pool == pool.name})
            size = sum(pool.size(family) for family in IPFamily)
            row.append(f"{used}/{size}")
        _add(table, *row)
    return table


def _ports(service: Service) -> str:
    return ", ".join(f"{p.port}/{p.protocol}" for p in service.spec.ports)


def services_table(services: list[Service], allocations: list[Allocation] | None = None) -> Table:
    """Services with their address; with `allocations`, the pool the address came from."""
    pools = {a.owner: a.pool for a in allocations or []}
    table = _table("ID", "ADDRESS", "PORTS", "BACKENDS", "POOL", "POLICY", "SHARING KEY")
    for service in services:
        spec = service.spec
        _add(
            table,
            spec.id,
            str(service.address),
            _ports(service),
            str(sum(len(p.backends) for p in spec.ports)),
            _text(pools.get(spec.id, spec.pool)),
            str(spec.traffic_policy),
            _text(spec.sharing_key),
        )
    return table


def service_view(
    service: Service, allocation: Allocation | None = None, health: ServiceHealth | None = None
) -> Group:
    """`raftlb services get ID`: the whole spec, then one row per port and backend, with the
    backend's health as the answering node sees it."""
    spec = service.spec
    check = spec.health_check
    if check.type == "none":
        check_text = "none"
    else:
        what = f"http GET {check.path} expects {check.expected_status}"
        check_text = (
            f"{what if check.type == 'http' else 'tcp connect'} every {check.interval:g}s, "
            f"timeout {check.timeout:g}s, rise {check.rise}, fall {check.fall}"
        )
    grid = _grid(
        [
            ("id", spec.id),
            ("address", str(service.address) + ("" if spec.vip else " (allocated)")),
            ("pool", _text(allocation.pool if allocation else spec.pool)),
            ("ip family", str(spec.family())),
            ("sharing key", _text(spec.sharing_key)),
            ("traffic policy", str(spec.traffic_policy)),
            ("health check node port", _text(spec.health_check_node_port)),
            ("health check", check_text),
            ("affinity", str(spec.affinity)),
            ("nodes", ", ".join(spec.nodes) if spec.nodes else "any"),
        ]
    )
    checked = {(b.address, b.port): b for b in (health.backends if health else [])}
    now = time.time()
    ports = _table("PORT", "NAME", "BACKEND", "WEIGHT", "NODE", "HEALTH")
    for port in spec.ports:
        key = f"{port.port}/{port.protocol}"
        if not port.backends:
            _add(ports, key, _text(port.name), "(none)", "-", "-", "-")
        for backend in port.backends:
            address = (
                f"[{backend.address}]" if backend.address.version == 6 else str(backend.address)
            )
            _add(
                ports,
                key,
                _text(port.name),
                f"{address}:{backend.port}",
                str(backend.weight),
                _text(backend.node),
                _health(checked.get((str(backend.address), backend.port)), now),
            )
    if health is not None:
        # Not a str: a Group would read a str as markup, and the node name is the API's.
        return Group(grid, "", ports, _literal(f"health as seen by {health.node}"))
    return Group(grid, "", ports)


def _health(track: BackendHealth | None, now: float) -> Cell:
    if track is None:
        return "-"
    last = track.last_check
    when = f", checked {now - last:.1f}s ago" if last is not None else ""
    if track.healthy:
        return f"up ({track.reason}{when})"
    return _styled("red", f"DOWN ({track.reason}{when})")


def vips_table(vips: list[VipEntry]) -> Table:
    """`raftlb vips`: each allocated address, who holds it, on which ports, owned by which node."""
    table = _table(
        "ADDRESS",
        "POOL",
        "ANNOUNCE",
        "OWNERS",
        "PORTS",
        "SHARING KEY",
        "NODE",
        "EPOCH",
        "SINCE",
        "LAST CHANGE",
        "BACKENDS UP",
    )
    now = time.time()
    for vip in vips:
        _add(
            table,
            vip.address,
            vip.pool,
            _text(vip.announce),
            ", ".join(vip.owners) or "-",
            ", ".join(vip.ports) or "-",
            _text(vip.sharing_key),
            _node(vip),
            _text(vip.epoch),
            _since(vip.since, now),
            _last_change(vip),
            _backends_up(vip.backends),
        )
    return table


def _since(at: float | None, now: float) -> str:
    if at is None:
        return "-"
    ago = max(0.0, now - at)
    return (
        f"{ago:.0f}s ago" if ago < 120 else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))
    )


def _node(vip: VipEntry) -> str:
    """The owner; a bgp VIP has none: every able node announces it (and this one, or not)."""
    if vip.announce == "bgp":
        here = vip.bgp_announced_here
        return "ecmp" + ("" if here is None else f" (here: {'yes' if here else 'no'})")
    return _text(vip.node)


def _backends_up(counts: BackendCounts | None) -> Cell:
    """Healthy/total backends as the answering node sees them; none up means it rejects."""
    if counts is None or not counts.total:
        return "-"
    text = f"{counts.healthy}/{counts.total}"
    return text if counts.healthy else _styled("red", f"{text} (rejecting)")


def _last_change(vip: VipEntry) -> str:
    """Why the VIP last changed owner; for a failover, how long its old owner was silent."""
    if not vip.reason:
        return "-"
    text = vip.reason
    if vip.previous:
        text += f" (from {vip.previous}"
        if vip.reason == "dead" and vip.dead_for is not None:
            text += f", silent {1000 * vip.dead_for:.0f} ms"
        text += ")"
    if vip.releasing:
        text += f", releasing on {vip.releasing}"
    return text
