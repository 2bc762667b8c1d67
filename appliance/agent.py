"""`raftlb agent`: the composition root of one appliance node.

`run_agent` builds the object graph in one place (Raft cluster, metrics, API) and runs the loops
of this node: the HTTP API, the periodic member report, and the one-time apply of the pools and
services written in the config file. SIGTERM or SIGINT stops it cleanly.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import logging
import math
import os
import socket
import ssl
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as dist_version
from pathlib import Path
from typing import Any

from aiohttp import web

from announce.bfd import BfdDaemon, BfdPeer, BfdTiming
from announce.bgp import BgpAnnouncer
from announce.l2 import L2Announcer
from appliance import gcpolicy, priority
from appliance.api.app import ApiContext, build_app
from appliance.api.guard import ConnectionGuard, api_connection_limit
from appliance.backoff import Backoff
from appliance.bgpsession import session_of
from appliance.config import (
    AgentConfig,
    BgpConfig,
    L2Config,
    TlsConfig,
    check_host,
    firewall,
    pool_checker,
    split_host_port,
)
from appliance.dataplane.nft import DataPlane, NftApplier, set_forwarding_sysctls
from appliance.health import HealthChecker
from appliance.helper_book import HelperBook, HelperError
from appliance.leases import Announcer, NullAnnouncer, OwnershipLoops
from appliance.metrics import Metrics
from appliance.model import MemberReport, Pool, ServiceSpec, format_field_errors
from appliance.routing import routes
from appliance.secretfile import read_secret
from appliance.stopper import Stopper
from raft.cluster import RaftCluster, RaftSettings, SubmitError
from raft.commands import Batch, ReportMember, batch

log = logging.getLogger("raftlb.agent")


def runtime_dir() -> Path:
    """systemd's RuntimeDirectory= (the image's unit), else /run/raftlb (the agent as root)."""
    given = os.environ.get("RUNTIME_DIRECTORY", "")
    return Path(given.split(":")[0]) if given else Path("/run/raftlb")


def package_version() -> str:
    try:
        return dist_version("raftlb")
    except PackageNotFoundError:
        return "0+unknown"


class AgentStartError(Exception):
    """The agent cannot start; the message says what to fix."""


def raft_settings(config: AgentConfig) -> RaftSettings:
    return RaftSettings(
        node_id=config.node_id,
        address=config.raft.address,
        bind_address=config.raft.bind,
        peers=config.peer_map(),
        password=read_secret(config.raft.password_file),
        data_dir=config.data_dir / "raft",
        timing=config.timing_profile(),
        log_compaction_entries=config.raft.log_compaction_entries,
        log_compaction_interval=config.raft.log_compaction_interval,
    )


def check_runtime(config: AgentConfig, settings: RaftSettings) -> None:
    """Fail early and clearly on what pysyncobj would only retry or crash on: an unwritable
    data dir, or a Raft port another process holds (pysyncobj retries binding forever)."""
    try:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        probe = settings.data_dir / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise AgentStartError(
            f"data_dir {config.data_dir}: {exc.strerror or exc}; the agent needs to write its "
            "Raft journal there"
        ) from None
    host, port = split_host_port(settings.bind_address or settings.address)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            field = "raft.bind" if settings.bind_address else "raft.address"
            raise AgentStartError(
                f"{field} {host}:{port}: {exc.strerror}; is another agent running, or is the "
                "address not on this machine?"
            ) from None


def start_heartbeats(
    config: AgentConfig,
    loops: OwnershipLoops,
    password: str,
    stop: asyncio.Event,
    failure: list[str],
) -> HelperBook | None:
    """The heartbeat helper process of quorum-promise leases (appliance/heartbeat_helper.py),
    on the Raft port's number over UDP; it takes the place of the loops' own book. If it
    dies, the agent stops (`stop`, the reason in `failure`)."""
    if loops.book is None:
        return None
    timing = config.timing_profile()
    bind = config.raft.bind or config.raft.address
    host, port = split_host_port(bind)
    settings = {
        "node": config.node_id,
        "members": loops.members,
        "incarnation": loops.incarnation,
        "window": timing.promise_window,
        "drift": timing.drift,
        "raft_grace": timing.raft_grace,
        "bind": [host, port],
        "peers": {
            node: list(split_host_port(address))
            for node, address in config.peer_map().items()
            if node != config.node_id
        },
        "password": password,
        "period": timing.heartbeat_period,
        "log_level": config.log_level,
    }
    loop = asyncio.get_running_loop()

    def on_lease() -> None:  # the relay thread: hand over to the event loop
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(loops.wake)

    def on_exit() -> None:
        failure.append("the heartbeat helper exited")
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(stop.set)

    try:
        helper = HelperBook(settings, timing.promise_window, loops.extend_lease, on_lease, on_exit)
    except HelperError as exc:
        field = "raft.bind" if config.raft.bind else "raft.address"
        raise AgentStartError(
            f"{field} {bind}: UDP (lease heartbeats): {exc}; is another agent running?"
        ) from None
    loops.book = helper
    # The helper's view takes no lock (its lease end is read from the cell), as the
    # announcer's lock held around the source requires.
    if isinstance(loops.announcer, L2Announcer):
        loops.announcer.lease_source = loops.current_lease
    return helper


API_BACKLOG = 1024


def _deepen_accept_queue(sockets: Iterable[Any]) -> None:
    """The kernel's accept queue of the API's listening sockets to API_BACKLOG.

    asyncio's default is 100: under a flood of connections (the guard then evicts idle ones)
    the kernel dropped a legitimate client's SYN, which it sends again only after 1 and 3 s.
    Not through create_server's `backlog`: asyncio also accepts that many connections in one
    go, and 1,000 accepts at once held the event loop (and the GIL) long enough for the Raft
    tick to miss heartbeats (elections in 2 of 5 runs of tests/integration/test_hostile_api).
    listen() again on a listening socket only changes its queue.
    """
    for listening in sockets:
        with socket.socket(fileno=os.dup(listening.fileno())) as same:
            same.listen(API_BACKLOG)


def tls_context(tls: TlsConfig | None) -> ssl.SSLContext | None:
    if tls is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(tls.cert_file), str(tls.key_file))
    return context


def static_commands(pools: Sequence[Pool], services: Sequence[ServiceSpec]) -> Batch | None:
    """The config's pools and services as one batch, applied at start (None: there are none)."""
    if not pools and not services:
        return None
    return batch(pools, services)


