"""Kubernetes objects to the appliance's ServiceSpecs. Pure: plain dicts (the API's JSON) in.

A Service of type LoadBalancer with raftlb's `spec.loadBalancerClass` (or, if configured, with
no class) becomes one ServiceSpec per IP family (`ipFamilies`; dual-stack gives two), with id
`<cluster>/<namespace>/<name>:<family>`, so several clusters share one appliance and a sync only
touches its own cluster's ids.

Backends (`backends="nodes"`, the default): for `externalTrafficPolicy: Cluster` every Ready node
not labelled `node.kubernetes.io/exclude-from-external-load-balancers` and not tainted
`ToBeDeletedByClusterAutoscaler` (being drained away, as the cloud service controller leaves
them out), at the port's nodePort; for `Local` only those nodes with an endpoint of the Service,
and the appliance probes `spec.healthCheckNodePort`. With `backends="pods"` (pods routable from
the appliance) the endpoints themselves, at the EndpointSlice's port of the same name. The
endpoints are the ready ones; when none is ready, the ones still serving while they terminate,
as kube-proxy falls back to them during a rollout.

Annotations: `raftlb.io/pool`, `raftlb.io/addresses` (comma-separated, one per family; also
`spec.loadBalancerIP`), `raftlb.io/sharing-key`, and MetalLB's for the same things
(`metallb.io/address-pool`, `metallb.io/loadBalancerIPs`, `metallb.io/allow-shared-ip`, also
spelled `metallb.universe.tf/...`), so Services written for MetalLB move unchanged. A bad one
(or two spellings that disagree, or an address of a family the Service does not have) raises
`TranslationError` naming the field and the value, and nothing of the Service is applied.

An address already in `status.loadBalancer.ingress` (written by MetalLB before a move, or by an
earlier appliance) is sent as `prefer_vip`: the appliance keeps it when it is free in the pool,
so a move keeps every Service's address without pinning any (see `raft.ipam`).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import ValidationError

from appliance.model import ServiceSpec, field_errors, not_unicast, parse_address

ANNOTATION_POOL = "raftlb.io/pool"
ANNOTATION_ADDRESSES = "raftlb.io/addresses"
ANNOTATION_SHARING = "raftlb.io/sharing-key"
# Each of ours and MetalLB's spellings of it, in the order they are read.
SPELLINGS = {
    ANNOTATION_POOL: (
        ANNOTATION_POOL,
        "metallb.io/address-pool",
        "metallb.universe.tf/address-pool",
    ),
    ANNOTATION_ADDRESSES: (
        ANNOTATION_ADDRESSES,
        "metallb.io/loadBalancerIPs",
        "metallb.universe.tf/loadBalancerIPs",
    ),
    ANNOTATION_SHARING: (
        ANNOTATION_SHARING,
        "metallb.io/allow-shared-ip",
        "metallb.universe.tf/allow-shared-ip",
    ),
}
EXCLUDE_LABEL = "node.kubernetes.io/exclude-from-external-load-balancers"
# The cluster autoscaler's taint on a node it is draining to delete.
TO_BE_DELETED_TAINT = "ToBeDeletedByClusterAutoscaler"
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
FAMILIES = {"IPv4": "ipv4", "IPv6": "ipv6"}


@dataclass(frozen=True)
class Options:
    cluster: str
    load_balancer_class: str = "raftlb.io/lb"
    include_unclassed: bool = False
    backends: Literal["nodes", "pods"] = "nodes"
    # Hold a Service's deletion until its VIP is released (see k8s_sync.syncer).
    finalizer: bool = True


class TranslationError(Exception):
    """The Service cannot be applied; `fields` name each problem's field and value."""

    def __init__(self, fields: list[dict[str, Any]]) -> None:
        self.fields = fields
        super().__init__("; ".join(f"{f['field']}={f['value']!r}: {f['message']}" for f in fields))


def _err(field: str, value: Any, message: str) -> dict[str, Any]:
    return {"field": field, "value": value, "message": message}


def wanted(service: Mapping[str, Any], options: Options) -> bool:
    """Whether this sync handles the Service at all."""
    spec = service.get("spec") or {}
    if spec.get("type") != "LoadBalancer":
        return False
    klass = spec.get("loadBalancerClass")
    return klass == options.load_balancer_class or (klass is None and options.include_unclassed)


def id_prefix(cluster: str, namespace: str, name: str) -> str:
    return f"{cluster}/{namespace}/{name}"


def service_id(cluster: str, namespace: str, name: str, family: str) -> str:
    return f"{id_prefix(cluster, namespace, name)}:{family}"


def _ready(conditions: Iterable[Mapping[str, Any]] | None) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions or ())


