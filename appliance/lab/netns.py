"""Building and removing a lab network with pyroute2: namespaces, bridge, veths, addresses.

`build(plan)` creates everything of a `LabPlan` or, on any failure, removes what it created.
`destroy(names)` kills every process inside the namespaces first (deleting a namespace does not
kill them), then deletes the namespaces; the veths and the bridge go with them. `NsThread` runs
Python code inside a namespace (sockets made there belong to it), which is how the host talks
to the lab's APIs without ever linking a namespace to the host's interfaces.
"""

from __future__ import annotations

import concurrent.futures
import os
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from pyroute2 import NetNS, netns

from appliance.lab.topology import NS_PREFIX, Host, LabPlan

NETNS_DIR = Path("/run/netns")
T = TypeVar("T")


class NetnsError(Exception):
    """A namespace operation failed; the message names the namespace and the step."""


def existing(prefix: str = NS_PREFIX) -> list[str]:
    """Names of the namespaces that start with `prefix`."""
    return sorted(n for n in netns.listnetns() if n.startswith(prefix))


@contextmanager
def _inside(name: str) -> Iterator[None]:
    netns.pushns(name)
    try:
        yield
    finally:
        netns.popns()


def _write_sysctls(name: str, sysctls: tuple[tuple[str, str], ...]) -> None:
    # /proc/sys/net belongs to the namespace of the task that opens it: enter, write, leave.
    with _inside(name):
        for key, value in sysctls:
            Path("/proc/sys", key).write_text(value)


def _configure_host(host: Host, link_to_switch: Callable[[Host], None]) -> None:
    link_to_switch(host)
    with NetNS(host.netns) as ns:
        (lo,) = ns.link_lookup(ifname="lo")
        ns.link("set", index=lo, state="up")
        for iface in host.interfaces:
            (idx,) = ns.link_lookup(ifname=iface.name)
            ns.link("set", index=idx, address=iface.mac)
            for addr in (iface.ipv4, iface.ipv6):
                ns.addr("add", index=idx, address=str(addr.ip), prefixlen=addr.network.prefixlen)
            ns.link("set", index=idx, state="up")
        for dst, gateway in host.routes4:
            ns.route("add", dst="0.0.0.0/0" if dst == "default" else dst, gateway=gateway)
        for dst, gateway in host.routes6:
            ns.route("add", dst="::/0" if dst == "default" else dst, gateway=gateway, family=10)


def build(plan: LabPlan, progress: Callable[[str], None] = lambda _: None) -> None:
    """Create the namespaces, bridge, links and addresses of `plan` (all or nothing)."""
    created: list[str] = []
    try:
        for name in plan.namespaces():
            if name in netns.listnetns():
                raise NetnsError(f"namespace {name} already exists: another lab uses this run id")
            netns.create(name)
            created.append(name)
        progress(f"created {len(created)} namespaces ({plan.switch_ns} and the hosts)")
        for host in plan.hosts:
            _write_sysctls(host.netns, host.sysctls)
        _write_sysctls(plan.switch_ns, (("net/ipv6/conf/default/accept_dad", "0"),))
        with NetNS(plan.switch_ns) as sw:
            sw.link(
                "add",
                ifname=plan.bridge,
                kind="bridge",
                br_stp_state=0,
                br_forward_delay=0,
                br_mcast_snooping=0,
            )
            (bridge,) = sw.link_lookup(ifname=plan.bridge)
            (lo,) = sw.link_lookup(ifname="lo")
            sw.link("set", index=lo, state="up")
            sw.link("set", index=bridge, state="up")

            def to_switch(host: Host) -> None:
                lan = host.interfaces[0]
                if lan.switch_port is None:
                    return
                sw.link(
                    "add",
                    ifname=lan.switch_port,
                    kind="veth",
                    peer={"ifname": lan.name, "net_ns_fd": host.netns},
                )
                (port,) = sw.link_lookup(ifname=lan.switch_port)
                sw.link("set", index=port, master=bridge, state="up")

            routers = [h for h in plan.hosts if h.kind == "router"]
            for router in routers:
                # The client's point-to-point link hangs off the router, not the switch.
                client = plan.host("client")
                with NetNS(router.netns) as rt:
                    rt.link(
                        "add",
                        ifname=router.interfaces[1].name,
                        kind="veth",
                        peer={"ifname": client.interfaces[0].name, "net_ns_fd": client.netns},
                    )
            for host in sorted(plan.hosts, key=lambda h: h.kind == "client"):
                _configure_host(host, to_switch)
        progress(f"wired {len(plan.hosts)} hosts to {plan.switch_ns}/{plan.bridge}")
    except BaseException:
        destroy(created)
        raise


def pids_in(name: str) -> list[int]:
    """Processes whose network namespace is `name` (what `ip netns pids` reports)."""
    try:
        target = os.stat(NETNS_DIR / name).st_ino
    except FileNotFoundError:
        return []
    out = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            if os.stat(f"/proc/{entry.name}/ns/net").st_ino == target:
                out.append(int(entry.name))
        except (FileNotFoundError, PermissionError, ProcessLookupError):
            continue
    return out


def kill_all_in(name: str, timeout: float = 5.0) -> int:
    """SIGKILL every process in namespace `name` (after a SIGCONT for frozen ones); wait."""
    pids = pids_in(name)
    for pid in pids:
        for signum in (signal.SIGKILL, signal.SIGCONT):
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                break
    deadline = time.monotonic() + timeout
    while pids_in(name) and time.monotonic() < deadline:
        time.sleep(0.02)
    return len(pids)


def destroy(names: list[str]) -> None:
    """Kill the processes inside, then delete the namespaces (missing ones are skipped)."""
    present = set(netns.listnetns())
    for name in names:
        if name in present:
            kill_all_in(name)
    for name in names:
        if name in present:
            try:
                netns.remove(name)
            except OSError as exc:
                raise NetnsError(f"cannot delete namespace {name}: {exc}") from exc


def set_link(name: str, ifname: str, up: bool) -> None:
    """Set an interface of namespace `name` up or down."""
    with NetNS(name) as ns:
        found = ns.link_lookup(ifname=ifname)
        if not found:
            raise NetnsError(f"no interface {ifname} in {name}")
        ns.link("set", index=found[0], state="up" if up else "down")


class NsThread:
    """A worker thread living inside a network namespace: `run(fn, ...)` calls fn there."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"ns-{name}", initializer=self._enter
        )

    def _enter(self) -> None:
        # setns(2) switches only this thread; flags=0 so a vanished namespace is an error.
        netns.setns(self.name, flags=0)

    def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return self._pool.submit(fn, *args, **kwargs).result()

    def submit(
        self, fn: Callable[..., T], *args: Any, **kwargs: Any
    ) -> concurrent.futures.Future[T]:
        """Start fn there and return at once (one call at a time: later ones queue)."""
        return self._pool.submit(fn, *args, **kwargs)

    def close(self) -> None:
        self._pool.shutdown(wait=True)