async def _report_loop(
    node: str, raft_address: str, api_url: str, period: float, metrics: Metrics, started_at: float
) -> None:
    """Commit this node's report (API URL, version) periodically; warn once per outage."""
    failing = False
    while True:
        report = MemberReport(
            node=node,
            raft_address=raft_address,
            api_url=api_url,
            version=package_version(),
            started_at=started_at,
            reported_at=time.time(),
        )
        try:
            await metrics.submit(ReportMember(report=report), timeout=max(period, 1.0))
            if failing:
                log.info("member report committed again: quorum is back")
            failing = False
        except SubmitError as exc:
            if not failing:
                log.warning("cannot commit member report: %s", exc.message)
            failing = True
        await asyncio.sleep(period)


async def _watch_raft(cluster: RaftCluster, period: float = 0.2) -> None:
    """Log every change of leader and of quorum, so failovers show in the agent's log."""
    leader: str | None = "?"
    quorum: bool | None = None
    while True:
        status = cluster.status()
        if status.leader != leader:
            if status.leader is None:
                log.warning(
                    "no Raft leader (term %d): writes fail with 503 until a majority of the "
                    "members reach each other; connected: %s",
                    status.term,
                    ", ".join(k for k, up in sorted(status.connected.items()) if up),
                )
            else:
                log.info(
                    "Raft leader is %s (term %d)%s",
                    status.leader,
                    status.term,
                    " - this node" if status.role == "leader" else "",
                )
            leader = status.leader
        if status.has_quorum != quorum:
            if not status.has_quorum:
                log.warning("this node does not reach a majority of the members")
            quorum = status.has_quorum
        await asyncio.sleep(period)


async def _apply_static(
    pools: Sequence[Pool], services: Sequence[ServiceSpec], write_timeout: float, metrics: Metrics
) -> None:
    """Apply the config file's pools and services once, retrying until there is a quorum."""
    command = static_commands(pools, services)
    if command is None:
        return
    retry, failures = Backoff(first=0.5, cap=10.0), 0
    while True:
        try:
            result = await metrics.submit(command, write_timeout)
        except SubmitError as exc:
            failures += 1
            delay = retry.delay(failures)
            log.info("static config waits for quorum (%s); retrying in %.1fs", exc.code, delay)
            await asyncio.sleep(delay)
            continue
        if result.get("ok"):
            log.info(
                "applied %d pool(s) and %d service(s) from the config file",
                len(pools),
                len(services),
            )
        else:
            err = result.get("error", {})
            log.error(
                "the pools/services in the config file were refused, nothing of them applied: "
                "%s %s; fix the config (or the conflicting objects in the API) and restart",
                err.get("message"),
                err.get("details") or "",
            )
        return


