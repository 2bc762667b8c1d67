"""`raftlb seed CLUSTER.yaml --out DIR`: the first-boot seeds of a cluster's appliance VMs.

Writes DIR/secrets/ (the Raft password, the API token, the cluster CA and each node's API
certificate: made once, reused by later runs so that re-seeding one node keeps it in its
cluster) and DIR/NODE/ with cloud-init's NoCloud files and `seed.iso` (volume `cidata`) to
attach to the VM. Nothing is written unless every node's seed is valid.
"""

from __future__ import annotations

import io
import ipaddress
import secrets
from pathlib import Path
from typing import NoReturn

import click
import pycdlib
from cryptography import x509

from appliance.cli.context import EXIT_BAD_INPUT, CliContext, pass_cli
from appliance.cli.files import FileInvalid, read_document
from appliance.config import MIN_SECRET_LENGTH
from appliance.secretfile import SecretError, read_secret, write_private
from appliance.seed import (
    ClusterSeed,
    SeedError,
    SeedNode,
    SeedSecrets,
    check_nodes,
    parse_seed,
    render_node,
)
from appliance.tls import Pem, make_ca, make_node_cert

NOCLOUD_FILES = ("meta-data", "user-data", "network-config")


def _secret(path: Path) -> str:
    """The secret of a former run (checked like the agent checks it), or a new one."""
    if path.exists():
        return read_secret(path, MIN_SECRET_LENGTH)
    value = secrets.token_hex(32)
    write_private(path, value + "\n")
    return value


def _pem(cert: Path, key: Path) -> Pem | None:
    if cert.is_file() and key.is_file():
        return Pem(cert.read_text(), key.read_text())
    return None


def _names(pem: Pem) -> set[str]:
    san = x509.load_pem_x509_certificate(pem.cert.encode()).extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    )
    return {str(v) for v in san.value.get_values_for_type(x509.IPAddress)} | set(
        san.value.get_values_for_type(x509.DNSName)
    )


def _node_cert(ca: Pem, node: SeedNode, folder: Path) -> Pem:
    """The node's certificate: kept while it names the node's addresses, else made anew."""
    ips = [a.ip for a in node.addresses]
    want = {node.id, "127.0.0.1", "::1", *(str(ip) for ip in ips)}
    cert, key = folder / f"{node.id}.pem", folder / f"{node.id}-key.pem"
    existing = _pem(cert, key)
    if existing is not None and _names(existing) == want:
        return existing
    made = make_node_cert(ca, node.id, list(ips))
    write_private(cert, made.cert, 0o644)
    write_private(key, made.key)
    return made


def load_secrets(seed: ClusterSeed, folder: Path) -> SeedSecrets:
    ca = _pem(folder / "ca.pem", folder / "ca-key.pem")
    if ca is None:
        ca = make_ca(seed.name)
        write_private(folder / "ca.pem", ca.cert, 0o644)
        write_private(folder / "ca-key.pem", ca.key)
    return SeedSecrets(
        raft_password=_secret(folder / "raft-password"),
        api_token=_secret(folder / "api-token"),
        ca=ca,
        node_certs={n.id: _node_cert(ca, n, folder / "nodes") for n in seed.nodes},
    )


def seed_iso(files: dict[str, str]) -> bytes:
    """An ISO 9660 image labelled `cidata` (with Joliet and Rock Ridge names) holding `files`."""
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, joliet=3, rock_ridge="1.09", vol_ident="cidata")
    for index, (name, text) in enumerate(sorted(files.items())):
        data = text.encode()
        iso.add_fp(
            io.BytesIO(data),
            len(data),
            f"/FILE{index};1",
            rr_name=name,
            joliet_path=f"/{name}",
        )
    out = io.BytesIO()
    iso.write_fp(out)
    iso.close()
    return out.getvalue()


@click.command("seed")
@click.argument("cluster_file", type=click.Path(dir_okay=False))
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for the seeds (and the cluster's secrets, kept between runs).",
)
@click.option("--node", "only", multiple=True, help="Only this node's seed (repeatable).")
@pass_cli
def seed_command(
    cli_ctx: CliContext, cluster_file: str, out_dir: Path, only: tuple[str, ...]
) -> None:
    """Make the first-boot seed (NoCloud) of each appliance VM of a cluster."""
    try:
        seed = parse_seed(read_document(cluster_file))
        check_nodes(seed)
    except FileInvalid as exc:
        cli_ctx.fail(EXIT_BAD_INPUT, exc.message, code="invalid", where=cluster_file)
    except SeedError as exc:
        _fail_fields(cli_ctx, cluster_file, exc)
    unknown = sorted(set(only) - {n.id for n in seed.nodes})
    if unknown:
        cli_ctx.fail(
            EXIT_BAD_INPUT, f"--node {', '.join(unknown)}: not in {cluster_file}", code="invalid"
        )
    nodes = [n for n in seed.nodes if not only or n.id in only]
    try:
        cluster_secrets = load_secrets(seed, out_dir / "secrets")
    except SecretError as exc:
        cli_ctx.fail(EXIT_BAD_INPUT, f"{exc}; remove it to make a new one", code="invalid")
    rendered = {n.id: render_node(seed, n, cluster_secrets) for n in nodes}
    for node in nodes:
        folder = out_dir / node.id
        for name in NOCLOUD_FILES:
            write_private(folder / name, rendered[node.id][name])
        write_private(folder / "seed.iso", seed_iso(rendered[node.id]))
    first = seed.nodes[0].addresses[0].ip
    host = f"[{first}]" if isinstance(first, ipaddress.IPv6Address) else str(first)
    seeds = {n.id: str(out_dir / n.id / "seed.iso") for n in nodes}
    report = {
        "cluster": seed.name,
        "seeds": seeds,
        "secrets": str(out_dir / "secrets"),
        "cli": f"raftlb --api https://{host}:{seed.api_port} "
        f"--ca-file {out_dir / 'secrets' / 'ca.pem'} "
        f"--token-file {out_dir / 'secrets' / 'api-token'} status",
    }
    if cli_ctx.as_json:
        cli_ctx.print_json(report)
        return
    for node_id, path in seeds.items():
        click.echo(f"{node_id}: {path}")
    click.echo(f"secrets (keep private, reused by the next run): {report['secrets']}")
    click.echo(f"once the VMs are up: {report['cli']}")


def _fail_fields(cli_ctx: CliContext, source: str, exc: SeedError) -> NoReturn:
    cli_ctx.fail(
        EXIT_BAD_INPUT,
        f"{len(exc.errors)} error(s), nothing written",
        code="invalid",
        fields=exc.errors,
        where=source,
    )
