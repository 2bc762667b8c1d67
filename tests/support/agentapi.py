"""One agent API for unit tests: an in-memory cluster behind the real aiohttp app."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from appliance.api.app import ApiContext, build_app
from appliance.lab.served import ServedApp
from appliance.metrics import Metrics
from tests.support.fake_cluster import InMemoryCluster

TOKEN = "s3cret-token-for-tests-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
JSON = {**AUTH, "Content-Type": "application/json"}


def context(cluster: InMemoryCluster, **extra: Any) -> ApiContext:
    """The API's context over `cluster`; `extra` sets any other ApiContext field."""
    fields: dict[str, Any] = {
        "cluster": cluster,
        "metrics": Metrics(cluster),
        "token": TOKEN,
        "peers": cluster.peers,
        "version": "1.2.3",
        "write_timeout": 0.05,
    }
    return ApiContext(**{**fields, **extra})


def agent_app(cluster: InMemoryCluster, **extra: Any) -> web.Application:
    return build_app(context(cluster, **extra))


def serve(cluster: InMemoryCluster, **extra: Any) -> ServedApp:
    """The app served on a free loopback port (a context manager: `with serve(c) as s`)."""
    return ServedApp(agent_app(cluster, **extra))