class BgpRoutes:
    """Turns the reconciler's routed VIPs into routes with this node's next hops."""

    def __init__(self, bgp: BgpConfig, raft_address: str, data_dir: Path, node_id: str) -> None:
        session = session_of(bgp, raft_address)
        peers = session.peers
        # Without a next hop of a family, its VIPs are not announced: an IPv6-only speaker
        # does not make its router id (possibly no address of its own) a next hop.
        v6_only = isinstance(bgp.local_address, ipaddress.IPv6Address)
        self.next_hop4 = bgp.next_hop4 or (None if v6_only else bgp.local4(session.router_id))
        self.next_hop6 = bgp.next_hop6 or bgp.local6()
        self.announcer = BgpAnnouncer(session, data_dir / "exabgp")
        self.bfd: BfdDaemon | None = None
        if bgp.bfd is not None:
            sessions = [
                BfdPeer(p.address, p.local_address)
                for p, wanted in zip(peers, bgp.peers, strict=True)
                if wanted.bfd
            ]
            timing = BfdTiming(bgp.bfd.interval_ms, bgp.bfd.multiplier)
            # A short path for BIRD's control socket (108 bytes at most), one dir per data_dir
            # as two labs' n1 share a host.
            tag = hashlib.blake2b(str(data_dir.resolve()).encode(), digest_size=4).hexdigest()
            run = runtime_dir() / f"bfd-{node_id}-{tag}"
            self.bfd = BfdDaemon(sessions, session.router_id, timing, run) if sessions else None
        # LOCAL_PREF is an iBGP attribute: an eBGP router never sees it (RFC 4271 5.1.5).
        self.ibgp = bgp.ibgp()
        self._warned_local_pref: set[str] = set()

    async def start(self) -> None:
        await self.announcer.start()
        if self.bfd is not None:
            await self.bfd.start()

    async def close(self) -> None:
        """Withdraw (exabgp) first; BFD goes last, so the router never sees a node silent
        while its withdrawals are on their way."""
        await self.announcer.close()
        if self.bfd is not None:
            await self.bfd.close()

    def status(self) -> dict[str, Any]:
        out = self.announcer.status()
        out["bfd"] = self.bfd.status() if self.bfd is not None else None
        return out

    def set(self, routed: Mapping[str, Pool]) -> None:
        if not self.ibgp:
            for pool in {p.name: p for p in routed.values()}.values():
                local_pref = pool.bgp.local_pref if pool.bgp is not None else None
                if local_pref is not None and pool.name not in self._warned_local_pref:
                    self._warned_local_pref.add(pool.name)
                    log.warning(
                        "pool %r sets bgp.local_pref, but every BGP peer of this node is eBGP, "
                        "which never carries it; use med (or communities the router maps to a "
                        "preference) instead",
                        pool.name,
                    )
        self.announcer.set(routes(routed, self.next_hop4, self.next_hop6))


def build_announcer(interface: str | None, l2: L2Config | None) -> Announcer:
    """The layer-2 announcer on the data interface (`l2` None: no pool announces by layer 2)."""
    if l2 is None or interface is None:
        return NullAnnouncer()
    try:
        return L2Announcer(
            interface,
            refresh_interval=l2.refresh_interval or math.inf,
            burst=l2.burst,
            repeats=tuple(l2.repeats),
        )
    except (OSError, ValueError) as exc:
        raise AgentStartError(
            f"announce: l2 on data_interface {interface}: {exc} "
            "(the agent needs CAP_NET_RAW and an Ethernet interface)"
        ) from None


def start_dataplane(config: AgentConfig) -> DataPlane:
    """The forwarding tables with the appliance's firewall, loaded before the Raft and API
    ports open (they are then never open to everyone), and before anything else runs: the
    first load also loads the kernel's nftables modules, which took an emulated VM 14 s."""
    for problem in set_forwarding_sysctls():
        log.warning("%s", problem)
    rules, notes = firewall(config)
    for note in notes:
        log.warning("firewall: %s", note)
    dataplane = DataPlane(NftApplier(), rules)
    dataplane.repair()  # an error is logged and retried by the reconciler
    return dataplane