def node_address(node: Mapping[str, Any], family: str) -> str | None:
    """The node's InternalIP of `family` (ExternalIP when it has none)."""
    addresses = (node.get("status") or {}).get("addresses") or []
    for kind in ("InternalIP", "ExternalIP"):
        for entry in addresses:
            if entry.get("type") != kind:
                continue
            text = entry.get("address")
            if not isinstance(text, str) or "%" in text:
                continue
            try:
                address = ipaddress.ip_address(text)
            except ValueError:
                continue
            if not_unicast(address, backend=True) is not None:
                continue  # e.g. a link-local address: no backend, and no reason to fail
            if FAMILIES[f"IPv{address.version}"] == family:
                return str(address)
    return None


def usable_nodes(nodes: Iterable[Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
    """Ready nodes not excluded from external load balancers nor being deleted, by name."""
    out = {}
    for node in nodes:
        meta = node.get("metadata") or {}
        if EXCLUDE_LABEL in (meta.get("labels") or {}):
            continue
        if not _ready((node.get("status") or {}).get("conditions")):
            continue
        taints = (node.get("spec") or {}).get("taints") or []
        if any(isinstance(t, Mapping) and t.get("key") == TO_BE_DELETED_TAINT for t in taints):
            continue
        out[str(meta.get("name"))] = node
    return out


def ready_endpoints(
    slices: Iterable[Mapping[str, Any]],
) -> list[tuple[Mapping[str, Any], Mapping[str, Any]]]:
    """(slice, endpoint) pairs of the endpoints to send to: the ready ones (a missing `ready`
    counts as ready, as the API defines it) or, when none is ready, those still serving while
    they terminate (kube-proxy's fallback: a rollout's last old pods keep their traffic)."""
    ready, terminating = [], []
    for piece in slices:
        for endpoint in piece.get("endpoints") or []:
            conditions = endpoint.get("conditions") or {}
            is_ready = conditions.get("ready")
            if is_ready is None or is_ready:
                ready.append((piece, endpoint))
            elif conditions.get("serving") and conditions.get("terminating"):
                terminating.append((piece, endpoint))
    return ready or terminating


def _families(spec: Mapping[str, Any]) -> list[str]:
    found = spec.get("ipFamilies") or ["IPv4"]
    return [FAMILIES[f] for f in found if f in FAMILIES]


def _annotation(
    annotations: Mapping[str, Any], name: str, errors: list[dict[str, Any]]
) -> tuple[str, str | None]:
    """(field, value) of annotation `name` under whichever of its spellings is set (ours or
    MetalLB's); spellings that disagree are an error naming both."""
    found = [(key, annotations[key]) for key in SPELLINGS[name] if key in annotations]
    if not found:
        return f"metadata.annotations[{name}]", None
    key, value = found[0]
    field = f"metadata.annotations[{key}]"
    for other, other_value in found[1:]:
        if other_value != value:
            errors.append(
                _err(field, value, f"disagrees with metadata.annotations[{other}]={other_value!r}")
            )
    return field, value if isinstance(value, str) else str(value)


def _requested(
    service: Mapping[str, Any], families: list[str], errors: list[dict[str, Any]]
) -> dict[str, str]:
    """Requested VIP per family, from the annotation or spec.loadBalancerIP."""
    annotations = (service.get("metadata") or {}).get("annotations") or {}
    field, text = _annotation(annotations, ANNOTATION_ADDRESSES, errors)
    if text is None and (service.get("spec") or {}).get("loadBalancerIP"):
        field, text = "spec.loadBalancerIP", service["spec"]["loadBalancerIP"]
    out: dict[str, str] = {}
    for part in (text or "").split(","):
        if not part.strip():
            continue
        try:
            address = parse_address(part.strip())
        except ValueError as exc:
            errors.append(_err(field, text, f"{part.strip()!r}: {exc}"))
            continue
        kind = not_unicast(address)
        if kind is not None:
            errors.append(_err(field, text, f"{address} is {kind}, not a VIP"))
            continue
        family = FAMILIES[f"IPv{address.version}"]
        if family not in families:
            # Quietly giving an address of the other family would not be what was asked.
            errors.append(
                _err(
                    field,
                    text,
                    f"{address} is {family}, and spec.ipFamilies has only "
                    f"{', '.join(families) or 'none'}",
                )
            )
            continue
        if family in out:
            errors.append(_err(field, text, f"two {family} addresses"))
        out[family] = str(address)
    return out


def _shown(service: Mapping[str, Any]) -> dict[str, str]:
    """The addresses the Service's status shows, by family (the first of each). Whatever wrote
    them, a status is no input of the user's: what is no unicast address is passed over."""
    status = service.get("status") or {}
    found: dict[str, str] = {}
    for entry in (status.get("loadBalancer") or {}).get("ingress") or []:
        text = entry.get("ip") if isinstance(entry, Mapping) else None
        if not isinstance(text, str):
            continue  # a hostname (a cloud load balancer's), or nothing
        try:
            address = parse_address(text)
        except ValueError:
            continue
        if not_unicast(address) is None:
            found.setdefault(FAMILIES[f"IPv{address.version}"], str(address))
    return found


def translate(
    service: Mapping[str, Any],
    slices: Iterable[Mapping[str, Any]],
    nodes: Iterable[Mapping[str, Any]],
    options: Options,
) -> list[ServiceSpec]:
    """The ServiceSpecs of a wanted Service (one per IP family), or TranslationError."""
    meta = service.get("metadata") or {}
    spec = service.get("spec") or {}
    annotations = meta.get("annotations") or {}
    errors: list[dict[str, Any]] = []
    families = _families(spec)
    requested = _requested(service, families, errors)
    pool_field, pool = _annotation(annotations, ANNOTATION_POOL, errors)
    sharing_field, sharing = _annotation(annotations, ANNOTATION_SHARING, errors)
    local = spec.get("externalTrafficPolicy") == "Local"
    usable = usable_nodes(nodes)
    endpoints = ready_endpoints(slices)
    with_endpoint = {str(e.get("nodeName")) for _, e in endpoints if e.get("nodeName")}
    backend_nodes = {n: v for n, v in usable.items() if not local or n in with_endpoint}
    for i, port in enumerate(spec.get("ports") or []):
        if port.get("protocol", "TCP") not in ("TCP", "UDP"):
            errors.append(
                _err(f"spec.ports[{i}].protocol", port.get("protocol"), "only TCP and UDP")
            )
        if options.backends == "nodes" and not port.get("nodePort"):
            errors.append(
                _err(
                    f"spec.ports[{i}].nodePort",
                    port.get("nodePort"),
                    "no node port (allocateLoadBalancerNodePorts: false?): use pod backends",
                )
            )
    if errors:
        raise TranslationError(errors)
    out = []
    shown = _shown(service)
    for family in families:
        ports = []
        for port in spec.get("ports") or []:
            backends = _backends(port, family, backend_nodes, endpoints, options)
            ports.append(
                {
                    "name": port.get("name") or None,
                    "port": port.get("port"),
                    "protocol": str(port.get("protocol", "TCP")).lower(),
                    "backends": backends,
                }
            )
        body: dict[str, Any] = {
            "id": service_id(
                options.cluster, str(meta.get("namespace")), str(meta.get("name")), family
            ),
            "ip_family": family,
            "ports": ports,
            "traffic_policy": "local" if local else "cluster",
            "affinity": "source" if spec.get("sessionAffinity") == "ClientIP" else "consistent",
        }
        if family in requested:
            body["vip"] = requested[family]
        elif family in shown:
            body["prefer_vip"] = shown[family]
        if pool:
            body["pool"] = pool
        if sharing:
            body["sharing_key"] = f"{options.cluster}/{sharing}"
        if local and spec.get("healthCheckNodePort") and options.backends == "nodes":
            body["health_check_node_port"] = spec["healthCheckNodePort"]
        try:
            out.append(ServiceSpec.model_validate(body))
        except ValidationError as exc:
            sources = {
                "pool": pool_field,
                "sharing_key": sharing_field,
                "vip": _annotation(annotations, ANNOTATION_ADDRESSES, [])[0],
            }
            raise TranslationError([_annotated(e, sources) for e in field_errors(exc)]) from None
    return out


def _annotated(error: dict[str, Any], source: Mapping[str, str]) -> dict[str, Any]:
    """A ServiceSpec field error, named by the Kubernetes field it came from."""
    head = str(error.get("field", "")).split(".")[0]
    if head in source:
        return {**error, "field": source[head]}
    return error


def _backends(
    port: Mapping[str, Any],
    family: str,
    nodes: Mapping[str, Mapping[str, Any]],
    endpoints: list[tuple[Mapping[str, Any], Mapping[str, Any]]],
    options: Options,
) -> list[dict[str, Any]]:
    if options.backends == "nodes":
        out = []
        for name, node in sorted(nodes.items()):
            address = node_address(node, family)
            if address is not None:
                out.append({"address": address, "port": port["nodePort"], "node": name})
        return out
    seen = set()
    out = []
    for piece, endpoint in endpoints:
        if FAMILIES.get(str(piece.get("addressType"))) != family:
            continue
        number = next(
            (
                p.get("port")
                for p in piece.get("ports") or []
                # An unnamed port: no name in the Service, "" (or null) in the slice.
                if (p.get("name") or "") == (port.get("name") or "")
            ),
            None,
        )
        if number is None:
            continue
        for address in endpoint.get("addresses") or []:
            if (address, number) not in seen:
                seen.add((address, number))
                out.append({"address": address, "port": number, "node": endpoint.get("nodeName")})
    return out
