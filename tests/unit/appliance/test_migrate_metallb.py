"""`raftlb migrate metallb`: MetalLB configurations as users write them, translated.

The samples follow MetalLB's documentation (layer 2, BGP, advanced BGP, the ConfigMap of
MetalLB before 0.13) and what `kubectl get -o yaml` prints. The pools printed are read back
with the reader of `raftlb pools apply -f`, the agent snippet with the agent config's parser.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner, Result

from appliance.cli.files import POOLS, parse_document, read_document
from appliance.cli.main import cli
from appliance.config import BgpConfig, ConfigError, parse_config
from appliance.migrate import Finding, MigrationError, duration_seconds
from appliance.migrate.metallb import Migration, community, translate
from appliance.model import AnnounceMode, Pool

L2 = """\
apiVersion: metallb.io/v1beta1
kind: IPAddressPool
metadata:
  name: first-pool
  namespace: metallb-system
spec:
  addresses:
  - 192.168.1.240-192.168.1.250
---
apiVersion: metallb.io/v1beta1
kind: L2Advertisement
metadata:
  name: example
  namespace: metallb-system
spec:
  ipAddressPools:
  - first-pool
"""

BGP = """\
apiVersion: metallb.io/v1beta2
kind: BGPPeer
metadata:
  name: sample
  namespace: metallb-system
spec:
  myASN: 64500
  peerASN: 64501
  peerAddress: 10.0.0.1
  holdTime: 90s
---
apiVersion: metallb.io/v1beta1
kind: IPAddressPool
metadata:
  name: first-pool
  namespace: metallb-system
spec:
  addresses:
  - 192.168.10.0/24
  - fc00:f853:0ccd:e799::/124
---
apiVersion: metallb.io/v1beta1
kind: BGPAdvertisement
metadata:
  name: example
  namespace: metallb-system
"""

# MetalLB's "advanced BGP": one pool announced twice, as /32 with attributes and as a /24.
ADVANCED = """\
apiVersion: metallb.io/v1beta1
kind: Community
metadata:
  name: communities
  namespace: metallb-system
spec:
  communities:
  - name: NO_ADVERTISE
    value: 65535:65282
---
apiVersion: metallb.io/v1beta1
kind: BGPAdvertisement
metadata:
  name: local
  namespace: metallb-system
spec:
  ipAddressPools:
  - bgp-example
  aggregationLength: 32
  localPref: 100
  communities:
  - NO_ADVERTISE
  - large:64512:1:2
---
apiVersion: metallb.io/v1beta1
kind: BGPAdvertisement
metadata:
  name: external
  namespace: metallb-system
spec:
  ipAddressPools:
  - bgp-example
  aggregationLength: 24
  communities:
  - 8000:800
---
apiVersion: metallb.io/v1beta1
kind: IPAddressPool
metadata:
  name: bgp-example
  namespace: metallb-system
spec:
  addresses:
  - 203.0.113.200/30
---
apiVersion: metallb.io/v1beta2
kind: BGPPeer
metadata:
  name: peer-sample1
  namespace: metallb-system
spec:
  peerAddress: 10.0.0.1
  peerASN: 64501
  myASN: 64500
  routerID: 10.10.10.10
  password: example-password
  bfdProfile: full
  ebgpMultiHop: true
  nodeSelectors:
  - matchLabels:
      rack: frontend
---
apiVersion: metallb.io/v1beta1
kind: BFDProfile
metadata:
  name: full
  namespace: metallb-system
spec:
  receiveInterval: 380
  transmitInterval: 270
"""

SELECTORS = """\
apiVersion: metallb.io/v1beta1
kind: IPAddressPool
metadata: {name: production, labels: {zone: east, tier: prod}}
spec: {addresses: [192.0.2.0/26]}
---
apiVersion: metallb.io/v1beta1
kind: IPAddressPool
metadata: {name: staging, labels: {zone: west}}
spec: {addresses: [192.0.2.64/26]}
---
apiVersion: metallb.io/v1beta1
kind: IPAddressPool
metadata: {name: lab}
spec: {addresses: [192.0.2.128/26], autoAssign: false}
---
apiVersion: metallb.io/v1beta1
kind: L2Advertisement
metadata: {name: east-only}
spec:
  ipAddressPoolSelectors:
  - matchExpressions:
    - {key: zone, operator: In, values: [east]}
    - {key: tier, operator: Exists}
  nodeSelectors:
  - matchLabels: {kubernetes.io/hostname: node-a}
  interfaces: [eth1]