async def serve(
    config: AgentConfig,
    cluster: RaftCluster,
    token: str,
    dataplane: DataPlane | None,
    stopper: Stopper,
) -> None:
    """Run the API and the node's loops until SIGTERM/SIGINT (`stopper`'s signals)."""
    metrics = Metrics(cluster)
    cluster.observe(
        applied=metrics.applied,
        tick_lag=metrics.tick_lag_seconds.observe,
        journal_sync=metrics.journal_sync_seconds.observe,
    )
    health = _health_checker(dataplane, metrics)
    bgp = None
    if config.announces_bgp and config.bgp:
        bgp = BgpRoutes(config.bgp, config.raft.address, config.data_dir, config.node_id)
    if bgp is not None:
        await bgp.start()
        metrics.watch_bgp(bgp.status)
    announcer = build_announcer(config.data_interface, config.l2 if config.announces_l2 else None)
    l2 = announcer if isinstance(announcer, L2Announcer) else None
    if l2 is not None:
        metrics.watch_l2(l2.interface, l2.stats)
    loops = OwnershipLoops(
        cluster,
        metrics,
        list(config.peer_map()),
        config.timing_profile(),
        announcer,
        dataplane=dataplane,
        health=health,
        bgp=bgp,
        spare_leader=config.vips_on_leader == "avoid",
    )
    if health is not None:
        health.on_change = loops.wake  # a backend up or down: re-render its VIP now
        metrics.watch_health(health, cluster)
    stop = asyncio.Event()
    failure: list[str] = []  # why the agent stopped on its own, if it did
    heartbeats = start_heartbeats(config, loops, cluster.settings.password, stop, failure)
    guard = ConnectionGuard(max_connections=api_connection_limit())
    ctx = ApiContext(
        guard=guard,
        cluster=cluster,
        metrics=metrics,
        token=token,
        peers=config.peer_map(),
        version=package_version(),
        write_timeout=config.api.write_timeout,
        lease_ages=loops.lease_ages,
        warming=loops.warming_nodes,
        pool_check=pool_checker(config),
        backend_health=health.of_service if health is not None else None,
        backend_healthy=health.healthy if health is not None else None,
        health_version=health.version_of if health is not None else None,
        dataplane_status=dataplane.status if dataplane is not None else None,
        bgp_status=bgp.status if bgp is not None else None,
        l2_status=l2.status if l2 is not None else None,
    )
    try:
        runner, server = await _start_api(config, ctx, guard)
    except AgentStartError:
        if heartbeats is not None:
            heartbeats.close()
        raise

    loop = asyncio.get_running_loop()
    stopper.attach(lambda: loop.call_soon_threadsafe(stop.set), _silencer(l2, heartbeats))

    def on_change() -> None:  # on pysyncobj's tick thread: hand over, never block it
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(loops.wake)

    cluster.state.on_change = on_change
    tasks = _start_tasks(config, cluster, loops, metrics)
    try:
        await stop.wait()
        log.info("stopping")
    finally:
        cluster.state.on_change = None
        server.close()  # no new connections; those open are closed by the runner
        await _shut_down(tasks, loops, bgp, health)
        if heartbeats is not None:
            heartbeats.close()
        await runner.cleanup()
    if failure:
        raise AgentStartError(
            f"{failure[0]}; stopped so that the service manager starts the agent again"
        )


def _health_checker(dataplane: DataPlane | None, metrics: Metrics) -> HealthChecker | None:
    """Backends are checked where this node forwards to them."""
    if dataplane is None:
        return None
    dataplane.observe = lambda kind, seconds: metrics.ruleset_seconds.labels(kind).observe(seconds)
    return HealthChecker()


def _start_tasks(
    config: AgentConfig, cluster: RaftCluster, loops: OwnershipLoops, metrics: Metrics
) -> list[asyncio.Task[Any]]:
    return [
        asyncio.create_task(loops.reconcile_loop(), name="reconcile"),
        asyncio.create_task(loops.renew_loop(), name="lease-renew"),
        asyncio.create_task(loops.leader_loop(), name="leader"),
        asyncio.create_task(
            _report_loop(
                config.node_id,
                config.raft.address,
                config.api.public_url(),
                config.timing_profile().report_period,
                metrics,
                time.time(),
            ),
            name="member-report",
        ),
        asyncio.create_task(
            _apply_static(config.pools, config.services, config.api.write_timeout, metrics),
            name="static-config",
        ),
        asyncio.create_task(_watch_raft(cluster), name="raft-watch"),
        asyncio.create_task(gcpolicy.freeze_loop(), name="gc-freeze"),
    ]


