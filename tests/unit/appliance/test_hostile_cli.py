"""The CLI and `config check` against careless and hostile input: a clear message and exit code
2, never a traceback, never a hang or a gigabyte."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from appliance.cli.main import cli
from appliance.documents import MAX_DEPTH, DocumentError, load_json, load_yaml
from tests.unit.appliance.test_config import base_config

TOKEN = "abcdefghijklmnopqrstuvwxyz0123456789"

BOMB = "\n".join(
    ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    + [
        f"{n}: &{n} [{', '.join(['*' + p] * 9)}]"
        for p, n in zip("abcdefgh", "bcdefghi", strict=True)
    ]
)


def run(*argv: str) -> tuple[int, str]:
    runner = CliRunner(env={"RAFTLB_API": None, "RAFTLB_TOKEN_FILE": None})
    result = runner.invoke(cli, list(argv), catch_exceptions=True)
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        result.exception,
        result.output,
    )
    return result.exit_code, result.output


@pytest.fixture
def token(tmp_path: Path) -> str:
    path = tmp_path / "tok"
    path.write_text(TOKEN)
    return str(path)


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--api", "http://[::1", "status"], "not a valid URL"),
        (["--api", "http://127.0.0.1:99999", "status"], "Port out of range"),
        (["--api", "http://127.0.0.1:8080/v1", "status"], "ends in /v1"),
        (["--api", "ftp://127.0.0.1", "status"], "not an http:// or https:// URL"),
        (["--timeout", "0", "status"], "--timeout"),
        (["--timeout", "-1", "status"], "--timeout"),
        (["--timeout", "nan", "status"], "--timeout"),
        (["--ca-file", "/nonexistent/ca.pem", "--api", "https://127.0.0.1:1", "status"], "CA"),
    ],
)
def test_bad_options_exit_2_with_a_message(token: str, argv: list[str], says: str) -> None:
    code, output = run("--token-file", token, *argv)
    assert code == 2, output
    assert says in output
    assert "Traceback" not in output


@pytest.mark.parametrize(
    "content", [b"\xff\xfe\x00binary", "тайный-токен-1234567890".encode(), b"two words here!!!!"]
)
def test_a_token_file_that_is_not_one_printable_word_exits_2(
    tmp_path: Path, content: bytes
) -> None:
    path = tmp_path / "tok"
    path.write_bytes(content)
    code, output = run("--token-file", str(path), "status")
    assert code == 2, output
    assert "token file" in output


@pytest.mark.parametrize(
    ("name", "content", "says"),
    [
        ("deep.json", "[" * 100_000 + "]" * 100_000, "nested too deeply"),
        ("dup.json", '{"id": "a/b", "id": "a/c", "ports": [{"port": 80}]}', "given twice"),
        ("big.json", '{"id": "a/b", "x": ' + "9" * 5000 + "}", "not valid JSON"),
        ("bomb.yaml", BOMB, "alias"),
        ("deep.yaml", "a:" + " [" * 5000 + " ]" * 5000, "nested more than"),
        ("bin.yaml", b"id: \xff\n", "not UTF-8"),
    ],
)
def test_apply_files_that_would_crash_or_explode_exit_2(
    tmp_path: Path, token: str, name: str, content: str | bytes, says: str
) -> None:
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    code, output = run("--token-file", token, "services", "apply", "-f", str(path))
    assert code == 2, output
    assert says in output


def write_config(tmp_path: Path, text: str | bytes) -> str:
    path = tmp_path / "agent.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return str(path)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        (BOMB, "alias"),
        ("a:" + " [" * 5000 + " ]" * 5000, "nested more than"),
        ("node_id: n1\nnode_id: n2\n", "given twice"),
        (b"node_id: \xff\n", "not UTF-8"),
    ],
)
def test_config_check_refuses_hostile_yaml(tmp_path: Path, text: str | bytes, says: str) -> None:
    code, output = run("config", "check", write_config(tmp_path, text))
    assert code == 2, output
    assert says in output


def test_config_check_names_a_binary_secret_file(tmp_path: Path) -> None:
    data = base_config(tmp_path)
    (tmp_path / "raft.pw").write_bytes(b"\xff" * 40)
    (tmp_path / "api.token").write_text(TOKEN)
    data["api"]["token_file"] = str(tmp_path / "api.token")
    code, output = run("config", "check", write_config(tmp_path, yaml.safe_dump(data)))
    assert code == 2, output
    assert "raft.password_file" in output and "printable ASCII" in output


def test_the_loaders_take_what_files_really_hold() -> None:
    assert load_yaml("a: [1, {b: c}]\n") == {"a": [1, {"b": "c"}]}
    assert load_json(json.dumps({"a": [1, {"b": "c"}]})) == {"a": [1, {"b": "c"}]}
    nested = "a:" + " [" * (MAX_DEPTH - 2) + " ]" * (MAX_DEPTH - 2)
    assert load_yaml(nested) is not None
    with pytest.raises(DocumentError):
        load_yaml("a: 1\nb: *x\n")
