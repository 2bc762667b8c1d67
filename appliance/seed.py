"""First-boot seeds of appliance VMs: one cluster file in, one NoCloud seed per node out.

A seed is what cloud-init reads on a VM's first boot (`meta-data`, `user-data`,
`network-config`, on a disk labelled `cidata`): the node's addresses, its agent config, the
cluster's shared secrets, the API's TLS certificate, the operators' SSH keys and, optionally,
the k8s-sync settings and a data disk for /var/lib/raftlb. The image itself holds no secret.

Everything here is pure: `render_node` turns a validated `ClusterSeed` and the cluster's
`SeedSecrets` into file contents; each node's agent config is validated with the agent's own
model before anything is written, so a seed that renders is a config the agent accepts.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from appliance.config import ConfigError, parse_config, segment_errors
from appliance.model import Name, field_errors
from appliance.tls import Pem

ETC = "/etc/raftlb"
PASSWORD_FILE = f"{ETC}/secrets/raft-password"
TOKEN_FILE = f"{ETC}/secrets/api-token"
CA_FILE = f"{ETC}/tls/ca.pem"
CERT_FILE = f"{ETC}/tls/node.pem"
KEY_FILE = f"{ETC}/tls/node-key.pem"
KUBECONFIG_FILE = f"{ETC}/kubeconfig"
K8S_ENV_FILE = f"{ETC}/k8s-sync.env"
DATA_LABEL = "raftlb-data"
# Set by the seed, never by the cluster file's `agent:` section.
OWNED_KEYS = ("node_id", "raft", "data_dir", "data_interface")
Interface = ipaddress.IPv4Interface | ipaddress.IPv6Interface


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SeedNode(_Strict):
    id: Name
    addresses: list[Interface] = Field(
        min_length=1, description="address/prefix on the interface; the first one carries Raft"
    )


class SeedNetwork(_Strict):
    interface: str = Field(default="eth0", min_length=1, max_length=15)
    gateway4: ipaddress.IPv4Address | None = None
    gateway6: ipaddress.IPv6Address | None = None
    dns: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = Field(default_factory=list)
    search: list[str] = Field(default_factory=list)
    mtu: int | None = Field(default=None, ge=576, le=9216)


class SeedKubernetes(_Strict):
    cluster_name: Name
    kubeconfig: str = Field(min_length=1, description="the kubeconfig's text (not a path)")
    backends: Literal["nodes", "pods"] = "nodes"
    load_balancer_class: str = "raftlb.io/lb"


class ClusterSeed(_Strict):
    name: Name
    nodes: list[SeedNode] = Field(min_length=1)
    network: SeedNetwork = Field(default_factory=SeedNetwork)
    raft_port: int = Field(default=7001, ge=1, le=65535)
    api_port: int = Field(default=8080, ge=1, le=65535)
    ssh_authorized_keys: list[str] = Field(default_factory=list)
    ntp: list[str] = Field(default_factory=list)
    data_disk: str | None = Field(
        default=None, pattern=r"^/dev/\S+$", description="a disk for /var/lib/raftlb (upgrades)"
    )
    agent: dict[str, Any] = Field(
        default_factory=dict, description="merged into every node's agent config"
    )
    kubernetes: SeedKubernetes | None = None

    @model_validator(mode="after")
    def _consistent(self) -> ClusterSeed:
        ids = [n.id for n in self.nodes]
        if len(set(ids)) != len(ids):
            raise ValueError(f"nodes: duplicate node ids in {ids}")
        first = [str(n.addresses[0].ip) for n in self.nodes]
        if len(set(first)) != len(first):
            raise ValueError(f"nodes: two nodes share an address in {first}")
        owned = [k for k in OWNED_KEYS if k in self.agent]
        if owned:
            raise ValueError(f"agent: {', '.join(owned)} are set by the seed for each node")
        return self


class SeedError(Exception):
    """The cluster file cannot make seeds: every problem as {field, value, message}."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__(f"{len(errors)} error(s)")
        self.errors = errors


@dataclass(frozen=True)
class SeedSecrets:
    raft_password: str
    api_token: str
    ca: Pem
    node_certs: dict[str, Pem]


def parse_seed(data: Any) -> ClusterSeed:
    if not isinstance(data, dict):
        raise SeedError(
            [{"field": "(root)", "value": type(data).__name__, "message": "must be a mapping"}]
        )
    try:
        return ClusterSeed.model_validate(data)
    except ValidationError as exc:
        raise SeedError(field_errors(exc)) from None


def _host_port(address: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int) -> str:
    return f"[{address}]:{port}" if address.version == 6 else f"{address}:{port}"


def agent_config(seed: ClusterSeed, node: SeedNode) -> dict[str, Any]:
    """The agent config (as YAML data) of one node; raise SeedError if the agent refuses it."""
    peers = [
        {"id": n.id, "address": _host_port(n.addresses[0].ip, seed.raft_port)} for n in seed.nodes
    ]
    address = node.addresses[0].ip
    api_url_host = f"[{address}]" if address.version == 6 else str(address)
    api = {
        "listen": _host_port(
            ipaddress.ip_address("::" if address.version == 6 else "0.0.0.0"), seed.api_port
        ),
        "token_file": TOKEN_FILE,
        "tls": {"cert_file": CERT_FILE, "key_file": KEY_FILE},
        "url": f"https://{api_url_host}:{seed.api_port}",
        **seed.agent.get("api", {}),
    }
    data: dict[str, Any] = {
        "node_id": node.id,
        "raft": {
            "address": _host_port(address, seed.raft_port),
            "peers": peers,
            "password_file": PASSWORD_FILE,
        },
        "data_dir": "/var/lib/raftlb",
        "data_interface": seed.network.interface,
        "announce": "l2",
        "timing": "fast",
        **{k: v for k, v in seed.agent.items() if k != "api"},
        "api": api,
    }
    try:
        config = parse_config(data, f"node {node.id}")
        errors = []
        if config.announces_l2:
            # What `raftlb config check` will find on the VM: refuse it now, not at first boot.
            networks = [a.network for a in node.addresses]
            errors = segment_errors(config.pools, networks, seed.network.interface)
        if errors:
            raise ConfigError(f"node {node.id}", errors)
    except ConfigError as exc:
        raise SeedError(
            [{**e, "field": f"agent (node {node.id}): {e['field']}"} for e in exc.errors]
        ) from None
    return data


