"""Secret files: the one reader the agent, the CLI, the k8s sync and the lab share."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from appliance.secretfile import SecretError, read_secret, write_private

SECRET = "0123456789abcdef0123456789abcdef"


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (f"{SECRET}\n", SECRET),
        (f"  \n{SECRET}  \r\n", SECRET),
        ("x", "x"),
    ],
)
def test_a_secret_is_read_without_surrounding_whitespace(
    tmp_path: Path, content: str, expected: str
) -> None:
    path = tmp_path / "secret"
    path.write_text(content)
    assert read_secret(path) == expected


@pytest.mark.parametrize(
    ("content", "min_length", "reason"),
    [
        (None, 1, "does not exist"),
        (b"", 1, "is empty"),
        (b" \n\t\n", 1, "is empty"),
        (b"\xff" * 40, 1, "is not text"),
        (b"two words\n", 1, "holds spaces or control characters"),
        (b"tab\there", 1, "holds spaces or control characters"),
        (b"short\n", 16, "at least 16 characters"),
        (b"", 16, "is empty"),
    ],
)
def test_a_secret_that_cannot_serve_says_why(
    tmp_path: Path, content: bytes | None, min_length: int, reason: str
) -> None:
    path = tmp_path / "secret"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(SecretError) as caught:
        read_secret(path, min_length)
    assert reason in caught.value.reason
    assert str(caught.value) == f"{path} {caught.value.reason}"


def test_an_unreadable_secret_says_so(tmp_path: Path) -> None:
    with pytest.raises(SecretError, match="cannot be read"):
        read_secret(tmp_path)  # a directory


def test_written_secrets_are_private(tmp_path: Path) -> None:
    path = tmp_path / "new" / "secret"
    write_private(path, SECRET + "\n")
    assert read_secret(path) == SECRET
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    path.chmod(0o644)
    write_private(path, b"again")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
