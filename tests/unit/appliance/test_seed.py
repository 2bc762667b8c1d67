"""First-boot seeds: the cluster file's checks, each node's files, the CA, the command."""

from __future__ import annotations

import io
import json
import socket
import ssl
import stat
import threading
from pathlib import Path
from typing import Any

import pycdlib
import pytest
import yaml
from click.testing import CliRunner

from appliance.cli.main import cli
from appliance.config import parse_config
from appliance.seed import ClusterSeed, SeedError, SeedSecrets, check_nodes, parse_seed, render_node
from appliance.tls import make_ca, make_node_cert

CLUSTER: dict[str, Any] = {
    "name": "prod",
    "network": {"interface": "eth1", "gateway4": "192.0.2.1", "dns": ["192.0.2.53"]},
    "nodes": [
        {"id": "lb1", "addresses": ["192.0.2.11/24", "2001:db8::11/64"]},
        {"id": "lb2", "addresses": ["192.0.2.12/24"]},
        {"id": "lb3", "addresses": ["192.0.2.13/24"]},
    ],
    "ssh_authorized_keys": ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA op@example"],
    "agent": {
        "timing": "safe",
        "api": {"allow": ["203.0.113.0/24"]},
        "pools": [{"name": "lan", "addresses": ["192.0.2.100-192.0.2.120"], "announce": "l2"}],
    },
}


def secrets_for(seed: ClusterSeed) -> SeedSecrets:
    ca = make_ca(seed.name)
    certs = {n.id: make_node_cert(ca, n.id, [a.ip for a in n.addresses]) for n in seed.nodes}
    return SeedSecrets("p" * 64, "t" * 64, ca, certs)


def files_of(user_data: str) -> dict[str, dict[str, Any]]:
    assert user_data.startswith("#cloud-config\n")
    return {f["path"]: f for f in yaml.safe_load(user_data)["write_files"]}


def test_each_node_gets_an_agent_config_the_agent_accepts() -> None:
    seed = parse_seed(CLUSTER)
    secrets = secrets_for(seed)
    configs = {}
    for node in seed.nodes:
        files = files_of(render_node(seed, node, secrets)["user-data"])
        configs[node.id] = parse_config(yaml.safe_load(files["/etc/raftlb/agent.yaml"]["content"]))
    lb2 = configs["lb2"]
    assert lb2.node_id == "lb2"
    assert lb2.raft.address == "192.0.2.12:7001"
    assert [p.address for p in lb2.raft.peers] == [
        "192.0.2.11:7001",
        "192.0.2.12:7001",
        "192.0.2.13:7001",
    ]
    assert lb2.data_interface == "eth1"
    assert lb2.timing == "safe"  # the cluster file's agent section is merged
    assert lb2.api.tls is not None and lb2.api.public_url() == "https://192.0.2.12:8080"
    assert [str(n) for n in lb2.api.allow or []] == ["203.0.113.0/24"]
    # Same peers everywhere: the members of one cluster must agree on the list.
    assert len({tuple(p.id for p in c.raft.peers) for c in configs.values()}) == 1


def test_secrets_are_shared_and_private_and_certificates_are_per_node() -> None:
    seed = parse_seed(CLUSTER)
    secrets = secrets_for(seed)
    one = files_of(render_node(seed, seed.nodes[0], secrets)["user-data"])
    two = files_of(render_node(seed, seed.nodes[1], secrets)["user-data"])
    for path in ("/etc/raftlb/secrets/raft-password", "/etc/raftlb/secrets/api-token"):
        assert one[path]["content"] == two[path]["content"]
        assert one[path]["permissions"] == "0640" and one[path]["owner"] == "root:raftlb"
    assert one["/etc/raftlb/tls/node-key.pem"]["permissions"] == "0640"
    assert one["/etc/raftlb/tls/node.pem"]["content"] != two["/etc/raftlb/tls/node.pem"]["content"]
    assert "/etc/raftlb/k8s-sync.env" not in one  # k8s-sync stays off unless configured


def test_network_config_is_static_with_the_nodes_addresses() -> None:
    seed = parse_seed(CLUSTER)
    net = yaml.safe_load(render_node(seed, seed.nodes[0], secrets_for(seed))["network-config"])
    eth = net["ethernets"]["eth1"]
    assert net["version"] == 2
    assert eth["addresses"] == ["192.0.2.11/24", "2001:db8::11/64"]
    assert eth["dhcp4"] is False and eth["accept-ra"] is False
    assert eth["routes"] == [{"to": "0.0.0.0/0", "via": "192.0.2.1"}]
    assert eth["nameservers"]["addresses"] == ["192.0.2.53"]