def check_nodes(seed: ClusterSeed) -> None:
    """Raise SeedError with the problems of every node's agent config (not only the first)."""
    errors = []
    for node in seed.nodes:
        try:
            agent_config(seed, node)
        except SeedError as exc:
            errors += exc.errors
    if errors:
        raise SeedError(errors)


def network_config(seed: ClusterSeed, node: SeedNode) -> dict[str, Any]:
    """cloud-init network config v2 for the node's interface: static addresses, no DHCP."""
    net = seed.network
    eth: dict[str, Any] = {
        "dhcp4": False,
        "dhcp6": False,
        "accept-ra": False,
        "addresses": [str(a) for a in node.addresses],
    }
    routes = [
        {"to": "0.0.0.0/0" if gw.version == 4 else "::/0", "via": str(gw)}
        for gw in (net.gateway4, net.gateway6)
        if gw is not None
    ]
    if routes:
        eth["routes"] = routes
    if net.dns or net.search:
        eth["nameservers"] = {"addresses": [str(a) for a in net.dns], "search": net.search}
    if net.mtu:
        eth["mtu"] = net.mtu
    return {"version": 2, "ethernets": {net.interface: eth}}


def _file(path: str, content: str, mode: str = "0640") -> dict[str, Any]:
    return {"path": path, "content": content, "owner": "root:raftlb", "permissions": mode}


def user_data(seed: ClusterSeed, node: SeedNode, secrets: SeedSecrets) -> dict[str, Any]:
    cert = secrets.node_certs[node.id]
    files = [
        _file(f"{ETC}/agent.yaml", _dump(agent_config(seed, node))),
        _file(PASSWORD_FILE, secrets.raft_password + "\n"),
        _file(TOKEN_FILE, secrets.api_token + "\n"),
        _file(CA_FILE, secrets.ca.cert, "0644"),
        _file(CERT_FILE, cert.cert, "0644"),
        _file(KEY_FILE, cert.key),
    ]
    k8s = seed.kubernetes
    if k8s is not None:
        env = {
            "RAFTLB_CLUSTER_NAME": k8s.cluster_name,
            "RAFTLB_KUBECONFIG": KUBECONFIG_FILE,
            "RAFTLB_API": f"https://127.0.0.1:{seed.api_port}",
            "RAFTLB_TOKEN_FILE": TOKEN_FILE,
            "RAFTLB_CA_FILE": CA_FILE,
            "RAFTLB_BACKENDS": k8s.backends,
            "RAFTLB_CLASS": k8s.load_balancer_class,
            "RAFTLB_LISTEN": "127.0.0.1:9090",
        }
        files.append(_file(KUBECONFIG_FILE, k8s.kubeconfig))
        files.append(_file(K8S_ENV_FILE, "".join(f"{k}={v}\n" for k, v in env.items())))
    out: dict[str, Any] = {
        "hostname": node.id,
        "preserve_hostname": False,
        "manage_etc_hosts": True,
        "write_files": files,
    }
    if seed.ssh_authorized_keys:
        out["ssh_authorized_keys"] = seed.ssh_authorized_keys
    if seed.ntp:
        out["ntp"] = {"enabled": True, "ntp_client": "systemd-timesyncd", "servers": seed.ntp}
    if seed.data_disk:
        # Formatted only if blank (overwrite: false); the Raft journal and vote live there, so a
        # node whose system disk is replaced by a newer image keeps its place in the cluster.
        out["fs_setup"] = [
            {
                "label": DATA_LABEL,
                "filesystem": "ext4",
                "device": seed.data_disk,
                "overwrite": False,
            }
        ]
        out["mounts"] = [
            [f"LABEL={DATA_LABEL}", "/var/lib/raftlb", "ext4", "defaults,nofail", "0", "2"]
        ]
    return out


class _SeedDumper(yaml.SafeDumper):
    """Multi-line strings (configs, certificates) as literal blocks: a seed stays readable."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_SeedDumper.add_representer(str, _str)


def _dump(data: Any) -> str:
    return yaml.dump(data, Dumper=_SeedDumper, sort_keys=False)


def render_node(seed: ClusterSeed, node: SeedNode, secrets: SeedSecrets) -> dict[str, str]:
    """The NoCloud files of one node, by file name."""
    header = (
        f"#cloud-config\n# raftlb seed of node {node.id} in cluster {seed.name} (raftlb seed).\n"
        "# It holds the cluster's secrets: keep it as private as they are.\n"
    )
    return {
        "meta-data": _dump(
            {"instance-id": f"raftlb-{seed.name}-{node.id}", "local-hostname": node.id}
        ),
        "user-data": header + _dump(user_data(seed, node, secrets)),
        "network-config": _dump(network_config(seed, node)),
    }
