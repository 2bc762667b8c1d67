"""Counting events that a flood could repeat thousands of times a second, and saying when to
log them: at most once per interval, with how many of each kind happened since the last line.

Imports nothing of the project, so that raft/ may use it too.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Tally:
    every: float = 10.0
    counts: dict[str, int] = field(default_factory=dict)  # since the last line logged
    logged_at: float | None = None

    def add(self, what: str) -> tuple[dict[str, int], float] | None:
        """Count one `what`. When a line is due (the first ever, or `every` seconds after the
        last), return the counts since the last line and the seconds they span, and reset."""
        self.counts[what] = self.counts.get(what, 0) + 1
        now = time.monotonic()
        if self.logged_at is not None and now - self.logged_at < self.every:
            return None
        span = self.every if self.logged_at is None else min(now - self.logged_at, self.every)
        counts, self.counts, self.logged_at = self.counts, {}, now
        return counts, span


SHOWN = 5  # items named in a line that summarises many


def listed(items: Sequence[Any], shown: int = SHOWN, sep: str = ", ") -> str:
    """`items` for a log line that must not grow with the state: the first `shown` and how
    many more (a lapse of 1,667 VIPs logged line by line held the agent's GIL for its writes)."""
    head = sep.join(str(i) for i in items[:shown])
    return f"{head} and {len(items) - shown} more" if len(items) > shown else head
