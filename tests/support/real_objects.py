"""Services, EndpointSlices and Nodes as a real API server (v1.30) returns them.

`kubectl get -o json` of a kubeadm cluster with MetalLB, trimmed of nothing the sync could trip
on: managedFields, defaulted fields (`clusterIPs`, `ipFamilyPolicy`, `internalTrafficPolicy`,
`sessionAffinity: None`, `allocateLoadBalancerNodePorts`), `null` lists where the server writes
them (an EndpointSlice with no endpoints), unnamed ports ("" in a slice, absent in a Service),
node conditions of every type with their reasons, taints with `timeAdded`, `targetRef` and
`zone` on endpoints. Each builder returns a fresh copy to change.
"""

from __future__ import annotations

import copy
from typing import Any

CREATED = "2026-11-30T09:12:44Z"


def _managed(
    manager: str, fields: dict[str, Any], subresource: str | None = None
) -> dict[str, Any]:
    entry = {
        "apiVersion": "v1",
        "fieldsType": "FieldsV1",
        "fieldsV1": fields,
        "manager": manager,
        "operation": "Update",
        "time": CREATED,
    }
    if subresource:
        entry["subresource"] = subresource
    return entry


_SERVICE: dict[str, Any] = {
    "apiVersion": "v1",
    "kind": "Service",
    "metadata": {
        "annotations": {
            "kubectl.kubernetes.io/last-applied-configuration": (
                '{"apiVersion":"v1","kind":"Service","metadata":{"annotations":{},"name":"web",'
                '"namespace":"shop"},"spec":{"ports":[{"name":"http","port":80,'
                '"targetPort":8080}],"selector":{"app":"web"},"type":"LoadBalancer"}}\n'
            )
        },
        "creationTimestamp": CREATED,
        "labels": {"app": "web"},
        "managedFields": [
            _managed(
                "kubectl-client-side-apply",
                {"f:spec": {"f:ports": {'k:{"port":80,"protocol":"TCP"}': {".": {}}}}},
            ),
            _managed(
                "metallb-controller",
                {"f:status": {"f:loadBalancer": {"f:ingress": {}}}},
                subresource="status",
            ),
        ],
        "name": "web",
        "namespace": "shop",
        "resourceVersion": "48213",
        "uid": "0b6c3f2e-6f1d-4c8e-9d0a-5b7f1e2a9c41",
    },
    "spec": {
        "allocateLoadBalancerNodePorts": True,
        "clusterIP": "10.96.14.7",
        "clusterIPs": ["10.96.14.7"],
        "externalTrafficPolicy": "Cluster",
        "internalTrafficPolicy": "Cluster",
        "ipFamilies": ["IPv4"],
        "ipFamilyPolicy": "SingleStack",
        "loadBalancerClass": "raftlb.io/lb",
        "ports": [
            {"name": "http", "nodePort": 31380, "port": 80, "protocol": "TCP", "targetPort": 8080}
        ],
        "selector": {"app": "web"},
        "sessionAffinity": "None",
        "type": "LoadBalancer",
    },
    "status": {"loadBalancer": {}},
}


def service(**spec: Any) -> dict[str, Any]:
    """The Service `shop/web`, its spec updated with `spec` (a None value removes the key)."""
    out = copy.deepcopy(_SERVICE)
    for key, value in spec.items():
        if value is None:
            out["spec"].pop(key, None)
        else:
            out["spec"][key] = value
    return out


def metallb_service(ip: str = "192.0.2.40", **spec: Any) -> dict[str, Any]:
    """A Service MetalLB has served: no class, its address in the status."""
    out = service(loadBalancerClass=None, **spec)
    out["status"] = {"loadBalancer": {"ingress": [{"ip": ip, "ipMode": "VIP"}]}}
    return out


def endpoint(
    address: str, node: str, ready: bool = True, terminating: bool = False
) -> dict[str, Any]:
    return {
        "addresses": [address],
        "conditions": {"ready": ready, "serving": ready or terminating, "terminating": terminating},
        "nodeName": node,
        "targetRef": {
            "kind": "Pod",
            "name": f"web-7d4b9c6f5-{node}",
            "namespace": "shop",
            "uid": f"5f0e1c7a-0000-4000-8000-{address.encode().hex()[-12:]:0>12}",
        },
        "zone": "zone-a",
    }