---
apiVersion: metallb.io/v1beta1
kind: BGPAdvertisement
metadata: {name: west}
spec:
  ipAddressPoolSelectors:
  - matchLabels: {zone: west}
  - matchExpressions: [{key: tier, operator: NotIn, values: [prod]}, {key: zone, operator: Exists}]
  peers: [tor-a]
"""

# `kubectl get ipaddresspools,l2advertisements -n metallb-system -o yaml`: a List, with the
# defaults the API server filled in, managedFields and status.
KUBECTL = """\
apiVersion: v1
items:
- apiVersion: metallb.io/v1beta1
  kind: IPAddressPool
  metadata:
    annotations:
      kubectl.kubernetes.io/last-applied-configuration: |
        {"apiVersion":"metallb.io/v1beta1","kind":"IPAddressPool"}
    creationTimestamp: "2024-05-02T09:12:44Z"
    generation: 1
    managedFields:
    - apiVersion: metallb.io/v1beta1
      fieldsType: FieldsV1
      manager: kubectl-client-side-apply
      operation: Update
    name: lan
    namespace: metallb-system
    resourceVersion: "1843"
    uid: 5b1c1ad6-2a0e-4b47-8f1e-3f3c1d0a0b11
  spec:
    addresses:
    - 192.168.1.240/28
    autoAssign: true
    avoidBuggyIPs: false
  status:
    assignedIPv4: 2
    assignedIPv6: 0
    availableIPv4: 14
    availableIPv6: 0
- apiVersion: metallb.io/v1beta1
  kind: L2Advertisement
  metadata:
    name: lan
    namespace: metallb-system
  spec:
    ipAddressPools:
    - lan
- apiVersion: metallb.io/v1beta1
  kind: ServiceL2Status
  metadata:
    name: l2-abcde
    namespace: metallb-system
  status:
    node: node-a
kind: List
metadata:
  resourceVersion: ""
"""

LEGACY = """\
apiVersion: v1
kind: ConfigMap
metadata:
  namespace: metallb-system
  name: config
data:
  config: |
    peers:
    - peer-address: 10.0.0.1
      peer-asn: 64501
      my-asn: 64500
      hold-time: 120s
    - peer-address: 10.0.0.2
      peer-asn: 64501
      my-asn: 64500
      password: yourPassword
      node-selectors:
      - match-labels:
          rack: frontend
    bgp-communities:
      no-advertise: 65535:65282
    bfd-profiles:
    - name: full
      receive-interval: 179
    address-pools:
    - name: default
      protocol: layer2
      addresses:
      - 192.168.1.240-192.168.1.250
      avoid-buggy-ips: true
    - name: bgp-pool
      protocol: bgp
      auto-assign: false
      addresses:
      - 198.51.100.0/24
      bgp-advertisements:
      - aggregation-length: 32
        localpref: 100
        communities:
        - no-advertise
    - name: bgp-plain
      protocol: bgp
      addresses:
      - 203.0.113.0/28
