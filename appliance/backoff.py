"""How long to wait before retrying what failed: exponential backoff with jitter.

The jitter is why this exists: processes that fail together (the nodes of a cluster after a
network cut, the sync's replicas after an API restart, exabgp on every node after a bad config)
would otherwise retry in step, forever. A policy is a pure function of the number of failures in
a row and a random draw; the caller counts the failures, so a loop keeps one counter and a queue
keeps one per key.

Imports nothing of the project, so that announce and k8s_sync use it too.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    """Waits of `first`, `first` x `factor`, ... up to `cap`, each shortened at random by up to
    `jitter` of itself ("equal jitter" at 0.5: the wait still grows, and never drops below half)."""

    first: float = 0.5
    cap: float = 30.0
    factor: float = 2.0
    jitter: float = 0.5
    rand: Callable[[], float] = random.random  # in [0, 1); injected by tests

    def __post_init__(self) -> None:
        if not 0 < self.first <= self.cap:
            raise ValueError(f"first {self.first} must be in (0, cap {self.cap}]")
        if self.factor < 1:
            raise ValueError(f"factor {self.factor} must be at least 1")
        if not 0 <= self.jitter <= 1:
            raise ValueError(f"jitter {self.jitter} must be in [0, 1]")

    def ceiling(self, failures: int) -> float:
        """The wait after `failures` failures in a row (1 or more), before the jitter."""
        steps = max(failures, 1) - 1
        # Compared as logarithms: factor ** steps overflows a float after enough failures.
        if self.factor > 1 and steps >= math.log(self.cap / self.first, self.factor):
            return self.cap
        return min(self.first * self.factor**steps, self.cap)

    def delay(self, failures: int) -> float:
        """The wait after `failures` failures in a row: in ((1 - jitter) x ceiling, ceiling]."""
        return self.ceiling(failures) * (1 - self.jitter * self.rand())
