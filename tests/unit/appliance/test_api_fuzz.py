"""The API fuzzed against its own OpenAPI document (schemathesis): generated valid and invalid
requests to every operation of a real aiohttp server (over an in-memory cluster); no 5xx, and
answers as documented. Bounded for the test command; RAFTLB_FUZZ_EXAMPLES raises it (e.g.
2000) for a long run."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from appliance.api.app import ROUTE_NAMES, build_app
from appliance.api.openapi import openapi_document
from appliance.lab.served import ServedApp
from tests.support.agentapi import AUTH, context
from tests.support.fake_announcer import FakeAnnouncer
from tests.support.fake_cluster import InMemoryCluster
from tests.unit.appliance.test_api import POOL

EXAMPLES = int(os.environ.get("RAFTLB_FUZZ_EXAMPLES", "40"))
schema = schemathesis.openapi.from_dict(openapi_document("fuzz", ROUTE_NAMES))


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[str, InMemoryCluster]]:
    cluster = InMemoryCluster("n1", {"n1": "127.0.0.1:7001"})
    # An l2 announcer, so its part of /v1/status is checked against the document too.
    announcer = FakeAnnouncer("eth1")
    with ServedApp(build_app(context(cluster, l2_status=announcer.status))) as app:
        # Something to find and to conflict with: a pool.
        requests.put(f"{app.url}/v1/pools/web", json=POOL, headers=AUTH, timeout=5)
        yield app.url, cluster


@schema.parametrize()
@settings(
    max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck)
)
def test_the_api_answers_as_documented(case: Any, served: tuple[str, InMemoryCluster]) -> None:
    url, _cluster = served
    # Valid by the schema is not always acceptable: a pool block must parse, a family must have
    # a pool, an address may be taken. Those 4xx are the API's job; everything else is checked.
    case.call_and_validate(
        base_url=url, headers=AUTH, timeout=10, excluded_checks=[positive_data_acceptance]
    )