"""


def migrate(*texts: str) -> Migration:
    return translate([(f"in{i}.yaml", list(yaml.safe_load_all(t))) for i, t in enumerate(texts)])


def pools_of(result: Migration) -> dict[str, Pool]:
    return {pool.name: pool for pool in result.pools}


def finding(result: Migration, obj: str, field: str) -> Finding:
    """The report line about `obj` (Kind/name) and `field`; fails listing the report if none."""
    for item in result.report:
        if str(item.ref) == obj and item.field == field:
            return item
    lines = "\n".join(f"{f.ref} {f.field}" for f in result.report)
    raise AssertionError(f"no finding {obj} {field} in:\n{lines}")


def errors_of(*texts: str) -> list[dict[str, Any]]:
    with pytest.raises(MigrationError) as info:
        migrate(*texts)
    return info.value.errors


def doc(kind: str, name: str | None, spec: Any = None, api: str = "metallb.io/v1beta1") -> str:
    """One object of the input, as YAML."""
    data: dict[str, Any] = {"apiVersion": api, "kind": kind}
    if name is not None:
        data["metadata"] = {"name": name}
    if spec is not None:
        data["spec"] = spec
    return yaml.safe_dump(data, sort_keys=False)


def pool(spec: Any) -> str:
    return doc("IPAddressPool", "p", spec)


def peer(**spec: Any) -> str:
    base = {"myASN": 64500, "peerASN": 64501, "peerAddress": "10.0.0.1"}
    return doc("BGPPeer", "r", {**base, **spec}, "metallb.io/v1beta2")


L2_POOL, L2_AD = L2.split("---\n")
BGP_PEER, BGP_POOL, BGP_AD = BGP.split("---\n")


# -- translation tables ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sample", "name", "expected"),
    [
        (
            L2,
            "first-pool",
            {"addresses": ["192.168.1.240-192.168.1.250"], "announce": "l2", "default": True},
        ),
        (
            BGP,
            "first-pool",
            {
                "addresses": ["192.168.10.0/24", "fc00:f853:ccd:e799::/124"],
                "announce": "bgp",
                "default": True,
            },
        ),
        (
            ADVANCED,
            "bgp-example",
            {
                "announce": "bgp",
                "bgp": {
                    "communities": ["65535:65282", "8000:800"],
                    "large_communities": ["64512:1:2"],
                    "local_pref": 100,
                },
            },
        ),
        (SELECTORS, "production", {"announce": "l2", "default": True}),
        (SELECTORS, "staging", {"announce": "bgp", "default": False}),
        (SELECTORS, "lab", {"announce": "l2", "default": False}),
        (KUBECTL, "lan", {"addresses": ["192.168.1.240/28"], "announce": "l2", "default": True}),
        (LEGACY, "default", {"announce": "l2", "default": True, "avoid_buggy_ips": True}),
        (
            LEGACY,
            "bgp-pool",
            {
                "announce": "bgp",
                "default": False,
                "bgp": {"communities": ["65535:65282"], "local_pref": 100},
            },
        ),
        (LEGACY, "bgp-plain", {"announce": "bgp", "default": False}),
    ],
)
def test_pools_translate(sample: str, name: str, expected: dict[str, Any]) -> None:
    pool = pools_of(migrate(sample))[name]
    dumped = migrate(sample).to_json()["pools"]
    as_json = next(p for p in dumped if p["name"] == name)
    for key, value in expected.items():
        assert as_json[key] == value, (key, as_json)
    if "bgp" not in expected:
        assert pool.bgp is None


@pytest.mark.parametrize(
    ("sample", "agent_bgp"),
    [
        (L2, None),
        (BGP, {"asn": 64500, "peers": [{"address": "10.0.0.1", "asn": 64501, "hold_time": 90}]}),
        (ADVANCED, {"asn": 64500, "peers": [{"address": "10.0.0.1", "asn": 64501}]}),
        (
            LEGACY,
            {
                "asn": 64500,
                "peers": [
                    {"address": "10.0.0.1", "asn": 64501, "hold_time": 120},
                    {"address": "10.0.0.2", "asn": 64501},
                ],
            },
        ),
    ],
)
def test_agent_bgp_section(sample: str, agent_bgp: dict[str, Any] | None) -> None:
    data = migrate(sample).to_json()["agent_bgp"]
    assert data == agent_bgp
    if data is not None:
        BgpConfig.model_validate(data)  # the agent config's own model takes it


@pytest.mark.parametrize(
    ("sample", "obj", "field", "effect", "words"),
    [
        (ADVANCED, "BGPAdvertisement/external", "spec.aggregationLength", "ignored", "/32"),
        (ADVANCED, "BGPPeer/peer-sample1", "spec.password", "ignored", "MD5"),
        (ADVANCED, "BGPPeer/peer-sample1", "spec.bfdProfile", "ignored", "BFD"),
        (ADVANCED, "BGPPeer/peer-sample1", "spec.ebgpMultiHop", "ignored", "multihop"),
        (ADVANCED, "BGPPeer/peer-sample1", "spec.nodeSelectors", "ignored", "agent.yaml"),
        (ADVANCED, "BGPPeer/peer-sample1", "spec.routerID", "changed", "bgp.router_id"),
        (ADVANCED, "BGPPeer/peer-sample1", "spec.holdTime", "changed", "3 s"),
        (ADVANCED, "BFDProfile/full", "spec", "ignored", "BFD"),
        (ADVANCED, "IPAddressPool/bgp-example", "(advertisements)", "changed", "route per"),
        (BGP, "IPAddressPool/first-pool", "(advertisements)", "changed", "next_hop6"),
        (BGP, "IPAddressPool/first-pool", "spec.addresses.1", "changed", "all-zeros"),
        (SELECTORS, "IPAddressPool/lab", "(advertisements)", "changed", "announces none"),
        (SELECTORS, "IPAddressPool/lab", "spec.autoAssign", "changed", "name it"),
        (SELECTORS, "IPAddressPool/staging", "spec.autoAssign", "changed", "one default"),
        (SELECTORS, "L2Advertisement/east-only", "spec.nodeSelectors", "ignored", "nodes"),
        (SELECTORS, "L2Advertisement/east-only", "spec.interfaces", "changed", "data_interface"),
        (SELECTORS, "BGPAdvertisement/west", "spec.peers", "ignored", "every peer"),
        (LEGACY, "ConfigMap/config", "data.config.bfd-profiles", "ignored", "BFD"),
        (LEGACY, "ConfigMap/config", "data.config.peers.1.password", "ignored", "MD5"),
        (LEGACY, "ConfigMap/config", "data.config.peers.1.node-selectors", "ignored", "peers"),
        (LEGACY, "ConfigMap/config", "data.config.address-pools.1.auto-assign", "changed", "pool"),
    ],
)
def test_report(sample: str, obj: str, field: str, effect: str, words: str) -> None:
    item = finding(migrate(sample), obj, field)
    assert item.effect == effect
    assert words in item.message


def test_passwords_stay_out_of_the_report() -> None:
    for sample in (ADVANCED, LEGACY):
        text = json.dumps(migrate(sample).to_json())
        assert "example-password" not in text
        assert "yourPassword" not in text


def test_pool_selected_by_both_advertisements_is_bgp_with_the_reason() -> None:
    result = migrate(L2, BGP_PEER, BGP_AD)
    assert pools_of(result)["first-pool"].announce == AnnounceMode.BGP
    item = finding(result, "IPAddressPool/first-pool", "(advertisements)")
    assert item.value == ["L2Advertisement/example", "BGPAdvertisement/example"]
    assert "announce: bgp" in item.message
    assert "announce: l2" in item.message


def test_kubectl_output_reports_nothing() -> None:
    """Defaults the API server fills in, metadata and status say nothing worth reporting, and
    MetalLB's status objects are skipped."""
    assert migrate(KUBECTL).report == []


