"""A real 3-node cluster of `raftlb agent` processes on loopback: election, replication through a
follower, leader crash, full-cluster crash and restart, a node with the wrong Raft password,
quorum loss, and log compaction (full dump, snapshot install, restart from the dump).

Crashes are `kill -9` of a node's whole process group. Every figure measured (election time,
write-after-leader-kill time, restart time, ...) is printed in the terminal summary.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from integration_harness import LabCluster, StatusWatcher, poll, poll_quietly, record_timing

from appliance.config import load_config

pytestmark = pytest.mark.integration

HANG_GUARD = 10.0  # seconds; not a performance target, only "it did not hang"

POOL = {"addresses": ["192.0.2.0/28"], "default": True}
EXTRA_POOL = {"addresses": ["198.51.100.0/28"]}


def service(port: int = 80, backend: str = "203.0.113.10", **extra: Any) -> dict[str, Any]:
    return {
        "ports": [{"port": port, "backends": [{"address": backend, "port": 30080}]}],
        **extra,
    }


def agreed_leader(cluster: LabCluster, nodes: list[str], timeout: float = 10.0) -> str:
    """The leader every one of `nodes` names, once they agree on one of `nodes`."""

    def check() -> str | None:
        leaders = {cluster.leader_of(k) for k in nodes}
        if len(leaders) == 1:
            (leader,) = leaders
            if leader in nodes:
                return leader
        return None

    return poll(check, timeout, f"{nodes} to agree on a leader among them")


def in_network(address: str, network: str) -> bool:
    return ipaddress.ip_address(address) in ipaddress.ip_network(network)


def raft_dir(cluster: LabCluster, node_id: str) -> Path:
    return load_config(Path(cluster.lab.nodes[node_id].config_path)).data_dir / "raft"


# -- 1 ------------------------------------------------------------------------------------------


def test_leader_elected_and_all_nodes_agree(cluster: LabCluster) -> None:
    record_timing("election", "start of 3 agents to an agreed leader", cluster.startup_seconds)

    def agreement() -> dict[str, dict[str, Any]] | None:
        statuses: dict[str, dict[str, Any]] = {}
        for node_id in cluster.ids:
            status = cluster.status(node_id)
            if status is None or not status["raft"]["has_quorum"]:
                return None
            statuses[node_id] = status
        leaders = {s["raft"]["leader"] for s in statuses.values()}
        roles = sorted(s["raft"]["role"] for s in statuses.values())
        if len(leaders) != 1 or roles != ["follower", "follower", "leader"]:
            return None
        return statuses

    statuses = poll(agreement, 5.0, "one leader and two followers that agree on it, quorum")
    (leader,) = {s["raft"]["leader"] for s in statuses.values()}
    assert leader in cluster.ids
    assert statuses[leader]["raft"]["role"] == "leader"
    assert len({s["raft"]["term"] for s in statuses.values()}) == 1, statuses
    for node_id, status in statuses.items():
        assert status["node"] == node_id
        assert status["members"] == 3

    # Member reports go through Raft too: every node learns every member's API URL.
    def everyone_connected_and_reported() -> bool:
        for node_id in cluster.ids:
            status = cluster.status(node_id)
            if not status or status["members_connected"] != 3:
                return False
            if status["leader_api_url"] != cluster.lab.nodes[status["raft"]["leader"]].api_url:
                return False
        return True

    poll(everyone_connected_and_reported, 10.0, "all members connected and reported")


# -- 2 ------------------------------------------------------------------------------------------


def test_write_through_follower_is_readable_on_every_node(cluster: LabCluster) -> None:
    leader = agreed_leader(cluster, cluster.ids)
    follower = cluster.followers(leader)[0]

    started = time.monotonic()
    pool = cluster.write_ok("PUT", follower, "/v1/pools/main", POOL)
    svc = cluster.write_ok("PUT", follower, "/v1/services/k/default/web", service())
    record_timing(
        "follower write", "PUT pool + PUT service through a follower", time.monotonic() - started
    )
    assert pool["name"] == "main"
    assert svc["spec"]["id"] == "k/default/web"
    assert in_network(svc["address"], "192.0.2.0/28"), svc

    started = time.monotonic()
    for node_id in cluster.ids:

        def replicated(node_id: str = node_id) -> bool:
            pools = cluster.get(node_id, "/v1/pools/main")
            services = cluster.get(node_id, "/v1/services/k/default/web")
            return (
                pools.status_code == 200
                and pools.json() == pool
                and services.status_code == 200
                and services.json() == svc
            )

        poll(replicated, 10.0, f"the pool and the service on {node_id}")
        status = cluster.status(node_id)
        assert status is not None
        assert (status["pools"], status["services"], status["allocations"]) == (1, 1, 1)
    record_timing("follower write", "visible on all 3 nodes after", time.monotonic() - started)


# -- 3 ------------------------------------------------------------------------------------------


def test_kill_leader_then_writes_succeed_through_a_survivor(cluster: LabCluster) -> None:
    leader = agreed_leader(cluster, cluster.ids)
    survivors = cluster.followers(leader)
    cluster.write_ok("PUT", survivors[0], "/v1/pools/main", POOL)

    watcher = StatusWatcher(cluster, survivors, candidates=survivors).start()
    killed_at = time.monotonic()
    cluster.kill(leader)

    attempts: list[str] = []
    try:
        while True:
            try:
                resp = cluster.write(
                    "PUT", survivors[0], "/v1/services/k/default/after-failover", service()
                )
            except requests.RequestException as exc:
                attempts.append(f"{type(exc).__name__}")
            else:
                if resp.status_code == 200:
                    break
                assert resp.status_code == 503, f"unexpected {resp.status_code}: {resp.text}"
                attempts.append(f"503 {resp.json()['error']['code']}")
            assert time.monotonic() - killed_at < HANG_GUARD, (
                f"no successful write {HANG_GUARD}s after the leader was killed: {attempts}"
            )
            time.sleep(0.05)
        write_after = time.monotonic() - killed_at
        poll(lambda: watcher.agreed_at, 10.0, "the survivors to elect a new leader")
    finally:
        watcher.stop()

    assert watcher.agreed_at is not None
    record_timing(
        "leader kill",
        "kill -9 of the leader to an agreed new leader",
        watcher.agreed_at - killed_at,
    )
    record_timing(
        "leader kill",
        f"kill -9 of the leader to a committed write "
        f"(failed attempts before: {attempts or 'none'})",
        write_after,
    )
    assert write_after < HANG_GUARD

    new_leader = agreed_leader(cluster, survivors)
    assert new_leader in survivors
    assert new_leader != leader
    # The write is on both survivors, and a second write goes straight through.
    for node_id in survivors:
        poll(
            lambda n=node_id: cluster.get(n, "/v1/services/k/default/after-failover").ok,
            10.0,
            f"the post-failover service on {node_id}",
        )
    cluster.write_ok("PUT", survivors[1], "/v1/services/k/default/second", service(port=81))


# -- 4 ------------------------------------------------------------------------------------------


def test_full_cluster_crash_and_restart_keeps_everything(cluster: LabCluster) -> None:
    leader = agreed_leader(cluster, cluster.ids)
    follower = cluster.followers(leader)[0]
    cluster.write_ok("PUT", leader, "/v1/pools/main", POOL)
    cluster.write_ok("PUT", follower, "/v1/pools/extra", EXTRA_POOL)
    web = cluster.write_ok("PUT", leader, "/v1/services/k/default/web", service())
    api = cluster.write_ok(
        "PUT", follower, "/v1/services/k/prod/api", service(port=443, pool="extra")
    )
    fixed = cluster.write_ok(
        "PUT", leader, "/v1/services/k/prod/fixed", service(port=8443, vip="192.0.2.9")
    )
    one = cluster.write_ok("POST", follower, "/v1/allocations", {"owner": "manual/one"})
    two = cluster.write_ok(
        "POST", leader, "/v1/allocations", {"owner": "manual/two", "pool": "extra"}
    )
    addresses = {x["address"] for x in (web, api, fixed, one, two)}
    assert len(addresses) == 5, addresses
    expected = cluster.state(leader)
    assert expected is not None
    counts = {kind: len(items) for kind, items in expected.items()}
    assert counts == {"pools": 2, "services": 3, "allocations": 5}, expected
    for node_id in cluster.ids:
        cluster.wait_state(node_id, expected)

    for node_id in cluster.ids:
        cluster.kill(node_id)
    assert not any(cluster.running(k) for k in cluster.ids)

    started = time.monotonic()
    for node_id in cluster.ids:
        cluster.start(node_id)
    new_leader = cluster.wait_ready(cluster.ids, timeout=30.0)
    record_timing(
        "full restart", "start of 3 crashed agents to an agreed leader", time.monotonic() - started
    )
    for node_id in cluster.ids:
        cluster.wait_state(node_id, expected, timeout=10.0)
    record_timing(
        "full restart",
        "start of 3 crashed agents to every node's state restored",
        time.monotonic() - started,
    )

    # The restored allocator still knows every address in use: asking again for an owner
    # returns its address, a new owner gets a fresh one.
    again = cluster.write_ok("POST", new_leader, "/v1/allocations", {"owner": "manual/one"})
    assert again == one
    three = cluster.write_ok(
        "POST", cluster.followers(new_leader)[0], "/v1/allocations", {"owner": "manual/three"}
    )
    assert three["address"] not in addresses, three


# -- 5 ------------------------------------------------------------------------------------------


def test_node_with_wrong_raft_password_cannot_join(cluster: LabCluster) -> None:
    leader = agreed_leader(cluster, cluster.ids)
    bad = cluster.followers(leader)[0]
    good = [k for k in cluster.ids if k != bad]
    cluster.write_ok("PUT", leader, "/v1/pools/main", POOL)
    for node_id in cluster.ids:
        poll(lambda n=node_id: cluster.get(n, "/v1/pools/main").ok, 10.0, f"pool on {node_id}")

    # Restart the node (after a crash) with another password.
    cluster.kill(bad)
    wrong = cluster.lab.dir / "wrong-raft-password"
    fd = os.open(wrong, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(secrets.token_hex(32) + "\n")
    config_path = Path(cluster.lab.nodes[bad].config_path)
    config = yaml.safe_load(config_path.read_text())
    assert Path(config["raft"]["password_file"]).read_text() != wrong.read_text()
    config["raft"]["password_file"] = str(wrong)
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    cluster.start(bad)
    poll(lambda: cluster.status(bad), 15.0, f"{bad}'s API to answer")

    # Writes submitted to the bad node, concurrently with good writes and observation.
    bad_writes = {
        "pool": ("PUT", "/v1/pools/intruder", {"addresses": ["198.51.100.0/28"]}),
        "service": ("PUT", "/v1/services/k/default/intruder", service(port=9999)),
        "allocation": ("POST", "/v1/allocations", {"owner": "intruder/x"}),
    }

    def timed_write(method: str, path: str, body: Any) -> tuple[float, requests.Response]:
        started = time.monotonic()
        resp = cluster.write(method, bad, path, body)
        return time.monotonic() - started, resp

    bad_leaders: set[str | None] = set()
    with ThreadPoolExecutor(len(bad_writes)) as pool:
        futures = {k: pool.submit(timed_write, *v) for k, v in bad_writes.items()}
        # Meanwhile the good majority keeps taking writes.
        cluster.write_ok("PUT", good[0], "/v1/pools/after", {"addresses": ["203.0.113.0/28"]})
        after = cluster.write_ok(
            "PUT", good[1], "/v1/services/k/default/after", service(pool="after")
        )
        while not all(f.done() for f in futures.values()):
            status = cluster.status(bad)
            if status is not None:
                bad_leaders.add(status["raft"]["leader"])
            time.sleep(0.1)
        results = {k: f.result() for k, f in futures.items()}

    assert bad_leaders == {None}, f"{bad} (wrong password) learned a leader: {bad_leaders}"
    for kind, (elapsed, resp) in results.items():
        assert resp.status_code == 503, f"{kind} through {bad}: {resp.status_code} {resp.text}"
        error = resp.json()["error"]
        assert error["code"] in ("no_quorum", "timeout"), error
        assert error["message"], error
        assert elapsed < cluster.write_timeout + 5.0, (kind, elapsed)
    record_timing(
        "wrong password",
        "write through the locked-out node answered 503 after",
        max(elapsed for elapsed, _ in results.values()),
    )

    # The good majority has the good writes and nothing sent to the bad node.
    expected = cluster.state(good[0])
    assert expected is not None
    assert [p["name"] for p in expected["pools"]] == ["after", "main"]
    assert [s["spec"]["id"] for s in expected["services"]] == ["k/default/after"]
    assert [a["owner"] for a in expected["allocations"]] == ["k/default/after"]
    assert expected["services"][0] == after
    time.sleep(1.0)  # anything the bad node might still push would show up by now
    for node_id in good:
        cluster.wait_state(node_id, expected)
        status = cluster.status(node_id)
        assert status is not None and status["raft"]["leader"] in good, status
        # ... and does not count the locked-out node as a connected member.
        assert status["raft"]["connected"][bad] is False, status
        assert status["members_connected"] == 2, status

    # The bad node never got the writes made through the good nodes.
    bad_state = cluster.state(bad)
    assert bad_state is not None
    assert "after" not in [p["name"] for p in bad_state["pools"]], bad_state
    assert bad_state["services"] == [], bad_state
    status = cluster.status(bad)
    assert status is not None and status["raft"]["leader"] is None, status
    assert status["raft"]["role"] != "leader", status

    # And the good majority still commits.
    cluster.write_ok("PUT", good[1], "/v1/services/k/default/later", service(port=82))


# -- 7 ------------------------------------------------------------------------------------------

COMPACTION_ENTRIES = 5200  # pysyncobj compacts past logCompactionMinEntries (default 5000)


# Nodes compact in turn, each in its slot of the interval: a short one for the test.
@pytest.mark.raft_settings(log_compaction_interval=10)
def test_log_compaction_snapshot_install_and_restart_from_dump(cluster: LabCluster) -> None:
    leader = agreed_leader(cluster, cluster.ids)
    lagging = cluster.followers(leader)[0]
    live = [k for k in cluster.ids if k != lagging]
    cluster.write_ok(
        "PUT", leader, "/v1/pools/main", {"addresses": ["192.0.2.0/24"], "default": True}
    )
    cluster.write_ok("PUT", leader, "/v1/services/k/default/web", service())
    for node_id in cluster.ids:
        poll(
            lambda n=node_id: cluster.get(n, "/v1/services/k/default/web").ok,
            10.0,
            f"the service on {node_id}",
        )
    cluster.kill(lagging)
    assert not (raft_dir(cluster, lagging) / "raft.dump").exists()

    # Enough entries for the live nodes to compact their logs past the lagging node's position.
    local_session = threading.local()

    def allocate(i: int) -> int:
        session = getattr(local_session, "session", None)
        if session is None:
            session = local_session.session = requests.Session()
            session.headers.update(cluster.headers)
            session.headers.pop("Connection")
        resp = session.post(
            cluster.url(live[i % 2], "/v1/allocations"),
            json={"owner": f"bulk/{i % 40}"},
            timeout=(1.0, cluster.write_timeout + 5.0),
        )
        return resp.status_code

    started = time.monotonic()
    with ThreadPoolExecutor(12) as pool:
        codes = list(pool.map(allocate, range(COMPACTION_ENTRIES)))
    assert codes == [200] * COMPACTION_ENTRIES, {c: codes.count(c) for c in set(codes)}
    for node_id in live:
        poll(
            lambda n=node_id: (raft_dir(cluster, n) / "raft.dump").exists(),
            30.0,
            f"{node_id} to write a full dump",
        )
    record_timing(
        "compaction",
        f"{COMPACTION_ENTRIES} writes until both live nodes dumped",
        time.monotonic() - started,
    )
    cluster.write_ok("PUT", live[1], "/v1/services/k/default/after-dump", service(port=81))
    expected = cluster.state(live[0])
    assert expected is not None
    assert len(expected["allocations"]) == 42, expected["allocations"]
    for node_id in live:
        cluster.wait_state(node_id, expected)

    # The lagging node is behind the compacted log: it can only catch up by a snapshot install.
    started = time.monotonic()
    cluster.start(lagging)
    cluster.wait_state(lagging, expected, timeout=20.0)
    record_timing(
        "compaction",
        "lagging node restarted to state installed from a snapshot",
        time.monotonic() - started,
    )
    assert (raft_dir(cluster, lagging) / "raft.dump").exists(), "no snapshot was installed"
    cluster.wait_ready(cluster.ids)

    # A crash of the whole cluster after compaction: state comes back from dump + journal.
    for node_id in cluster.ids:
        cluster.kill(node_id)
    started = time.monotonic()
    for node_id in cluster.ids:
        cluster.start(node_id)
    new_leader = cluster.wait_ready(cluster.ids, timeout=30.0)
    for node_id in cluster.ids:
        cluster.wait_state(node_id, expected, timeout=10.0)
    record_timing(
        "compaction",
        "full restart from dump + journal to state restored",
        time.monotonic() - started,
    )
    fresh = cluster.write_ok("POST", new_leader, "/v1/allocations", {"owner": "after/restart"})
    used = {a["address"] for a in expected["allocations"]}
    assert fresh["address"] not in used, fresh


# -- 6 (last, so that -x runs every other test first) ---------------------------------------------


@pytest.mark.parametrize("survivor_role", ["leader", "follower"])
def test_quorum_loss_write_fails_fast_and_reads_still_answer(
    cluster: LabCluster, survivor_role: str
) -> None:
    """Two of three nodes crash. A write to the survivor fails (503) in bounded time, reads
    still answer with the last committed state, and the survivor stops naming a leader.

    With a follower as the survivor the last check fails today: pysyncobj only starts an
    election (the one place a follower forgets its leader) while connected to some peer, and
    RaftCluster.status() / _wait_for_leader() trust `_getLeader()` as is, so a node cut off
    from every peer reports the dead leader (and `raftlb_raft_has_leader` 1) indefinitely, and
    its writes end as `timeout` ("may still be applied later") instead of `no_quorum`.
    """
    leader = agreed_leader(cluster, cluster.ids)
    cluster.write_ok("PUT", leader, "/v1/pools/main", POOL)
    cluster.write_ok("PUT", leader, "/v1/services/k/default/web", service())
    cluster.write_ok("POST", leader, "/v1/allocations", {"owner": "manual/one"})
    expected = cluster.state(leader)
    assert expected is not None
    for node_id in cluster.ids:
        cluster.wait_state(node_id, expected)

    survivor = leader if survivor_role == "leader" else cluster.followers(leader)[0]
    victims = [k for k in cluster.ids if k != survivor]
    for node_id in victims:
        cluster.kill(node_id)

    started = time.monotonic()
    resp = cluster.write("PUT", survivor, "/v1/services/k/default/lost", service(port=81))
    elapsed = time.monotonic() - started
    record_timing(f"quorum loss ({survivor_role} survives)", "write answered after", elapsed)
    assert resp.status_code == 503, f"{resp.status_code} {resp.text}"
    error = resp.json()["error"]
    assert error["code"] in ("no_quorum", "timeout"), error
    assert error["message"], error
    assert resp.headers.get("Retry-After"), resp.headers
    assert elapsed < cluster.write_timeout + 5.0

    # Reads still answer, with the last committed state (the failed write is not in it).
    assert cluster.state(survivor) == expected
    status = cluster.status(survivor)
    assert status is not None
    counts = (status["pools"], status["services"], status["allocations"])
    assert counts == (1, 1, 2), status  # allocations: the service's and manual/one
    # Fail safe: alone, the survivor neither claims nor keeps a leader. (The dead leader's
    # election timeout is 0.15-0.3 s and leader_fallback_timeout 0.3 s: 5 s is generous.)
    if not poll_quietly(lambda: cluster.leader_of(survivor) is None, 5.0):
        status = cluster.status(survivor)
        assert status is not None
        raft = status["raft"]
        pytest.fail(
            f"{survivor} has been alone for over 5 s (connected: {raft['connected']}, "
            f"has_quorum {raft['has_quorum']}) but still reports role {raft['role']!r} and "
            f"leader {raft['leader']!r} (killed: {victims}); leader_api_url "
            f"{status['leader_api_url']!r}"
        )
