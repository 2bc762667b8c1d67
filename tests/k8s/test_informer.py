"""The informer against a server speaking the Kubernetes wire protocol, with the real client:
list, watch streams, bookmarks, 410 Gone and relist, and an API server that goes away."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from appliance.lab.k8s_api import FakeApiServer
from appliance.lab.served import ServedApp
from k8s_sync.informer import Informer
from tests.support.waiting import until

pytestmark = pytest.mark.timeout(60)


def svc(name: str, port: int = 80) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": "shop"},
        "spec": {"type": "LoadBalancer", "ports": [{"port": port}]},
    }


class Running:
    def __init__(self, api: FakeApiServer, served: ServedApp, watch_seconds: int = 2) -> None:
        self.api = api
        self.served = served
        self.events: list[tuple[str, str]] = []
        configuration = client.Configuration(host=served.url)
        core = client.CoreV1Api(client.ApiClient(configuration))
        self.informer = Informer(
            "services",
            core.list_service_for_all_namespaces,
            lambda kind, obj: self.events.append((kind, obj["metadata"]["name"])),
            watch_seconds=watch_seconds,
        )
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.informer.run, args=(self.stop,), daemon=True)

    def names(self) -> set[str]:
        return {o["metadata"]["name"] for o in self.informer.snapshot()}


@pytest.fixture
def running() -> Iterator[Running]:
    api = FakeApiServer()
    with ServedApp(api.app()) as served:
        run = Running(api, served)
        api.call(api.put, "services", svc("before"))
        run.thread.start()
        try:
            yield run
        finally:
            run.stop.set()
            run.informer.stop()
            run.thread.join(10)


def test_list_then_watch_follows_adds_changes_and_deletes(running: Running) -> None:
    api = running.api
    until(lambda: running.names() == {"before"}, "the initial list")
    api.call(api.put, "services", svc("web"))
    api.call(api.put, "services", svc("web", 443))
    api.call(api.delete, "services", "shop/before")
    until(lambda: running.names() == {"web"}, "the watched changes")
    store = {o["metadata"]["name"]: o for o in running.informer.snapshot()}
    assert store["web"]["spec"]["ports"] == [{"port": 443}]
    assert ("DELETED", "before") in running.events
    assert running.informer.lists == 1  # one list, then only the watch


def test_a_watch_that_ends_resumes_without_listing_again(running: Running) -> None:
    until(lambda: running.names() == {"before"}, "the initial list")
    watches = running.api.watches
    until(lambda: running.api.watches >= watches + 2, "the watch to be resumed", timeout=10)
    running.api.call(running.api.put, "services", svc("later"))
    until(lambda: "later" in running.names(), "a change after a resumed watch")
    assert running.informer.lists == 1


def test_410_gone_makes_it_list_again_and_report_what_vanished(running: Running) -> None:
    api = running.api
    until(lambda: running.names() == {"before"}, "the initial list")

    def changed_then_compacted() -> None:
        # In one step of the server's loop, so no watch sees the changes before they are
        # forgotten: the open watch gets 410 Gone (it raced a reconnect before).
        api.delete("services", "shop/before")
        api.put("services", svc("new"))
        api.compact()

    api.call(changed_then_compacted)
    until(lambda: running.informer.lists >= 2, "a relist after 410 Gone")
    until(lambda: running.names() == {"new"}, "the state after the relist")
    assert ("DELETED", "before") in running.events


def test_an_unreachable_api_keeps_the_store_and_recovers() -> None:
    api = FakeApiServer()
    served = ServedApp(api.app())
    with served:
        run = Running(api, served, watch_seconds=1)
        api.call(api.put, "services", svc("kept"))
        run.thread.start()
        until(lambda: run.names() == {"kept"}, "the initial list")
    try:
        # The server is gone: the store stays, failures are counted and retried.
        until(lambda: run.informer.failures >= 1, "a failure to be noticed")
        assert run.names() == {"kept"}
    finally:
        run.stop.set()
        run.informer.stop()
        run.thread.join(10)