def test_unknown_fields_are_reported_not_dropped() -> None:
    text = L2.replace("  ipAddressPools:", "  futureKnob: 3\n  ipAddressPools:")
    item = finding(migrate(text), "L2Advertisement/example", "spec.futureKnob")
    assert (item.effect, item.value) == ("ignored", 3)


def test_defaults_one_per_family() -> None:
    text = """\
apiVersion: metallb.io/v1beta1
kind: IPAddressPool
metadata: {name: v4}
spec: {addresses: [192.0.2.0/28]}
---
apiVersion: metallb.io/v1beta1
kind: IPAddressPool
metadata: {name: dual}
spec: {addresses: [198.51.100.0/28, 2001:db8::/120]}
---
apiVersion: metallb.io/v1beta1
kind: IPAddressPool
metadata: {name: v6}
spec: {addresses: [2001:db8:1::/120]}
---
apiVersion: metallb.io/v1beta1
kind: IPAddressPool
metadata: {name: only-v6-quiet}
spec: {addresses: [2001:db8:2::/120], autoAssign: false}
"""
    result = migrate(text)
    assert {p.name: p.default for p in result.pools} == {
        "v4": True,
        "dual": False,  # its IPv4 half would be a second IPv4 default
        "v6": True,
        "only-v6-quiet": False,
    }
    assert "'v4'" in finding(result, "IPAddressPool/dual", "spec.autoAssign").message


