"""A delete resent after a lost acknowledgement must not report the object as missing."""

from __future__ import annotations

from typing import Any

import pytest

from raft.cluster import _settle_resent_delete
from raft.commands import Command, parse_command


def typed(raw: dict[str, Any]) -> Command:
    return parse_command(raw)


NOT_FOUND = {"ok": False, "error": {"code": "not_found", "message": "gone"}}


@pytest.mark.parametrize(
    ("command", "target"),
    [
        ({"v": 1, "type": "pool.delete", "name": "lan"}, "lan"),
        ({"v": 1, "type": "service.delete", "id": "k/ns/web"}, "k/ns/web"),
        ({"v": 1, "type": "allocation.delete", "owner": "k/ns/web"}, "k/ns/web"),
    ],
)
def test_not_found_after_resend_is_success(command: dict[str, Any], target: str) -> None:
    result = _settle_resent_delete(typed(command), NOT_FOUND)
    assert result == {"ok": True, "value": {"deleted": target, "already_gone": True}}


@pytest.mark.parametrize(
    ("command", "result"),
    [
        # Not a delete: a not_found is a real refusal.
        ({"v": 1, "type": "allocation.create", "request": {"owner": "o"}}, NOT_FOUND),
        # A delete refused for another reason stays refused.
        (
            {"v": 1, "type": "pool.delete", "name": "lan"},
            {"ok": False, "error": {"code": "conflict", "message": "in use"}},
        ),
        # Success passes through untouched.
        ({"v": 1, "type": "pool.delete", "name": "lan"}, {"ok": True, "value": {"deleted": "lan"}}),
    ],
)
def test_other_results_pass_through(command: dict[str, Any], result: dict[str, Any]) -> None:
    assert _settle_resent_delete(typed(command), result) is result