def test_kubernetes_and_data_disk_sections() -> None:
    data = {
        **CLUSTER,
        "data_disk": "/dev/vdb",
        "kubernetes": {"cluster_name": "k1", "kubeconfig": "apiVersion: v1\n", "backends": "pods"},
    }
    seed = parse_seed(data)
    user = yaml.safe_load(render_node(seed, seed.nodes[0], secrets_for(seed))["user-data"])
    files = {f["path"]: f for f in user["write_files"]}
    env = dict(
        line.split("=", 1) for line in files["/etc/raftlb/k8s-sync.env"]["content"].splitlines()
    )
    assert env["RAFTLB_CLUSTER_NAME"] == "k1"
    assert env["RAFTLB_BACKENDS"] == "pods"
    assert env["RAFTLB_API"] == "https://127.0.0.1:8080"  # the node's own agent, over TLS
    assert files["/etc/raftlb/kubeconfig"]["content"] == "apiVersion: v1\n"
    assert user["fs_setup"][0]["device"] == "/dev/vdb"
    assert user["fs_setup"][0]["overwrite"] is False  # a data disk is never reformatted
    assert user["mounts"][0][:2] == ["LABEL=raftlb-data", "/var/lib/raftlb"]


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        ({"nodes": [{"id": "a", "addresses": ["192.0.2.1/24"]}] * 2}, "(root)", "duplicate"),
        ({"agent": {"node_id": "x"}}, "(root)", "set by the seed"),
        ({"nodes": [{"id": "a", "addresses": ["not-an-ip"]}]}, "nodes.0.addresses.0", ""),
        ({"network": {"interface": "a-very-long-interface"}}, "network.interface", ""),
        ({"data_disk": "vdb"}, "data_disk", ""),
    ],
)
def test_bad_cluster_files_name_the_field(change: dict[str, Any], field: str, words: str) -> None:
    with pytest.raises(SeedError) as caught:
        parse_seed({**CLUSTER, **change})
    assert any(e["field"] == field and words in e["message"] for e in caught.value.errors), (
        caught.value.errors
    )


def test_agent_settings_the_agent_refuses_are_refused_for_every_node() -> None:
    seed = parse_seed(
        {
            **CLUSTER,
            "agent": {
                "timing": "turbo",
                "pools": [{"name": "far", "addresses": ["198.51.100.0/28"], "announce": "l2"}],
            },
        }
    )
    with pytest.raises(SeedError) as caught:
        check_nodes(seed)
    fields = [e["field"] for e in caught.value.errors]
    assert "agent (node lb1): timing" in fields
    # A layer-2 pool off the nodes' subnets would keep every agent from starting.
    seed = parse_seed(
        {
            **CLUSTER,
            "agent": {"pools": [{"name": "far", "addresses": ["198.51.100.0/28"]}]},
        }
    )
    with pytest.raises(SeedError) as caught:
        check_nodes(seed)
    assert [e["field"] for e in caught.value.errors] == [
        f"agent (node {n}): pools.0.addresses.0" for n in ("lb1", "lb2", "lb3")
    ]


def test_node_certificate_is_trusted_through_the_ca_for_its_address(tmp_path: Path) -> None:
    ca = make_ca("prod")
    node = make_node_cert(ca, "lb1", [parse_seed(CLUSTER).nodes[0].addresses[0].ip])
    tmp = tmp_path
    (tmp / "cert.pem").write_text(node.cert + ca.cert)
    (tmp / "key.pem").write_text(node.key)
    (tmp / "ca.pem").write_text(ca.cert)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(tmp / "cert.pem", tmp / "key.pem")
    client_ctx = ssl.create_default_context(cafile=str(tmp / "ca.pem"))
    results: dict[str, Any] = {}

    def handshake(hostname: str) -> None:
        left, right = socket.socketpair()
        server = threading.Thread(target=lambda: _serve(server_ctx, right, results))
        server.start()
        try:
            with client_ctx.wrap_socket(left, server_hostname=hostname) as tls:
                results[hostname] = tls.version()
        except ssl.SSLCertVerificationError as exc:
            results[hostname] = exc.verify_message
        finally:
            server.join(timeout=10)

    for hostname in ("192.0.2.11", "127.0.0.1", "lb1", "192.0.2.99"):
        handshake(hostname)
    assert results["192.0.2.11"].startswith("TLS")
    assert results["127.0.0.1"].startswith("TLS")  # k8s-sync on the node
    assert results["lb1"].startswith("TLS")
    assert "mismatch" in results["192.0.2.99"]  # another address is not this node


