"""The lab's router: BIRD 2 or FRR, peering with every node, ECMP over their VIP routes.

Both are configured the way `docs/routers.md` tells an operator to (the guide's snippets are
these functions' output for its example values, checked by a unit test): accept only /32 and
/128 routes inside the VIP ranges, send nothing back, install every equal path (ECMP). FRR is
started the way its init script does it: the daemons first with no configuration, then the
integrated configuration applied through vtysh, so a node that connects in between meets a
bgpd whose route-map does not exist yet (denied everything), as it does on a real router that
restarts. A router that cannot re-read a node's routes (no route refresh) never gets them back.

The daemons run as their users (FRR drops to `frr`, BIRD stays root) inside the router's
namespace. BIRD's files are under the lab's `router/` directory; FRR's under
`/run/raftlb-lab-frr/RUN_ID`, because user `frr` cannot enter a test's private temp dir.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from appliance.lab import LabError, procs
from appliance.lab.topology import BGP_VIPS4, BGP_VIPS6

if TYPE_CHECKING:
    from appliance.lab.netlab import NetLab

ROUTERS = ("bird", "frr")
ROUTER_ASN = 64500
NODES_ASN = 64512
BFD_INTERVAL_MS = 100  # with `--bfd`: both ends, x3
FRR_DIR = Path("/usr/lib/frr")
FRR_RUN = Path("/run/raftlb-lab-frr")  # per lab: RUN_ID/, owned by user frr


@dataclass(frozen=True)
class Peering:
    """What a router needs to know of its nodes."""

    router_id: str
    peers: tuple[tuple[str, str], ...]  # (name, IPv4 address) of each node
    vips4: str  # the VIP ranges routes may lie in (CIDRs)
    vips6: str
    hold: int = 3
    router_asn: int = ROUTER_ASN
    nodes_asn: int = NODES_ASN
    bfd_ms: int | None = None  # BFD with the nodes at this interval (x3); None: none
    # With `bgp6`: a second session per node over IPv6 (IPv6 routes only): (name, address)
    peers6: tuple[tuple[str, str], ...] = ()
    router_id6: str | None = None  # the router's IPv6 address, the source of those sessions


def bird_peer(
    name: str,
    local: str,
    neighbor: str,
    hold: int = 3,
    imports: str = "filter raftlb_vips",
    bfd: bool = False,
    asn: int = NODES_ASN,
) -> str:
    """The router's session with one node: it learns VIP routes, and sends nothing back.
    (With asn = ROUTER_ASN the session is iBGP: BIRD then resolves next hops recursively
    through its direct routes, as for any iBGP path.)"""
    bfd_line = "\n    bfd on;" if bfd else ""
    return f"""protocol bgp {name} {{
    local {local} as {ROUTER_ASN};
    neighbor {neighbor} as {asn};{bfd_line}
    hold time {hold};
    keepalive time {max(1, hold // 3)};
    connect retry time 1;
    error wait time 1, 5;
    ipv4 {{ import {imports}; export none; }};
    ipv6 {{ import {imports}; export none; }};
}}
"""


def bird_peer6(name: str, local: str, neighbor: str, hold: int = 3, asn: int = NODES_ASN) -> str:
    """A second session with a node, over IPv6, carrying its IPv6 routes only."""
    return f"""protocol bgp {name} {{
    local {local} as {ROUTER_ASN};
    neighbor {neighbor} as {asn};
    hold time {hold};
    keepalive time {max(1, hold // 3)};
    connect retry time 1;
    error wait time 1, 5;
    ipv6 {{ import filter raftlb_vips; export none; }};
}}
"""


def bird_filter(vips4: str, vips6: str, accept: bool = True) -> str:
    """Only host routes inside the VIP ranges (a node can announce nothing else by mistake)."""
    if not accept:
        return "filter raftlb_vips { reject; }\n"
    return f"""filter raftlb_vips {{
    if net ~ [ {vips4}{{32,32}} ] then accept;
    if net ~ [ {vips6}{{128,128}} ] then accept;
    reject;
}}
"""


def bird_config(p: Peering) -> str:
    """bird.conf: the kernel protocols install every path (`merge paths`: ECMP)."""
    bfd = ""
    if p.bfd_ms is not None:
        bfd = f'protocol bfd {{ interface "*" {{ interval {p.bfd_ms} ms; multiplier 3; }}; }}\n'
    return (
        f"router id {p.router_id};\n"
        f"{bfd}"
        "protocol device {}\n"
        "protocol direct { ipv4; ipv6; }\n"
        "protocol kernel k4 { ipv4 { export all; }; merge paths yes; }\n"
        "protocol kernel k6 { ipv6 { export all; }; merge paths yes; }\n"
        'include "filter.conf";\n'
        'include "peers*.conf";\n'
    )


_FRR_MATCHES = (
    (10, "ip address prefix-list raftlb-vips4"),
    (20, "ipv6 address prefix-list raftlb-vips6"),
)


def _frr_route_map(accept: bool, separator: str | None = None) -> list[str]:
    """The import route-map's lines (config file, or vtysh commands without `separator`)."""
    verdict = "permit" if accept else "deny"
    lines: list[str] = []
    for seq, match in _FRR_MATCHES:
        lines += [f"route-map raftlb-in {verdict} {seq}", f" match {match}", "exit"]
        if separator:
            lines.append(separator)
    return lines


def frr_config(p: Peering, accept: bool = True) -> str:
    """frr.conf (integrated). `ebgp-requires-policy` (FRR's default) stays on: the route-maps
    are the policy. IPv6 VIPs arrive on the IPv4 session, so that family is activated too;
    `maximum-paths` makes ECMP; `multipath-relax` lets nodes of different ASes share it."""
    peers = "".join(f" neighbor {address} peer-group raftlb\n" for _, address in p.peers)
    in_map = "".join(f"{line}\n" for line in _frr_route_map(accept, "!"))
    group6 = off4 = on6 = ""
    # `maximum-paths` counts eBGP paths only; iBGP ones have their own knob.
    ibgp = "  maximum-paths ibgp 16\n" if p.nodes_asn == p.router_asn else ""
    if p.peers6:  # IPv6 sessions carry IPv6 routes only (FRR activates IPv4 on every peer)
        group6 = (
            f" neighbor raftlb6 peer-group\n neighbor raftlb6 remote-as {p.nodes_asn}\n"
            f" neighbor raftlb6 timers 1 {p.hold}\n neighbor raftlb6 timers connect 1\n"
        ) + "".join(f" neighbor {address} peer-group raftlb6\n" for _, address in p.peers6)
        off4 = "  no neighbor raftlb6 activate\n"
        on6 = (
            "  neighbor raftlb6 activate\n  neighbor raftlb6 route-map raftlb-in in\n"
            "  neighbor raftlb6 route-map raftlb-out out\n"
        )
    bfd = profile = ""
    if p.bfd_ms is not None:
        bfd = " neighbor raftlb bfd profile raftlb\n"
        profile = (
            f"bfd\n profile raftlb\n  transmit-interval {p.bfd_ms}\n"
            f"  receive-interval {p.bfd_ms}\n  detect-multiplier 3\n exit\nexit\n!\n"
        )
    return f"""frr defaults traditional
hostname lab-router
log stdout informational
!
router bgp {p.router_asn}
 bgp router-id {p.router_id}
 bgp bestpath as-path multipath-relax
 neighbor raftlb peer-group
 neighbor raftlb remote-as {p.nodes_asn}
 neighbor raftlb timers 1 {p.hold}
 neighbor raftlb timers connect 1
{bfd}{peers}{group6} !
 address-family ipv4 unicast
  neighbor raftlb route-map raftlb-in in
  neighbor raftlb route-map raftlb-out out
{off4}  maximum-paths 16
{ibgp} exit-address-family
 !
 address-family ipv6 unicast
  neighbor raftlb activate
  neighbor raftlb route-map raftlb-in in
  neighbor raftlb route-map raftlb-out out
{on6}  maximum-paths 16
{ibgp} exit-address-family
exit
!
ip prefix-list raftlb-vips4 seq 10 permit {p.vips4} ge 32
ipv6 prefix-list raftlb-vips6 seq 10 permit {p.vips6} ge 128
!
{in_map}route-map raftlb-out deny 10
exit
!
{profile}"""


def peering_of(lab: NetLab) -> Peering:
    router = lab.plan.host("router")
    return Peering(
        router_id=str(router.ipv4),
        peers=tuple((h.name, str(h.ipv4)) for h in lab.plan.of_kind("node")),
        vips4=str(ipaddress.ip_network(BGP_VIPS4)),
        vips6=str(ipaddress.ip_network(BGP_VIPS6)),
        bfd_ms=BFD_INTERVAL_MS if lab.bfd else None,
        peers6=tuple((f"{h.name}v6", str(h.ipv6)) for h in lab.plan.of_kind("node"))
        if lab.bgp6
        else (),
        router_id6=str(router.ipv6),
        nodes_asn=ROUTER_ASN if lab.ibgp else NODES_ASN,
    )


class LabRouter(Protocol):
    kind: str

    def start(self, lab: NetLab) -> None: ...

    def restart(self, lab: NetLab) -> None:
        """Stop the BGP daemon and start it again, configured as at boot."""

    def set_policy(self, lab: NetLab, accept: bool) -> None:
        """Change the import policy on the running router: accept the VIPs, or deny them."""

    def keys(self) -> tuple[str, ...]:
        """The lab's process keys of this router."""

    def cleanup(self, lab: NetLab) -> None:
        """Remove what the router left outside the lab's run dir (its processes are gone)."""


def _run(lab: NetLab, argv: list[str], what: str) -> str:
    done = lab.exec("router", argv, capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise LabError(f"{what} failed ({done.returncode}): {(done.stderr or done.stdout)[-500:]}")
    return str(done.stdout)


def _stop(lab: NetLab, key: str) -> None:
    """Kill a router daemon at once, as a crash or a `systemctl restart` that times out."""
    pid = lab.pid(key)
    if pid is not None and lab.alive(key):
        os.killpg(pid, signal.SIGKILL)
        procs.reap(pid)


class Bird:
    kind = "bird"

    def keys(self) -> tuple[str, ...]:
        return ("bird",)

    def cleanup(self, lab: NetLab) -> None:
        return None  # all of it is in the run dir

    def _dir(self, lab: NetLab) -> Path:
        return lab.dir / "router"

    def start(self, lab: NetLab) -> None:
        if shutil.which("bird") is None:
            raise LabError("--router bird needs BIRD 2 (apt-get install bird2)")
        p = peering_of(lab)
        conf = self._dir(lab) / "bird.conf"
        conf.parent.mkdir(parents=True, exist_ok=True)
        conf.write_text(bird_config(p))
        (conf.parent / "filter.conf").write_text(bird_filter(p.vips4, p.vips6))
        (conf.parent / "peers.conf").write_text(
            "".join(
                bird_peer(
                    name, p.router_id, address, p.hold, bfd=p.bfd_ms is not None, asn=p.nodes_asn
                )
                for name, address in p.peers
            )
            + "".join(
                bird_peer6(name, str(p.router_id6), a, p.hold, asn=p.nodes_asn)
                for name, a in p.peers6
            )
        )
        self._spawn(lab)

    def _spawn(self, lab: NetLab) -> None:
        d = self._dir(lab)
        argv = ["bird", "-f", "-c", str(d / "bird.conf"), "-s", str(d / "bird.ctl")]
        lab.spawn("bird", "router", [*argv, "-P", str(d / "bird.pid")])

    def restart(self, lab: NetLab) -> None:
        _stop(lab, "bird")
        self._spawn(lab)

    def set_policy(self, lab: NetLab, accept: bool) -> None:
        p = peering_of(lab)
        d = self._dir(lab)
        (d / "filter.conf").write_text(bird_filter(p.vips4, p.vips6, accept))
        _run(lab, ["birdc", "-s", str(d / "bird.ctl"), "configure"], "birdc configure")


class Frr:
    kind = "frr"
    daemons = ("zebra", "bgpd", "bfdd")

    def keys(self) -> tuple[str, ...]:
        return tuple(f"frr-{d}" for d in self.daemons)

    def _dir(self, lab: NetLab) -> Path:
        return FRR_RUN / lab.run_id

    def cleanup(self, lab: NetLab) -> None:
        shutil.rmtree(self._dir(lab), ignore_errors=True)

    def start(self, lab: NetLab) -> None:
        if not (FRR_DIR / "bgpd").exists():
            raise LabError("--router frr needs FRR (apt-get install frr)")
        d = self._dir(lab)
        d.mkdir(parents=True, exist_ok=True)
        FRR_RUN.chmod(0o755)
        (d / "frr.conf").write_text(frr_config(peering_of(lab)))
        shutil.chown(d, "frr", "frr")  # the daemons drop to user frr and write here
        for daemon in self.daemons:
            self._spawn(lab, daemon)
        self._apply(lab)

    def _spawn(self, lab: NetLab, daemon: str) -> None:
        d = self._dir(lab)
        empty = d / f"{daemon}.conf"
        empty.write_text("")  # configured through vtysh afterwards, as FRR's init does
        shutil.chown(empty, "frr", "frr")
        argv = [str(FRR_DIR / daemon), "-f", str(empty), "-i", str(d / f"{daemon}.pid")]
        argv += ["-z", str(d / "zserv.api"), "--vty_socket", str(d), "--log", "stdout"]
        lab.spawn(f"frr-{daemon}", "router", argv)
        self._wait_vty(d / f"{daemon}.vty", daemon, lab)

    def _wait_vty(self, path: Path, daemon: str, lab: NetLab) -> None:
        deadline = time.monotonic() + 20
        while not path.exists():
            if not lab.alive(f"frr-{daemon}"):
                raise LabError(f"FRR {daemon} exited; see {lab.log_path(f'frr-{daemon}')}")
            if time.monotonic() > deadline:
                raise LabError(f"FRR {daemon} did not open {path} within 20 s")
            time.sleep(0.02)

    def vtysh(self, lab: NetLab, *commands: str) -> str:
        argv = ["vtysh", "--vty_socket", str(self._dir(lab))]
        for command in commands:
            argv += ["-c", command]
        return _run(lab, argv, "vtysh")

    def _apply(self, lab: NetLab, text: str | None = None) -> None:
        conf = self._dir(lab) / "frr.conf"
        if text is not None:
            conf.write_text(text)
        _run(lab, ["vtysh", "--vty_socket", str(conf.parent), "-f", str(conf)], "vtysh -f")

    def restart(self, lab: NetLab) -> None:
        _stop(lab, "frr-bgpd")
        (self._dir(lab) / "bgpd.vty").unlink(missing_ok=True)
        self._spawn(lab, "bgpd")
        self._apply(lab)

    def set_policy(self, lab: NetLab, accept: bool) -> None:
        # A route-map entry's verdict is part of its key: the old entries go, the new come.
        old = "deny" if accept else "permit"
        removals = [f"no route-map raftlb-in {old} {seq}" for seq, _ in _FRR_MATCHES]
        self.vtysh(lab, "configure terminal", *removals)
        self.vtysh(lab, "configure terminal", *_frr_route_map(accept))
        (self._dir(lab) / "frr.conf").write_text(frr_config(peering_of(lab), accept))


def router(kind: str) -> LabRouter:
    if kind == "bird":
        return Bird()
    if kind == "frr":
        return Frr()
    raise LabError(f"the lab's router is one of {', '.join(ROUTERS)}, got {kind!r}")


def received(lab: NetLab, kind: str) -> dict[str, int]:
    """Prefixes the router accepted from each node (by IPv4 address), both families."""
    if kind == "frr":
        out: dict[str, int] = {}
        for family in ("ipv4", "ipv6"):
            text = Frr().vtysh(lab, f"show bgp {family} unicast summary json")
            for address, peer in (json.loads(text).get("peers") or {}).items():
                out[address] = out.get(address, 0) + int(peer.get("pfxRcd") or 0)
        return out
    text = _run(
        lab,
        ["birdc", "-s", str(lab.dir / "router" / "bird.ctl"), "show", "protocols", "all"],
        "birdc",
    )
    p = peering_of(lab)
    return _bird_imported(text, dict(p.peers + p.peers6))


def bfd_up(lab: NetLab) -> set[str]:
    """The nodes (IPv4 addresses) whose BFD session with the router is up, as it sees them."""
    if lab.router_kind == "frr":
        text = Frr().vtysh(lab, "show bfd peers json")
        return {str(p["peer"]) for p in json.loads(text or "[]") if p.get("status") == "up"}
    ctl = str(lab.dir / "router" / "bird.ctl")
    text = _run(lab, ["birdc", "-s", ctl, "show", "bfd", "sessions"], "birdc")
    return {line.split()[0] for line in text.splitlines() if " Up " in f" {line} "}


def _bird_imported(text: str, addresses: dict[str, str]) -> dict[str, int]:
    """From `show protocols all`: each BGP protocol's imported routes, summed over channels."""
    out: dict[str, int] = {}
    current: str | None = None
    for line in text.splitlines():
        head = line.split()
        if head and not line.startswith(" ") and head[0] in addresses:
            current = addresses[head[0]]
            out.setdefault(current, 0)
        elif current is not None and line.strip().startswith("Routes:"):
            out[current] += int(line.split()[1])
    return out
