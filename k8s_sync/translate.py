"""Kubernetes objects to the appliance's ServiceSpecs. Pure: plain dicts (the API's JSON) in.

A Service of type LoadBalancer with raftlb's `spec.loadBalancerClass` (or, if configured, with
no class) becomes one ServiceSpec per IP family (`ipFamilies`; dual-stack gives two), with id
`<cluster>/<namespace>/<name>:<family>`, so several clusters share one appliance and a sync only
touches its own cluster's ids.

Backends (`backends="nodes"`, the default): for `externalTrafficPolicy: Cluster` every Ready node
not labelled `node.kubernetes.io/exclude-from-external-load-balancers`, at the port's nodePort;
for `Local` only the Ready, not excluded nodes with a ready endpoint of the Service, and the
appliance probes `spec.healthCheckNodePort`. With `backends="pods"` (pods routable from the
appliance) the ready endpoints themselves, at the EndpointSlice's port of the same name.

Annotations: `raftlb.io/pool`, `raftlb.io/addresses` (comma-separated, one per family; also
`spec.loadBalancerIP`), `raftlb.io/sharing-key`. A bad one raises `TranslationError` naming the
field and the value, and nothing of the Service is applied.
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
EXCLUDE_LABEL = "node.kubernetes.io/exclude-from-external-load-balancers"
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
FAMILIES = {"IPv4": "ipv4", "IPv6": "ipv6"}


@dataclass(frozen=True)
class Options:
    cluster: str
    load_balancer_class: str = "raftlb.io/lb"
    include_unclassed: bool = False
    backends: Literal["nodes", "pods"] = "nodes"


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
    """Ready nodes not excluded from external load balancers, by name."""
    out = {}
    for node in nodes:
        meta = node.get("metadata") or {}
        if EXCLUDE_LABEL in (meta.get("labels") or {}):
            continue
        if not _ready((node.get("status") or {}).get("conditions")):
            continue
        out[str(meta.get("name"))] = node
    return out


def ready_endpoints(
    slices: Iterable[Mapping[str, Any]],
) -> list[tuple[Mapping[str, Any], Mapping[str, Any]]]:
    """(slice, endpoint) pairs of ready endpoints (a missing `ready` counts as ready, as in
    the API's definition)."""
    out = []
    for piece in slices:
        for endpoint in piece.get("endpoints") or []:
            ready = (endpoint.get("conditions") or {}).get("ready")
            if ready is None or ready:
                out.append((piece, endpoint))
    return out


def _families(spec: Mapping[str, Any]) -> list[str]:
    found = spec.get("ipFamilies") or ["IPv4"]
    return [FAMILIES[f] for f in found if f in FAMILIES]


def _requested(service: Mapping[str, Any], errors: list[dict[str, Any]]) -> dict[str, str]:
    """Requested VIP per family, from the annotation or spec.loadBalancerIP."""
    annotations = (service.get("metadata") or {}).get("annotations") or {}
    field = f"metadata.annotations[{ANNOTATION_ADDRESSES}]"
    text = annotations.get(ANNOTATION_ADDRESSES)
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
        if family in out:
            errors.append(_err(field, text, f"two {family} addresses"))
        out[family] = str(address)
    return out


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
    requested = _requested(service, errors)
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
    for family in _families(spec):
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
            "affinity": "source" if spec.get("sessionAffinity") == "ClientIP" else "none",
        }
        if family in requested:
            body["vip"] = requested[family]
        if annotations.get(ANNOTATION_POOL):
            body["pool"] = annotations[ANNOTATION_POOL]
        if annotations.get(ANNOTATION_SHARING):
            body["sharing_key"] = f"{options.cluster}/{annotations[ANNOTATION_SHARING]}"
        if local and spec.get("healthCheckNodePort") and options.backends == "nodes":
            body["health_check_node_port"] = spec["healthCheckNodePort"]
        try:
            out.append(ServiceSpec.model_validate(body))
        except ValidationError as exc:
            raise TranslationError(
                [_annotated(e, annotations) for e in field_errors(exc)]
            ) from None
    return out


def _annotated(error: dict[str, Any], annotations: Mapping[str, Any]) -> dict[str, Any]:
    """A ServiceSpec field error, named by the Kubernetes field it came from."""
    source = {
        "pool": f"metadata.annotations[{ANNOTATION_POOL}]",
        "sharing_key": f"metadata.annotations[{ANNOTATION_SHARING}]",
        "vip": f"metadata.annotations[{ANNOTATION_ADDRESSES}]",
    }
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
                if p.get("name", "") == port.get("name", "")
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
