"""The agent API over TLS: a real agent with a generated certificate, reached by the CLI."""

from __future__ import annotations

import datetime
import ipaddress
import json
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import yaml
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from integration_harness import poll

from appliance.cli.main import cli
from appliance.lab import local


def _self_signed(directory: Path, name: str) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 signed by its own key (it is its own CA)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@pytest.fixture
def tls_agent(tmp_path: Path) -> Iterator[tuple[local.LocalLab, str, Path]]:
    """A one-node cluster whose API only speaks TLS; yields (lab, https URL, CA file)."""
    directory = tmp_path / "lab"
    lab, _ = local.up(directory, nodes=1, progress=lambda _: None)
    try:
        local.kill_node(lab, "n1", signal.SIGTERM)
        cert, key = _self_signed(tmp_path, "agent")
        config_path = Path(lab.nodes["n1"].config_path)
        config = yaml.safe_load(config_path.read_text())
        config["api"]["tls"] = {"cert_file": str(cert), "key_file": str(key)}
        config_path.write_text(yaml.safe_dump(config))
        local.start_node(lab, "n1")
        url = lab.nodes["n1"].api_url.replace("http://", "https://")

        def up() -> bool | None:
            try:
                return requests.get(f"{url}/healthz", verify=str(cert), timeout=1).ok or None
            except requests.RequestException:
                return None

        poll(up, 20, "the TLS API to answer")
        yield lab, url, cert
    finally:
        local.down(directory, progress=lambda _: None)


@pytest.mark.integration
def test_cli_reaches_a_tls_agent_with_its_ca(tls_agent: tuple[local.LocalLab, str, Path]) -> None:
    lab, url, ca_file = tls_agent
    args = ["--api", url, "--token-file", str(lab.token_file), "--ca-file", str(ca_file)]
    result = CliRunner().invoke(cli, [*args, "--json", "status"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["node"] == "n1"


@pytest.mark.integration
def test_tls_agent_refuses_plain_http_and_unknown_cas(
    tls_agent: tuple[local.LocalLab, str, Path], tmp_path: Path
) -> None:
    lab, url, _ = tls_agent
    plain = url.replace("https://", "http://")
    with pytest.raises(requests.RequestException):
        requests.get(f"{plain}/healthz", timeout=2)
    other_ca, _ = _self_signed(tmp_path, "other")
    args = ["--api", url, "--token-file", str(lab.token_file), "--ca-file", str(other_ca)]
    result = CliRunner().invoke(cli, [*args, "status"])
    assert result.exit_code == 1
    assert "cannot reach" in result.stderr or "TLS" in result.stderr or "SSL" in result.stderr