def test_auto_assign_false_alone_in_its_family_is_flagged() -> None:
    text = L2.replace("  addresses:", "  autoAssign: false\n  addresses:")
    message = finding(migrate(text), "IPAddressPool/first-pool", "spec.autoAssign").message
    assert "only ipv4 pool" in message


def test_peers_one_asn_per_agent_and_one_session_per_address() -> None:
    peers = """\
apiVersion: metallb.io/v1beta2
kind: BGPPeer
metadata: {name: tor-a}
spec: {myASN: 64500, peerASN: 65000, peerAddress: 192.0.2.1, peerPort: 179}
---
apiVersion: metallb.io/v1beta2
kind: BGPPeer
metadata: {name: tor-a-rack2}
spec: {myASN: 64500, peerASN: 65000, peerAddress: 192.0.2.1}
---
apiVersion: metallb.io/v1beta2
kind: BGPPeer
metadata: {name: tor-b}
spec: {myASN: 64500, peerASN: 65000, peerAddress: 192.0.2.2, peerPort: 1179}
---
apiVersion: metallb.io/v1beta2
kind: BGPPeer
metadata: {name: other-as}
spec: {myASN: 64999, peerASN: 65000, peerAddress: 192.0.2.3}
---
apiVersion: metallb.io/v1beta2
kind: BGPPeer
metadata: {name: unnumbered}
spec: {myASN: 64500, dynamicASN: external, interface: eth0}
"""
    result = migrate(peers)
    assert result.agent_bgp is not None
    assert result.agent_bgp.asn == 64500
    assert [str(p.address) for p in result.agent_bgp.peers] == ["192.0.2.1", "192.0.2.2"]
    assert "tor-a" in finding(result, "BGPPeer/tor-a-rack2", "spec.peerAddress").message
    assert finding(result, "BGPPeer/tor-b", "spec.peerPort").value == 1179
    assert "64500" in finding(result, "BGPPeer/other-as", "spec.myASN").message
    assert finding(result, "BGPPeer/unnumbered", "spec.interface").effect == "ignored"
    assert all(item.ref.name != "tor-a" or item.field != "spec.peerPort" for item in result.report)


def test_v1beta1_peer_and_its_timers() -> None:
    peer = """\
apiVersion: metallb.io/v1beta1
kind: BGPPeer
metadata: {name: old}
spec:
  myASN: 64512
  peerASN: 64512
  peerAddress: 172.30.0.3
  sourceAddress: 172.30.0.10
  holdTime: 1m30s
  keepaliveTime: 10s
  vrf: red
  passwordSecret: {name: bgp-secret, namespace: metallb-system}
  nodeSelectors:
  - matchExpressions: [{key: kubernetes.io/hostname, operator: In, values: [hostA]}]
"""
    result = migrate(peer)
    assert result.agent_bgp is not None
    assert result.agent_bgp.peers[0].hold_time == 90
    for field, effect in [
        ("spec.keepaliveTime", "ignored"),
        ("spec.vrf", "ignored"),
        ("spec.passwordSecret", "ignored"),
        ("spec.sourceAddress", "changed"),
    ]:
        assert finding(result, "BGPPeer/old", field).effect == effect


