"""MetalLB's configuration as raftlb pools and the agent's `bgp` section. Pure: parsed YAML in.

Reads what `kubectl get -o yaml` or hand-written manifests hold, in any mix and order: the
metallb.io CRDs (IPAddressPool, L2Advertisement, BGPAdvertisement, BGPPeer v1beta1/v1beta2,
Community, BFDProfile; `kind: List` wrappers; MetalLB's status kinds are skipped) and the
ConfigMap of MetalLB before 0.13 (`data.config`: peers, bgp-communities, address-pools,
bfd-profiles). Pools are selected by advertisements as MetalLB selects them (names, label
selectors, none of either: every pool). Each setting maps onto raftlb's or is a `Finding` of the
report; what MetalLB would refuse, or what cannot be translated, raises `MigrationError`.

This module reads the objects and translates the pools and advertisements; the peers, which
become per-agent settings rather than pools, are `metallb_peers.Peers`' to translate.
"""

from __future__ import annotations

import ipaddress
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from appliance.config import BgpConfig
from appliance.documents import DocumentError, load_yaml
from appliance.migrate import (
    Fields,
    Finding,
    Objects,
    Problems,
    Ref,
    label_selector,
)
from appliance.migrate.metallb_peers import NO_BFD, Peers
from appliance.model import AnnounceMode, BgpAttributes, IPFamily, Pool, field_errors

GROUP = "metallb.io"
VERSIONS = {
    "IPAddressPool": ("v1beta1",),
    "L2Advertisement": ("v1beta1",),
    "BGPAdvertisement": ("v1beta1",),
    "BGPPeer": ("v1beta1", "v1beta2"),
    "Community": ("v1beta1",),
    "BFDProfile": ("v1beta1",),
}
# Written by MetalLB itself, they hold no configuration.
STATUS_KINDS = frozenset(
    {"ServiceL2Status", "ServiceBGPStatus", "ConfigurationState", "BGPSessionState"}
)
# The ConfigMap spells in kebab case what the CRDs spell in camel case: one reader serves both.
LEGACY_KEYS = {
    "autoAssign": "auto-assign",
    "avoidBuggyIPs": "avoid-buggy-ips",
    "aggregationLength": "aggregation-length",
    "aggregationLengthV6": "aggregation-length-v6",
    "localPref": "localpref",
    "myASN": "my-asn",
    "peerASN": "peer-asn",
    "peerAddress": "peer-address",
    "sourceAddress": "source-address",
    "peerPort": "peer-port",
    "holdTime": "hold-time",
    "keepaliveTime": "keepalive-time",
    "routerID": "router-id",
    "nodeSelectors": "node-selectors",
    "bfdProfile": "bfd-profile",
    "ebgpMultiHop": "ebgp-multihop",
}
_NUMBER = re.compile(r"[0-9]{1,10}")


@dataclass(frozen=True)
class Migration:
    """The translation: raftlb pools, the agent's `bgp` section (None: no peer) and the report."""

    pools: list[Pool]
    agent_bgp: BgpConfig | None
    report: list[Finding]

    @property
    def announce(self) -> str:
        """The agents' `announce` setting these pools need."""
        modes = {pool.announce for pool in self.pools}
        return "+".join(m.value for m in AnnounceMode if m in modes) or "none"

    def to_json(self) -> dict[str, Any]:
        bgp = self.agent_bgp
        return {
            "pools": [_pool_json(pool) for pool in self.pools],
            "agent_bgp": bgp.model_dump(mode="json", exclude_defaults=True) if bgp else None,
            "report": [finding.to_json() for finding in self.report],
        }


def _pool_json(pool: Pool) -> dict[str, Any]:
    out = pool.model_dump(mode="json", exclude={"bgp"})
    if pool.bgp is not None:
        out["bgp"] = pool.bgp.model_dump(mode="json", exclude_defaults=True)
    return out


@dataclass
class _PoolIn:
    fields: Fields
    pool: Pool  # announce, default and bgp are decided once every advertisement is known
    labels: Mapping[str, str]
    auto_assign: bool
    crd: bool
    label: str  # "" for a CRD, "pool 'x': " inside the ConfigMap (whose ref names no pool)


@dataclass
class _Advertisement:
    ref: Ref
    label: str  # its name, or its place in the ConfigMap
    mode: AnnounceMode
    pools: set[str]
    communities: list[str]
    large: list[str]
    local_pref: int | None


