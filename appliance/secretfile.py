"""Files that hold secrets (the Raft password, the API token, keys, seeds): read and checked in
one place, written so that only their owner reads them.

Imports nothing of the project, so that the agent, the client and the lab share it.
"""

from __future__ import annotations

import os
from pathlib import Path


class SecretError(ValueError):
    """A secret file that cannot serve: missing, unreadable, not one printable word, too short.
    `reason` says why without the path, for messages that name the file elsewhere."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path} {reason}")
        self.path = path
        self.reason = reason


def read_secret(path: Path, min_length: int = 1) -> str:
    """The secret a file holds, stripped of surrounding whitespace: one word of printable ASCII
    (a token travels in an HTTP header) of at least `min_length` characters."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise SecretError(path, "does not exist") from None
    except OSError as exc:
        raise SecretError(path, f"cannot be read: {exc.strerror or exc}") from None
    try:
        text = raw.decode("ascii").strip()
    except UnicodeDecodeError:
        raise SecretError(
            path, "is not text: a secret is printable ASCII, e.g. from `openssl rand -hex 32`"
        ) from None
    if not all(" " < c < "\x7f" for c in text):
        raise SecretError(
            path,
            "holds spaces or control characters: a secret is one printable word, e.g. from "
            "`openssl rand -hex 32`",
        )
    if not text:
        raise SecretError(path, "is empty")
    if len(text) < min_length:
        raise SecretError(
            path,
            f"is too short: a secret must be at least {min_length} characters (generate one "
            "with `openssl rand -hex 32`)",
        )
    return text


def write_private(path: Path, text: str | bytes, mode: int = 0o600) -> None:
    """Write a file only its owner reads (secrets, seeds), its folder private too if made."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as handle:
        handle.write(text.encode() if isinstance(text, str) else text)
    os.chmod(path, mode)  # an existing file keeps its mode through O_CREAT
