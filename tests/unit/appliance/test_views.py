"""The read views at size: `GET /v1/vips` answers what the plain view says, and after one
change makes only that VIP's entry again."""

from __future__ import annotations

import json
from typing import Any

from appliance.api.views import VipsCache, vips_view
from appliance.model import Backend
from raft.state import ClusterState


def put(i: int, port: int = 80) -> dict[str, Any]:
    spec = {
        "id": f"c/ns/s{i}",
        "ports": [{"port": port, "backends": [{"address": "198.51.100.7", "port": 30000 + i}]}],
    }
    return {"v": 1, "type": "service.put", "service": spec}


def test_cached_vips_are_the_plain_view_and_only_changes_are_made_again() -> None:
    state = ClusterState()
    pool = {"name": "p", "addresses": ["192.0.2.0/24"], "default": True}
    assert state.apply({"v": 1, "type": "pool.put", "pool": pool})["ok"]
    for i in range(200):
        assert state.apply(put(i))["ok"]
    down: set[str] = set()
    versions: dict[str, int] = {}

    def healthy(sid: str, backend: Backend) -> bool:
        return sid not in down

    cache = VipsCache()

    def check() -> None:
        body = cache.body(state.snapshot(), healthy, None, lambda sid: versions.get(sid, 0))
        plain = [v.model_dump(mode="json") for v in vips_view(state.snapshot(), healthy)]
        assert json.loads(body) == plain

    check()
    assert cache.built == 200
    check()
    assert cache.built == 200  # nothing changed: nothing made again
    assert state.apply(put(7, port=81))["ok"]
    down.add("c/ns/s9")
    versions["c/ns/s9"] = 1
    check()
    assert cache.built == 202  # s7's spec, s9's health
