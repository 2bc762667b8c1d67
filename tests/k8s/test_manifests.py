"""The deployment manifests parse, and the sync's RBAC grants only what it uses."""

from __future__ import annotations

from pathlib import Path

import yaml

MANIFESTS = Path(__file__).resolve().parents[2] / "k8s_sync" / "deploy" / "raftlb-k8s-sync.yaml"


def test_rbac_is_least_privilege_and_the_deployment_probes_healthz() -> None:
    docs = {d["kind"]: d for d in yaml.safe_load_all(MANIFESTS.read_text())}
    rules = {
        (tuple(r["apiGroups"]), tuple(r["resources"])): set(r["verbs"])
        for r in docs["ClusterRole"]["rules"]
    }
    assert rules == {
        (("",), ("services", "nodes")): {"list", "watch"},
        (("",), ("services/status",)): {"patch"},
        (("",), ("services",)): {"patch"},  # the finalizer
        (("discovery.k8s.io",), ("endpointslices",)): {"list", "watch"},
        (("",), ("events",)): {"create", "patch"},  # patch: a repeated Event's count
    }
    container = docs["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    assert container["args"][0] == "k8s-sync" and "--in-cluster" in container["args"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/healthz"