@pytest.mark.parametrize(
    ("text", "written", "note"),
    [
        ("192.168.1.5/24", "192.168.1.0/24", "host bits"),
        ("192.168.1.10 - 192.168.1.20", "192.168.1.10-192.168.1.20", None),
        ("2001:db8::1:0/126", "2001:db8::1:0/126", "all-zeros"),
        ("2001:db8::/127", "2001:db8::/127", None),
    ],
)
def test_address_blocks(text: str, written: str, note: str | None) -> None:
    result = migrate(L2.replace("192.168.1.240-192.168.1.250", f'"{text}"'))
    assert pools_of(result)["first-pool"].addresses == [written]
    notes = [f.message for f in result.report if f.field == "spec.addresses.0"]
    assert (note is None and not notes) or (note is not None and note in notes[0])


def test_advertisement_naming_an_absent_pool() -> None:
    text = L2.replace("  - first-pool", "  - first-pool\n  - gone")
    assert (
        finding(migrate(text), "L2Advertisement/example", "spec.ipAddressPools.1").value == "gone"
    )


def test_community_and_duration_parsing() -> None:
    assert community("65535:65282") == ("standard", "65535:65282")
    assert community("large:4200000000:1:02") == ("large", "4200000000:1:2")
    for bad in ("65536:1", "large:1:2", "no-export", "1:2:3", "٣:1"):
        assert community(bad) is None
    assert [duration_seconds(t) for t in ("90s", "1m30s", "2.5s", "0", "1h", "500ms")] == [
        90,
        90,
        2,
        0,
        3600,
        0,
    ]
    assert duration_seconds("90") is None
    assert duration_seconds("s") is None


# -- bad input ---------------------------------------------------------------------------------

LEGACY_NO_PROTOCOL = LEGACY.replace("      protocol: layer2\n", "")
LEGACY_BAD_NAME = LEGACY.replace("name: bgp-pool", "name: BGP Pool")
LEGACY_L2_WITH_BGP = LEGACY.replace(
    "      avoid-buggy-ips: true\n", "      bgp-advertisements: [{localpref: 1}]\n"
)
LEGACY_BAD_CONFIG = LEGACY.replace("  config: |\n", "  config: |\n    [oops\n")
SECOND_POOL = L2_POOL.replace("240-192.168.1.250", "250/32")
BAD_SELECTOR = {"ipAddressPoolSelectors": [{"matchExpressions": [{"key": "a", "operator": "L"}]}]}
ADDRESSES_0 = "IPAddressPool/p spec.addresses.0"
LEGACY_POOLS = "ConfigMap/config data.config.address-pools"