def endpoint_slice(
    endpoints: list[dict[str, Any]] | None,
    address_type: str = "IPv4",
    port_name: str | None = "http",
    name: str = "web-x7k2p",
) -> dict[str, Any]:
    """A slice of `shop/web` as the EndpointSlice controller writes it; `endpoints=None` is how
    the server returns a slice with none (`"endpoints": null`)."""
    return {
        "addressType": address_type,
        "apiVersion": "discovery.k8s.io/v1",
        "endpoints": copy.deepcopy(endpoints),
        "kind": "EndpointSlice",
        "metadata": {
            "annotations": {"endpoints.kubernetes.io/last-change-trigger-time": CREATED},
            "creationTimestamp": CREATED,
            "generateName": "web-",
            "generation": 3,
            "labels": {
                "app": "web",
                "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
                "kubernetes.io/service-name": "web",
            },
            "managedFields": [_managed("kube-controller-manager", {"f:endpoints": {}})],
            "name": name,
            "namespace": "shop",
            "ownerReferences": [
                {
                    "apiVersion": "v1",
                    "blockOwnerDeletion": True,
                    "controller": True,
                    "kind": "Service",
                    "name": "web",
                    "uid": _SERVICE["metadata"]["uid"],
                }
            ],
            "resourceVersion": "48377",
            "uid": "9a1d2b3c-4e5f-4a6b-8c7d-0e1f2a3b4c5d",
        },
        "ports": [{"name": port_name or "", "port": 8080, "protocol": "TCP"}],
    }


def _condition(kind: str, status: str, reason: str, message: str) -> dict[str, Any]:
    return {
        "lastHeartbeatTime": CREATED,
        "lastTransitionTime": CREATED,
        "message": message,
        "reason": reason,
        "status": status,
        "type": kind,
    }


def node(
    name: str,
    ipv4: str,
    ipv6: str | None = None,
    ready: str = "True",
    taints: list[dict[str, Any]] | None = None,
    labels: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A kubelet's Node. `ready` "Unknown" is what the node lifecycle controller writes when the
    kubelet stops posting (with its unreachable taint)."""
    addresses = [{"address": ipv4, "type": "InternalIP"}]
    if ipv6:
        addresses.append({"address": ipv6, "type": "InternalIP"})
    addresses.append({"address": name, "type": "Hostname"})
    ready_condition = {
        "True": _condition("Ready", "True", "KubeletReady", "kubelet is posting ready status"),
        "False": _condition("Ready", "False", "KubeletNotReady", "container runtime is down"),
        "Unknown": _condition(
            "Ready", "Unknown", "NodeStatusUnknown", "Kubelet stopped posting node status."
        ),
    }[ready]
    all_taints = list(taints or [])
    if ready == "Unknown":
        all_taints.append(
            {"effect": "NoSchedule", "key": "node.kubernetes.io/unreachable", "timeAdded": CREATED}
        )
    spec: dict[str, Any] = {"podCIDR": "10.244.1.0/24", "podCIDRs": ["10.244.1.0/24"]}
    if all_taints:
        spec["taints"] = all_taints
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "annotations": {
                "kubeadm.alpha.kubernetes.io/cri-socket": "unix:///run/containerd/containerd.sock",
                "node.alpha.kubernetes.io/ttl": "0",
                "volumes.kubernetes.io/controller-managed-attach-detach": "true",
            },
            "creationTimestamp": CREATED,
            "labels": {
                "beta.kubernetes.io/arch": "amd64",
                "kubernetes.io/arch": "amd64",
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                **(labels or {}),
            },
            "managedFields": [_managed("kubelet", {"f:status": {"f:conditions": {}}}, "status")],
            "name": name,
            "resourceVersion": "51002",
            "uid": f"c0ffee00-0000-4000-8000-{name.encode().hex()[:12]:0>12}",
        },
        "spec": spec,
        "status": {
            "addresses": addresses,
            "allocatable": {"cpu": "2", "memory": "3917580Ki", "pods": "110"},
            "capacity": {"cpu": "2", "memory": "4019980Ki", "pods": "110"},
            "conditions": [
                _condition("MemoryPressure", "False", "KubeletHasSufficientMemory", "ok"),
                _condition("DiskPressure", "False", "KubeletHasNoDiskPressure", "ok"),
                _condition("PIDPressure", "False", "KubeletHasSufficientPID", "ok"),
                ready_condition,
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            "images": [{"names": ["registry.k8s.io/pause:3.9"], "sizeBytes": 321520}],
            "nodeInfo": {
                "architecture": "amd64",
                "containerRuntimeVersion": "containerd://1.7.22",
                "kernelVersion": "6.1.0-27-amd64",
                "kubeProxyVersion": "v1.30.6",
                "kubeletVersion": "v1.30.6",
                "operatingSystem": "linux",
                "osImage": "Debian GNU/Linux 12 (bookworm)",
            },
        },
    }


AUTOSCALER_TAINT = {
    "effect": "NoSchedule",
    "key": "ToBeDeletedByClusterAutoscaler",
    "value": "1732957412",
}
