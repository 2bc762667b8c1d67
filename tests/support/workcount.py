"""Counting work instead of time: the number of Python and C function calls an action makes.

The count is the same on an idle and on a loaded machine, and grows with the work an
implementation does, whatever its data structures: a test asserts how it grows with size.
"""

from __future__ import annotations

import sys
from collections.abc import Callable


def calls(action: Callable[[], object]) -> int:
    """How many Python and C functions `action` calls."""
    count = 0

    def profile(frame: object, event: str, arg: object) -> None:
        nonlocal count
        if event in ("call", "c_call"):
            count += 1

    previous = sys.getprofile()
    sys.setprofile(profile)
    try:
        action()
    finally:
        sys.setprofile(previous)
    return count