@pytest.mark.parametrize(
    ("text", "field", "words"),
    [
        (pool({"addresses": ["192.168.1.300/24"]}), ADDRESSES_0, "CIDR"),
        (pool({"addresses": ["10.0.0.1"]}), ADDRESSES_0, "single address"),
        (pool({"addresses": ["10.0.0.9-10.0.0.1"]}), ADDRESSES_0, "ends before"),
        (pool({"addresses": ["10.0.0.1-2001:db8::1"]}), ADDRESSES_0, "mixes"),
        (pool({"addresses": ["127.0.0.0/30"]}), ADDRESSES_0, "loopback"),
        (pool({"addresses": []}), "IPAddressPool/p spec.addresses", "CIDR"),
        (pool({"addresses": "192.0.2.0/28"}), "IPAddressPool/p spec.addresses", "a list"),
        (
            pool({"addresses": ["192.0.2.0/28"], "autoAssign": "yes"}),
            "IPAddressPool/p spec.autoAssign",
            "true or false",
        ),
        (pool(["192.0.2.0/28"]), "IPAddressPool/p spec", "mapping"),
        (
            doc("Ingress", "web", api="networking.k8s.io/v1"),
            "Ingress/web kind",
            "not a MetalLB kind",
        ),
        (doc("AddressPool", "a"), "AddressPool/a kind", "IPAddressPool in 0.13"),
        (
            doc("IPAddressPool", "p", {}, "metallb.io/v1alpha1"),
            "IPAddressPool/p apiVersion",
            "v1beta1",
        ),
        (doc("IPAddressPool", None, {}), "IPAddressPool/(document 1) metadata.name", "missing"),
        ("just text", "(document 1)", "no kind"),
        ("kind: List\nitems: {a: 1}", "(document 1).items", "a list"),
        (
            doc("BGPAdvertisement", "b", {"communities": ["NO_EXPORT"]}),
            "BGPAdvertisement/b spec.communities.0",
            "alias",
        ),
        (
            doc("BGPAdvertisement", "b", {"localPref": -1}),
            "BGPAdvertisement/b spec.localPref",
            "0-",
        ),
        (
            doc("Community", "c", {"communities": [{"name": "x", "value": "1"}]}),
            "Community/c spec.communities.0.value",
            "not a community",
        ),
        (peer(holdTime="2s"), "BGPPeer/r spec.holdTime", "hold_time"),
        (peer(holdTime="ninety"), "BGPPeer/r spec.holdTime", "duration"),
        (peer(peerAddress="router.lan"), "BGPPeer/r spec.peerAddress", "address"),
        (peer(myASN=0), "BGPPeer/r spec.myASN", "AS number"),
        (peer(peerASN=None), "BGPPeer/r spec.peerASN", "missing"),
        (
            doc("L2Advertisement", "l", BAD_SELECTOR),
            "L2Advertisement/l spec.ipAddressPoolSelectors.0.matchExpressions.0.operator",
            "In, NotIn",
        ),
        (LEGACY_NO_PROTOCOL, f"{LEGACY_POOLS}.0.protocol", "layer2 or bgp"),
        (LEGACY_BAD_NAME, f"{LEGACY_POOLS}.1.name", "rename the pool"),
        (LEGACY_L2_WITH_BGP, f"{LEGACY_POOLS}.0.bgp-advertisements", "layer2"),
        (LEGACY_BAD_CONFIG, "ConfigMap/config data.config", "not valid YAML"),
        (L2 + "---\n" + SECOND_POOL, "IPAddressPool/first-pool metadata.name", "twice"),
    ],
)
def test_bad_input_names_the_field(text: str, field: str, words: str) -> None:
    errors = errors_of(text)
    matching = [e for e in errors if e["field"] == field]
    assert matching, errors
    assert words in matching[0]["message"], matching[0]
    assert matching[0]["file"] == "in0.yaml"


def test_overlapping_pools_are_refused() -> None:
    other = L2_POOL.replace("first-pool", "second").replace("240-", "245-")
    errors = errors_of(L2, other)
    assert errors[0]["field"] == "IPAddressPool/second spec.addresses"
    assert errors[0]["file"] == "in1.yaml"
    assert "overlaps" in errors[0]["message"]


def test_every_problem_is_listed_at_once() -> None:
    text = pool({"addresses": ["nonsense", "10.0.0.1"]}) + "---\n" + doc("Secret", "s", api="v1")
    fields = {e["field"] for e in errors_of(text)}
    assert fields == {ADDRESSES_0, "IPAddressPool/p spec.addresses.1", "Secret/s kind"}


# -- the command -------------------------------------------------------------------------------


def run(*args: str, stdin: str | None = None) -> Result:
    runner = CliRunner(env={"RAFTLB_API": None, "RAFTLB_TOKEN_FILE": None})
    return runner.invoke(cli, list(args), input=stdin, catch_exceptions=False)


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def agent_config(snippet: dict[str, Any], pools: list[Any]) -> dict[str, Any]:
    return {
        "node_id": "n1",
        "raft": {
            "address": "192.0.2.11:7001",
            "password_file": "/etc/raftlb/raft-password",
            "peers": [{"id": "n1", "address": "192.0.2.11:7001"}],
        },
        "data_dir": "/var/lib/raftlb",
        "api": {"listen": "0.0.0.0:8080", "token_file": "/etc/raftlb/api-token"},
        "data_interface": "eth1",
        **snippet,
        "pools": pools,
    }