def _silencer(l2: L2Announcer | None, heartbeats: HelperBook | None) -> Callable[[], None]:
    """What the stopper's thread does at once: answer nothing more, promise nothing more."""

    def silence() -> None:
        if l2 is not None:
            l2.silence()
        if heartbeats is not None:
            heartbeats.silence()  # the peers give up within their window: VIPs move

    return silence


async def _start_api(
    config: AgentConfig, ctx: ApiContext, guard: ConnectionGuard
) -> tuple[web.AppRunner, asyncio.Server]:
    # A stop waits at most 2 s for requests in progress (aiohttp's default is 60 s); an idle
    # keep-alive connection is closed after the guard's idle time (aiohttp's: an hour).
    runner = web.AppRunner(
        build_app(ctx),
        access_log=None,
        handle_signals=False,
        shutdown_timeout=2.0,
        keepalive_timeout=guard.idle,
    )
    await runner.setup()
    host, port = split_host_port(config.api.listen)
    try:
        # Not aiohttp's TCPSite: every connection goes through the guard's protocol.
        server = await asyncio.get_running_loop().create_server(
            guard.factory(runner.server),  # type: ignore[arg-type]
            host or None,
            port,
            ssl=tls_context(config.api.tls),
            reuse_address=True,
        )
        _deepen_accept_queue(server.sockets)
    except OSError as exc:
        await runner.cleanup()
        raise AgentStartError(
            f"api.listen {config.api.listen}: {exc.strerror}; is another agent running?"
        ) from None
    log.info("API listening on %s (%s)", config.api.listen, config.api.public_url())
    return runner, server


async def _shut_down(
    tasks: list[asyncio.Task[Any]],
    loops: OwnershipLoops,
    bgp: BgpRoutes | None,
    health: HealthChecker | None,
) -> None:
    """Withdraw BGP routes first (routers move traffic away), then stop every loop, within
    bounded time: a stop never waits on a quorum or a peer."""
    if bgp is not None:
        await bgp.close()
    for task in tasks:
        task.cancel()
    # In-flight renewals and acknowledgements go too.
    leftovers = [*tasks, *loops.cancel_inflight()]
    if leftovers:
        _, pending = await asyncio.wait(leftovers, timeout=5.0)
        if pending:
            log.warning("stopping: %d task(s) did not finish within 5 s", len(pending))
    loops.announcer.close()
    if health is not None:
        await health.close()


def run_agent(config: AgentConfig) -> None:
    """Start the agent from a validated config; raise AgentStartError if it cannot run."""
    problems = check_host(config)
    if problems:
        raise AgentStartError("refusing to start:\n  " + "\n  ".join(format_field_errors(problems)))
    token = read_secret(config.api.token_file)
    settings = raft_settings(config)
    check_runtime(config, settings)
    log.info(
        "node %s: raft %s, peers %s, timing %s, data %s",
        config.node_id,
        config.raft.address,
        ", ".join(f"{k}={v}" for k, v in sorted(settings.peers.items())),
        config.timing,
        settings.data_dir,
    )
    # pysyncobj's tick thread gives the GIL up at every socket and journal call and waits for it
    # again each time: with another thread busy (an API answer, a reconcile over thousands of
    # services) every wait lasted up to the 5 ms switch interval, and one tick with dozens of
    # calls took a third of a second, past the election timeout. 1 ms keeps ticks short.
    sys.setswitchinterval(0.001)
    gcpolicy.install()
    # From here a signal stops the agent within STOP_BOUND, whatever is running.
    stopper = Stopper()
    stopper.install()
    dataplane = start_dataplane(config) if config.forward == "nftables" else None
    try:
        # Created on the main thread: pysyncobj's tick thread stops when its creator exits.
        cluster = RaftCluster(settings)
        priority.raise_priority(cluster.tick_thread_id())
    except BaseException:
        if dataplane is not None:
            dataplane.stop()
        stopper.finished()
        raise
    try:
        asyncio.run(serve(config, cluster, token, dataplane, stopper))
    finally:
        cluster.close()
        if dataplane is not None and dataplane.loaded:
            dataplane.stop()  # serve() failed before its loops ran (they remove the tables)
        if stopper.requested_at is not None:
            took = time.monotonic() - stopper.requested_at
            log.info("stopped %.2f s after the signal", took)
        else:
            log.info("stopped")
        stopper.finished()
