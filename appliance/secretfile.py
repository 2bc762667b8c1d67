"""Files that hold secrets (the Raft password, the API token, keys, seeds): written so that only
their owner reads them.

Imports nothing of the project, so that the CLI, the client and the lab share it.
"""

from __future__ import annotations

import os
from pathlib import Path


def write_private(path: Path, text: str | bytes, mode: int = 0o600) -> None:
    """Write a file only its owner reads (secrets, seeds), its folder private too if made."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as handle:
        handle.write(text.encode() if isinstance(text, str) else text)
    os.chmod(path, mode)  # an existing file keeps its mode through O_CREAT