@pytest.mark.parametrize("sample", [L2, BGP, ADVANCED, SELECTORS, KUBECTL, LEGACY])
def test_human_output_is_a_pools_file_and_an_agent_snippet(tmp_path: Path, sample: str) -> None:
    result = run("migrate", "metallb", "-f", write(tmp_path, "metallb.yaml", sample))
    assert result.exit_code == 0, result.output
    out = write(tmp_path, "pools.yaml", result.stdout)
    pools = parse_document(read_document(out), POOLS)  # what `raftlb pools apply -f` reads
    assert pools == migrate(sample).pools
    lines = result.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("# For the agent.yaml"))
    snippet_lines = []
    for line in lines[start + 1 :]:
        if not line.startswith("#   "):
            break
        snippet_lines.append(line.removeprefix("#   "))
    snippet = yaml.safe_load("\n".join(snippet_lines))
    data = agent_config(snippet, [p.model_dump(mode="json") for p in pools])
    if "bgp" in snippet["announce"] and "bgp" not in snippet:
        # No BGPPeer in the input: the report says agent.yaml needs them, and so does the agent.
        with pytest.raises(ConfigError) as info:
            parse_config(data)
        assert [e["field"] for e in info.value.errors] == ["bgp"]
    else:
        assert parse_config(data).pools == pools
    assert "# Report:" in result.stdout


def test_human_report_names_file_object_and_field(tmp_path: Path) -> None:
    path = write(tmp_path, "metallb.yaml", ADVANCED)
    out = run("migrate", "metallb", "-f", path).stdout.replace("\n#     ", " ")
    assert (
        f"# {path}: BGPPeer/peer-sample1 spec.bfdProfile: ignored: raftlb sets BFD per agent" in out
    )
    assert "example-password" not in out


@pytest.mark.parametrize("global_flag", [False, True])
def test_json_output(tmp_path: Path, global_flag: bool) -> None:
    no_hold = BGP_PEER.replace("  holdTime: 90s\n", "")
    one, two = write(tmp_path, "pools.yaml", L2), write(tmp_path, "peer.yaml", no_hold)
    args = ["migrate", "metallb", "-f", one, "-f", two]
    result = run(*(["--json", *args] if global_flag else [*args, "--json"]))
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert set(data) == {"pools", "agent_bgp", "report"}
    assert [p["name"] for p in data["pools"]] == ["first-pool"]
    assert BgpConfig.model_validate(data["agent_bgp"]).asn == 64500
    assert {r["file"] for r in data["report"]} == {two}
    assert set(data["report"][0]) == {"file", "kind", "name", "field", "value", "effect", "message"}


def test_stdin(tmp_path: Path) -> None:
    result = run("migrate", "metallb", "-f", "-", stdin=LEGACY)
    assert result.exit_code == 0
    assert "name: bgp-pool" in result.stdout


def test_bad_input_exits_2_and_prints_nothing_else(tmp_path: Path) -> None:
    good = write(tmp_path, "good.yaml", L2)
    bad = write(tmp_path, "bad.yaml", pool({"addresses": ["192.168.1.300/24"]}))
    result = run("migrate", "metallb", "-f", good, "-f", bad)
    assert result.exit_code == 2
    assert result.stdout == ""
    assert f"{bad}: IPAddressPool/p spec.addresses.0: not a CIDR" in result.stderr


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("kind: IPAddressPool\nmetadata: {name: [\n", "not valid YAML: line 3"),
        ("a: &x 1\nb: *x\n", "alias"),
        ("a: 1\na: 2\n", "given twice"),
    ],
)
def test_unreadable_file_exits_2(tmp_path: Path, text: str, words: str) -> None:
    path = write(tmp_path, "metallb.yaml", text)
    result = run("migrate", "metallb", "-f", path)
    assert result.exit_code == 2
    assert result.stdout == ""
    assert f"{path}: error:" in result.stderr
    assert words in result.stderr


def test_bad_input_with_json_prints_the_error_object(tmp_path: Path) -> None:
    path = write(tmp_path, "bad.yaml", "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\n")
    missing = str(tmp_path / "missing.yaml")
    result = run("migrate", "metallb", "-f", path, "-f", missing, "--json")
    assert result.exit_code == 2
    error = json.loads(result.stdout)["error"]
    assert error["code"] == "invalid"
    fields = {(f["file"], f["field"].split(": ", 1)[1]) for f in error["fields"]}
    assert fields == {(missing, "(file)"), (path, "Secret/s kind")}