def _serve(ctx: ssl.SSLContext, sock: socket.socket, results: dict[str, Any]) -> None:
    try:
        with ctx.wrap_socket(sock, server_side=True):
            pass
    except (ssl.SSLError, OSError) as exc:
        results.setdefault("server_errors", []).append(str(exc))


def iso_files(path: Path) -> tuple[str, dict[str, str]]:
    iso = pycdlib.PyCdlib()
    iso.open(str(path))
    label = iso.pvd.volume_identifier.decode().strip()
    out = {}
    for name in ("meta-data", "user-data", "network-config"):
        buffer = io.BytesIO()
        iso.get_file_from_iso_fp(buffer, rr_path=f"/{name}")
        out[name] = buffer.getvalue().decode()
    iso.close()
    return label, out


def test_seed_command_writes_private_seeds_and_keeps_the_secrets(tmp_path: Path) -> None:
    cluster = tmp_path / "cluster.yaml"
    cluster.write_text(yaml.safe_dump(CLUSTER))
    out = tmp_path / "seeds"
    runner = CliRunner()
    result = runner.invoke(cli, ["--json", "seed", str(cluster), "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert sorted(report["seeds"]) == ["lb1", "lb2", "lb3"]
    for name in ("user-data", "seed.iso", "../secrets/raft-password", "../secrets/ca-key.pem"):
        mode = stat.S_IMODE((out / "lb1" / name).stat().st_mode)
        assert mode == 0o600, (name, oct(mode))
    label, files = iso_files(out / "lb2" / "seed.iso")
    assert label == "cidata"  # what cloud-init's NoCloud looks for
    assert files["user-data"] == (out / "lb2" / "user-data").read_text()
    token = (out / "secrets" / "api-token").read_text()
    cert = (out / "secrets" / "nodes" / "lb1.pem").read_text()
    lb3_cert = (out / "secrets" / "nodes" / "lb3.pem").read_text()

    # A second run (say lb3 moved) keeps the cluster's secrets and the other nodes' certificates.
    moved = {
        **CLUSTER,
        "nodes": [*CLUSTER["nodes"][:2], {"id": "lb3", "addresses": ["192.0.2.23/24"]}],
    }
    cluster.write_text(yaml.safe_dump(moved))
    result = runner.invoke(cli, ["seed", str(cluster), "--out", str(out), "--node", "lb3"])
    assert result.exit_code == 0, result.output
    assert (out / "secrets" / "api-token").read_text() == token
    assert (out / "secrets" / "nodes" / "lb1.pem").read_text() == cert
    assert (out / "secrets" / "nodes" / "lb3.pem").read_text() != lb3_cert
    assert "192.0.2.23/24" in (out / "lb3" / "network-config").read_text()


def test_seed_command_refuses_a_bad_file_and_writes_nothing(tmp_path: Path) -> None:
    cluster = tmp_path / "cluster.yaml"
    cluster.write_text(yaml.safe_dump({**CLUSTER, "raft_port": 0}))
    out = tmp_path / "seeds"
    result = CliRunner().invoke(cli, ["seed", str(cluster), "--out", str(out)])
    assert result.exit_code == 2
    assert "raft_port" in result.output and "nothing written" in result.output
    assert not out.exists()
    cluster.write_text(yaml.safe_dump(CLUSTER))
    result = CliRunner().invoke(cli, ["seed", str(cluster), "--out", str(out), "--node", "lb9"])
    assert result.exit_code == 2
    assert "lb9" in result.output
    assert not out.exists()


def test_seed_command_refuses_a_kept_secret_the_agent_would_refuse(tmp_path: Path) -> None:
    cluster = tmp_path / "cluster.yaml"
    cluster.write_text(yaml.safe_dump(CLUSTER))
    out = tmp_path / "seeds"
    (out / "secrets").mkdir(parents=True)
    (out / "secrets" / "api-token").write_text("short\n")
    result = CliRunner().invoke(cli, ["seed", str(cluster), "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert "api-token is too short" in result.output
    assert not (out / "lb1").exists()