def translate(files: Iterable[tuple[str, list[Any]]]) -> Migration:
    """Translate the documents of each file (name, parsed YAML documents); raise
    MigrationError naming every problem's file, object and field."""
    return _Translation().run(files)


def community(text: str) -> tuple[str, str] | None:
    """("standard", "a:b") or ("large", "a:b:c") as MetalLB parses a community, else None."""
    parts = text.split(":")
    if len(parts) == 2 and all(_NUMBER.fullmatch(p) and int(p) <= 0xFFFF for p in parts):
        return "standard", ":".join(str(int(p)) for p in parts)
    if (
        len(parts) == 4
        and parts[0] == "large"
        and all(_NUMBER.fullmatch(p) and int(p) <= 0xFFFFFFFF for p in parts[1:])
    ):
        return "large", ":".join(str(int(p)) for p in parts[1:])
    return None


class _Translation:
    def __init__(self) -> None:
        self.problems = Problems()
        self.pools: list[_PoolIn] = []
        self.ads: list[_Advertisement] = []
        self.peers = Peers()
        self.aliases: dict[str, str] = {}
        self.objects = Objects(self.problems, self._accept)

    def run(self, files: Iterable[tuple[str, list[Any]]]) -> Migration:
        objects = [obj for file, docs in files for obj in self.objects.read(file, docs)]
        # Aliases first and advertisements after the pools: the input may come in any order.
        steps: list[tuple[str, Callable[[Ref, dict[str, Any]], None]]] = [
            ("Community", self._community_cr),
            ("ConfigMap", self._configmap),
            ("IPAddressPool", self._ipaddresspool),
            ("L2Advertisement", lambda r, o: self._advertisement(r, o, AnnounceMode.L2)),
            ("BGPAdvertisement", lambda r, o: self._advertisement(r, o, AnnounceMode.BGP)),
            ("BGPPeer", lambda r, o: self.peers.add(self._spec(r, o))),
            ("BFDProfile", self._bfd_profile),
        ]
        for kind, step in steps:
            for ref, obj in objects:
                if ref.kind == kind:
                    step(ref, obj)
        self.problems.raise_if_any()
        pools = self._pools()
        agent_bgp = self.peers.agent_bgp()
        self.problems.raise_if_any()
        # In the order of the input, whichever step found them.
        order = {ref: i for i, (ref, _) in enumerate(objects)}
        report = sorted(self.problems.findings, key=lambda f: order.get(f.ref, -1))
        return Migration(pools, agent_bgp, report)

    def _accept(self, ref: Ref, api: Any) -> bool:
        group, _, version = str(api).rpartition("/")
        if group == GROUP and ref.kind in VERSIONS and version not in VERSIONS[ref.kind]:
            expected = " or ".join(f"{GROUP}/{v}" for v in VERSIONS[ref.kind])
            self.problems.error(ref, ref.file, "apiVersion", api, f"{ref.kind} is {expected}")
            return False
        if (group == GROUP and ref.kind in VERSIONS) or (ref.kind, api) == ("ConfigMap", "v1"):
            return True
        if group != GROUP or ref.kind not in STATUS_KINDS:
            self.problems.error(
                ref,
                ref.file,
                "kind",
                f"{api} {ref.kind}",
                "not a MetalLB kind this migration reads: IPAddressPool, L2Advertisement, "
                "BGPAdvertisement, BGPPeer, Community, BFDProfile (metallb.io) or the "
                "ConfigMap of MetalLB before 0.13"
                + ("; AddressPool became IPAddressPool in 0.13" * (ref.kind == "AddressPool")),
            )
        return False

    def _bfd_profile(self, ref: Ref, obj: dict[str, Any]) -> None:
        self.problems.report(ref, "spec", obj.get("spec"), "ignored", NO_BFD)

    def _spec(self, ref: Ref, obj: dict[str, Any]) -> Fields:
        spec = obj.get("spec")
        if spec is not None and not isinstance(spec, dict):
            self.problems.error(ref, ref.file, "spec", spec, "must be a mapping")
        return Fields(self.problems, ref, spec if isinstance(spec, dict) else {}, "spec")

    # -- kinds ----------------------------------------------------------------------------------

    def _alias(self, f: Fields, name: Any, value: Any, path: str) -> None:
        if not isinstance(name, str) or not isinstance(value, str) or community(value) is None:
            f.error_at(path, value, "not a community (a:b, large:a:b:c)")
        elif name in self.aliases:
            f.error_at(path, name, "community alias defined twice")
        else:
            self.aliases[name] = value

    def _community_cr(self, ref: Ref, obj: dict[str, Any]) -> None:
        f = self._spec(ref, obj)
        for entry in f.entries("communities"):
            self._alias(entry, entry.text("name"), entry.text("value"), entry.path("value"))
            entry.finish()
        f.finish()

    def _configmap(self, ref: Ref, obj: dict[str, Any]) -> None:
        data = obj.get("data")
        text = data.get("config") if isinstance(data, dict) else None
        if not isinstance(text, str):
            keys = sorted(data) if isinstance(data, dict) else None
            self.problems.report(ref, "data", keys, "ignored", "no data.config: not MetalLB's")
            return
        try:
            config = load_yaml(text) or {}
        except DocumentError as exc:
            self.problems.error(ref, ref.file, "data.config", None, str(exc))
            return
        if not isinstance(config, dict):
            self.problems.error(ref, ref.file, "data.config", config, "must hold a mapping")
            return
        f = Fields(self.problems, ref, config, "data.config", LEGACY_KEYS)
        for name, value in f.mapping("bgp-communities").items():
            self._alias(f, name, value, f"{f.path('bgp-communities')}.{name}")
        f.unsupported("bfd-profiles", NO_BFD)
        for entry in f.entries("address-pools", LEGACY_KEYS):
            self._legacy_pool(entry)
        for entry in f.entries("peers", LEGACY_KEYS):
            self.peers.add(entry)
        f.finish()

    def _legacy_pool(self, f: Fields) -> None:
        name, protocol = f.text("name"), f.text("protocol")
        ads = list(f.entries("bgp-advertisements", LEGACY_KEYS))
        pool = self._pool(f, name, {}, f.path("name"), crd=False)
        if protocol == "layer2" and ads:
            f.error("bgp-advertisements", len(ads), "a layer2 pool has no BGP advertisements")
        elif protocol not in ("layer2", "bgp"):
            f.error("protocol", protocol, "must be layer2 or bgp")
        elif pool is not None and protocol == "layer2":
            label = f.path("protocol")
            self.ads.append(
                _Advertisement(f.ref, label, AnnounceMode.L2, {pool.pool.name}, [], [], None)
            )
        elif pool is not None:
            # A bgp pool without advertisements is announced with MetalLB's defaults.
            for ad in ads or [Fields(self.problems, f.ref, {}, f.path("bgp-advertisements"))]:
                self._bgp_advertisement(ad, {pool.pool.name})
                ad.finish()
        f.finish()

    def _ipaddresspool(self, ref: Ref, obj: dict[str, Any]) -> None:
        f = self._spec(ref, obj)
        labels = (obj.get("metadata") or {}).get("labels") or {}
        self._pool(f, ref.name, labels if isinstance(labels, dict) else {}, "metadata.name")
        f.unsupported(
            "serviceAllocation",
            "raftlb ties no pool to namespaces or Services (priority, namespaces, "
            "namespaceSelectors, serviceSelectors): a Service gets another pool than its "
            "family's default only by naming it (metallb.io/address-pool or raftlb.io/pool)",
        )
        f.finish()

    def _pool(
        self,
        f: Fields,
        name: str | None,
        labels: Mapping[str, str],
        name_path: str,
        crd: bool = True,
    ) -> _PoolIn | None:
        blocks = [self._block(f, i, text) for i, text in enumerate(f.texts("addresses"))]
        auto_assign, avoid = f.flag("autoAssign"), f.flag("avoidBuggyIPs")
        if not blocks:
            f.error("addresses", f.raw("addresses"), "a pool needs a CIDR or a range A-B")
        if name is None:
            f.error("name", name, "missing")
        if name is None or not blocks or None in blocks:
            return None
        if any(p.pool.name == name for p in self.pools):
            f.error_at(name_path, name, "a pool of that name is given twice")
            return None
        try:
            pool = Pool(name=name, addresses=[b for b in blocks if b], avoid_buggy_ips=bool(avoid))
        except ValidationError as exc:
            for err in field_errors(exc):
                at = err["field"]
                path = name_path if at == "name" else f"{f.prefix}.{at}"
                message = err["message"]
                if at == "name":
                    message = (
                        "not a raftlb pool name ([a-z0-9_.-], at most 63 characters): rename the "
                        "pool in MetalLB first, Services name it in metallb.io/address-pool"
                    )
                f.error_at(path, err["value"], message)
            return None
        label = "" if crd else f"pool {name!r}: "
        record = _PoolIn(f, pool, labels, auto_assign is not False, crd, label)
        self.pools.append(record)
        return record

    def _block(self, f: Fields, i: int, text: str) -> str | None:
        """One MetalLB address entry as raftlb writes it, or None (an error is recorded)."""
        path = f"{f.path('addresses')}.{i}"
        try:
            if "-" in text:
                start, end = (ipaddress.ip_address(p.strip()) for p in text.split("-", 1))
                if start.version != end.version or int(end) < int(start):
                    raise ValueError("the range mixes IPv4 and IPv6 or ends before it starts")
                return f"{start}-{end}"
            if "/" not in text:
                raise ValueError("a single address: write it as a CIDR (…/32, …/128)")
            net = ipaddress.ip_network(text.strip(), strict=False)
        except ValueError as exc:
            f.error_at(path, text, f"not a CIDR or a range A-B: {exc}")
            return None
        if net.network_address != ipaddress.ip_address(text.strip().split("/")[0]):
            f.report_at(path, text, "changed", f"host bits set: MetalLB took {net}, written so")
        if net.version == 6 and net.prefixlen < 127:
            f.problems.report(
                f.ref,
                path,
                text,
                "changed",
                "raftlb never hands out an IPv6 CIDR's all-zeros address (the subnet-router "
                "anycast address), which MetalLB may have handed out",
            )
        return str(net)

    def _advertisement(self, ref: Ref, obj: dict[str, Any], mode: AnnounceMode) -> None:
        f = self._spec(ref, obj)
        crd_pools = [p for p in self.pools if p.crd]
        names = f.texts("ipAddressPools")
        selectors = [label_selector(sel) for sel in f.entries("ipAddressPoolSelectors")]
        selected = {p.pool.name for p in crd_pools if not names and not selectors}
        for i, name in enumerate(names):
            if any(p.pool.name == name for p in crd_pools):
                selected.add(name)
            else:
                path = f"{f.path('ipAddressPools')}.{i}"
                self.problems.report(ref, path, name, "ignored", "no IPAddressPool of that name")
        for matches in selectors:
            selected |= {p.pool.name for p in crd_pools if matches(p.labels)}
        if not selected:
            field = "ipAddressPoolSelectors" if selectors else "ipAddressPools"
            f.report(field, f.raw(field), "ignored", "selects no IPAddressPool of the input")
        f.unsupported(
            "nodeSelectors",
            "every appliance node may announce a VIP (l2: its one owner, bgp: every able node): "
            "to restrict one Service, give its raftlb service `nodes`",
        )
        f.unsupported("serviceSelectors", "raftlb announces every VIP of an announced pool")
        if mode is AnnounceMode.L2:
            f.unsupported("interfaces", "raftlb answers on each agent's data_interface", "changed")
            f.unsupported("preferredNodeSelectors", "raftlb's scheduler spreads VIPs evenly")
            self.ads.append(_Advertisement(ref, str(ref), mode, selected, [], [], None))
        else:
            self._bgp_advertisement(f, selected)
        f.finish()

    def _bgp_advertisement(self, f: Fields, pools: set[str]) -> None:
        found: dict[str, list[str]] = {"standard": [], "large": []}
        for i, text in enumerate(f.texts("communities")):
            parsed = community(self.aliases.get(text, text))
            if parsed is None:
                path = f"{f.path('communities')}.{i}"
                message = "not a community (a:b, large:a:b:c) nor a Community alias of the input"
                f.error_at(path, text, message)
            elif parsed[1] not in found[parsed[0]]:
                found[parsed[0]].append(parsed[1])
        local_pref = f.number("localPref")
        if local_pref is not None and not 0 <= local_pref <= 0xFFFFFFFF:
            f.error("localPref", local_pref, "must be 0-4294967295")
        f.unsupported("aggregationLength", "raftlb announces each VIP as a /32", default=32)
        f.unsupported("aggregationLengthV6", "raftlb announces each VIP as a /128", default=128)
        f.unsupported("peers", "raftlb announces every bgp pool to every peer of bgp.peers")
        self.ads.append(
            _Advertisement(
                f.ref,
                str(f.ref) if f.prefix == "spec" else f.prefix,
                AnnounceMode.BGP,
                pools,
                found["standard"],
                found["large"],
                local_pref,
            )
        )

    # -- the answer -----------------------------------------------------------------------------

    def _pool_report(self, p: _PoolIn, value: Any, message: str) -> None:
        """A decision about a whole pool: for a CRD it follows from the advertisements, in the
        ConfigMap from the pool's protocol."""
        path = "(advertisements)" if p.crd else p.fields.path("protocol")
        self.problems.report(p.fields.ref, path, value, "changed", p.label + message)

    def _pools(self) -> list[Pool]:
        out: list[Pool] = []
        defaults: dict[IPFamily, str] = {}
        of_family = Counter(family for p in self.pools for family in p.pool.families())
        for p in self.pools:
            name = p.pool.name
            l2 = [a for a in self.ads if a.mode is AnnounceMode.L2 and name in a.pools]
            bgp = [a for a in self.ads if a.mode is AnnounceMode.BGP and name in a.pools]
            announce = self._announce(p, l2, bgp)
            update = {
                "announce": announce,
                "default": self._default(p, defaults, of_family),
                "bgp": self._attributes(p, bgp) if announce is AnnounceMode.BGP else None,
            }
            try:
                pool = p.pool.model_copy(update=update)
            except ValidationError as exc:
                for err in field_errors(exc):
                    path = f"{p.fields.prefix} (raftlb's {err['field']})"
                    ref = p.fields.ref
                    self.problems.error(ref, ref.file, path, err["value"], err["message"])
                continue
            for other in out:
                overlap = pool.overlaps(other)
                if overlap:
                    p.fields.error("addresses", pool.addresses, f"{p.label}{overlap}")
            out.append(pool)
        return out

    def _announce(
        self, p: _PoolIn, l2: list[_Advertisement], bgp: list[_Advertisement]
    ) -> AnnounceMode:
        if l2 and bgp:
            self._pool_report(
                p,
                [a.label for a in l2 + bgp],
                "MetalLB announces it by layer 2 and by BGP, a raftlb pool one way: written "
                "announce: bgp (every node announces it, and its addresses need not lie in the "
                "data interface's subnets); write announce: l2 to keep layer 2 instead",
            )
        elif not l2 and not bgp:
            self._pool_report(
                p,
                None,
                "no L2Advertisement or BGPAdvertisement selects it: MetalLB hands out its "
                "addresses but announces none; raftlb announces every pool: written announce: "
                "l2, leave the pool out if it must stay silent",
            )
        if bgp and not self.peers:
            self._pool_report(
                p, None, "announced by BGP but no BGPPeer is given: agent.yaml needs bgp peers"
            )
        if bgp and IPFamily.IPV6 in p.pool.families():
            self._pool_report(
                p, None, "raftlb announces IPv6 VIPs only from agents with bgp.next_hop6 set"
            )
        return AnnounceMode.BGP if bgp else AnnounceMode.L2

    def _attributes(self, p: _PoolIn, ads: list[_Advertisement]) -> BgpAttributes | None:
        communities = list(dict.fromkeys(c for a in ads for c in a.communities))
        large = list(dict.fromkeys(c for a in ads for c in a.large))
        prefs = [a.local_pref for a in ads if a.local_pref is not None]
        if len(ads) > 1:
            self._pool_report(
                p,
                [a.label for a in ads],
                "MetalLB announces a route per BGPAdvertisement, raftlb one per VIP: it carries "
                "the communities of all"
                + (f" and local_pref {prefs[0]}, the first given" if len(set(prefs)) > 1 else ""),
            )
        if not (communities or large or prefs):
            return None
        local_pref = prefs[0] if prefs else None
        return BgpAttributes(
            communities=communities, large_communities=large, local_pref=local_pref
        )

    def _default(
        self, p: _PoolIn, defaults: dict[IPFamily, str], of_family: Counter[IPFamily]
    ) -> bool:
        """MetalLB's autoAssign as raftlb's `default`, of which a family has one at most."""
        families = sorted(p.pool.families())
        taken = [f"{fam} defaults to {defaults[fam]!r}" for fam in families if fam in defaults]
        if p.auto_assign and not taken:
            defaults.update(dict.fromkeys(families, p.pool.name))
            return True
        if p.auto_assign:
            message = (
                f"raftlb has one default pool per family and {', '.join(taken)}: this pool is "
                "used only by Services that name it"
            )
        else:
            message = (
                "raftlb has no autoAssign: a pool that is not `default` is used only by "
                "Services that name it"
            )
            alone = [str(fam) for fam in families if of_family[fam] == 1]
            if alone:
                message += (
                    f"; but raftlb also takes the only {' and '.join(alone)} pool when none is "
                    "named: add a default pool of that family if it must not"
                )
        p.fields.report("autoAssign", p.auto_assign, "changed", p.label + message)
        return False
