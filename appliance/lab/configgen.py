"""Generate the configs of a whole appliance cluster: secrets, per-node YAML, data dirs.

`cluster_config_data` is pure (ids and addresses in, config dicts out) so the loopback lab and the
namespace lab share it; `write_cluster` puts the files on disk with private permissions.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from appliance.secretfile import write_private


@dataclass(frozen=True)
class NodeAddresses:
    node_id: str
    raft: str  # host:port
    api: str  # host:port


@dataclass(frozen=True)
class GeneratedNode:
    node_id: str
    config_path: Path
    api_url: str
    log_path: Path


def cluster_config_data(
    nodes: list[NodeAddresses],
    base_dir: Path,
    password_file: Path,
    token_file: Path,
    timing: str = "fast",
    extra: dict[str, Any] | None = None,
    raft: dict[str, Any] | None = None,
) -> dict[str, dict[str, Any]]:
    """One agent config (as a dict ready for YAML) per node, all with the same peer list;
    `raft` adds settings to each node's raft section."""
    peers = [{"id": n.node_id, "address": n.raft} for n in nodes]
    out = {}
    for node in nodes:
        out[node.node_id] = {
            "node_id": node.node_id,
            "raft": {
                "address": node.raft,
                "peers": peers,
                "password_file": str(password_file),
                **(raft or {}),
            },
            "data_dir": str(base_dir / node.node_id / "data"),
            "api": {"listen": node.api, "token_file": str(token_file)},
            "announce": "none",
            # Agents of one host share its network namespace: they must not install rules.
            "forward": "none",
            "timing": timing,
            **(extra or {}),
        }
    return out


def write_secrets(base_dir: Path) -> tuple[Path, Path]:
    """Fresh Raft password and API token files (mode 0600); return their paths."""
    password_file = base_dir / "raft-password"
    token_file = base_dir / "api-token"
    write_private(password_file, secrets.token_hex(32) + "\n")
    write_private(token_file, secrets.token_hex(32) + "\n")
    return password_file, token_file


def write_cluster(
    nodes: list[NodeAddresses],
    base_dir: Path,
    timing: str = "fast",
    raft: dict[str, Any] | None = None,
) -> tuple[list[GeneratedNode], Path]:
    """Write fresh secrets and configs under base_dir; return the nodes and the token file."""
    base_dir.mkdir(parents=True, exist_ok=True)
    password_file, token_file = write_secrets(base_dir)
    data = cluster_config_data(nodes, base_dir, password_file, token_file, timing, raft=raft)
    out = []
    for node in nodes:
        path = base_dir / node.node_id / "agent.yaml"
        write_private(path, yaml.safe_dump(data[node.node_id], sort_keys=False))
        host, _, port = node.api.rpartition(":")
        out.append(
            GeneratedNode(
                node_id=node.node_id,
                config_path=path,
                api_url=f"http://{host}:{port}",
                log_path=base_dir / node.node_id / "agent.log",
            )
        )
    return out, token_file
