"""A lab run: the namespace network, the agents, backends and router in it, and their crashes.

`NetLab.up` builds the network of a `LabPlan`, writes agent configs (shared with the loopback lab),
starts one agent per node namespace, a backend server per backend namespace and BIRD in the
router, and records every pid in RUN_DIR/lab.json. `down` kills them by pid, removes the
namespaces and the run dir; `down_all` does the same for leftovers of crashed runs.

Crash methods, as the failover benchmarks need them:
- kill:   SIGKILL of the agent's whole process group (a clean parent exit is not a crash);
- link:   the node's veth on the switch side goes down (the node is cut off, silently);
- freeze: SIGSTOP of every process in the node's namespace (thaw with SIGCONT).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from appliance.lab import LabError, netns, procs
from appliance.lab.configgen import NodeAddresses, cluster_config_data, write_secrets
from appliance.lab.routers import BFD_INTERVAL_MS, FRR_RUN, NODES_ASN, ROUTER_ASN, LabRouter
from appliance.lab.routers import router as make_router
from appliance.lab.topology import (
    API_PORT,
    BACKEND_HTTP_PORT,
    BACKEND_TCP_PORT,
    BACKEND_UDP_PORT,
    NS_PREFIX,
    RAFT_PORT,
    LabPlan,
    plan,
)
from appliance.secretfile import read_secret

# run id -> run dir, on tmpfs: tells `down --all` whose namespaces are still in use.
REGISTRY = Path("/run/raftlb-lab")
RUN_ID = re.compile(r"[0-9a-f]{6}")
DEFAULT_BASE = Path(os.environ.get("RAFTLB_LAB_DIR", "/tmp/raftlb-lab"))
STATE_FILE = "lab.json"
CRASH_METHODS = ("kill", "link", "freeze")
Progress = Callable[[str], None]


def require_root() -> None:
    if os.geteuid() != 0:
        raise LabError("the namespace lab needs root (network namespaces, veth, raw sockets)")


@dataclass
class NetLab:
    run_id: str
    dir: Path
    nodes: int
    backends: int
    router: bool
    # "agent-n1", "backend-b1", "bird" -> [pid, start time] (start time guards against reuse)
    pids: dict[str, list[int | None]] = field(default_factory=dict)
    router_kind: str = "bird"  # appliance.lab.routers.ROUTERS
    bfd: bool = False  # BFD between the nodes and the router (100 ms x 3)
    bgp6: bool = False  # each node also peers with the router over IPv6
    ibgp: bool = False  # the nodes are in the router's AS (LOCAL_PREF reaches it)
    vips_on_leader: str = "avoid"  # the agents' setting (appliance/config.py)

    @property
    def lab_router(self) -> LabRouter:
        return make_router(self.router_kind)

    @property
    def plan(self) -> LabPlan:
        return plan(self.run_id, self.nodes, self.backends, self.router)

    @property
    def token_file(self) -> Path:
        return self.dir / "api-token"

    def token(self) -> str:
        return read_secret(self.token_file)

    def api_url(self, node: str) -> str:
        return f"http://{self.plan.host(node).ipv4}:{API_PORT}"

    def node_names(self) -> list[str]:
        return [h.name for h in self.plan.of_kind("node")]

    def log_path(self, name: str) -> Path:
        return self.dir / "logs" / f"{name}.log"

    # -- state --------------------------------------------------------------------------------

    def save(self) -> None:
        data = {
            "run_id": self.run_id,
            "nodes": self.nodes,
            "backends": self.backends,
            "router": self.router,
            "router_kind": self.router_kind,
            "bfd": self.bfd,
            "bgp6": self.bgp6,
            "ibgp": self.ibgp,
            "vips_on_leader": self.vips_on_leader,
            "pids": self.pids,
        }
        tmp = self.dir / (STATE_FILE + ".tmp")
        tmp.write_text(json.dumps(data, indent=2))
        tmp.replace(self.dir / STATE_FILE)

    @classmethod
    def load(cls, run_dir: Path) -> NetLab:
        try:
            data = json.loads((run_dir / STATE_FILE).read_text())
        except FileNotFoundError:
            raise LabError(f"no lab in {run_dir}") from None
        return cls(
            run_id=data["run_id"],
            dir=run_dir,
            nodes=data["nodes"],
            backends=data["backends"],
            router=data["router"],
            pids=data["pids"],
            router_kind=data.get("router_kind", "bird"),
            bfd=data.get("bfd", False),
            bgp6=data.get("bgp6", False),
            ibgp=data.get("ibgp", False),
            vips_on_leader=data.get("vips_on_leader", "avoid"),
        )

    @classmethod
    def find(cls, run_id: str | None, base: Path = DEFAULT_BASE) -> NetLab:
        """The lab with this run id, or the only one running when None."""
        runs = list_runs(base)
        if run_id is None:
            if len(runs) != 1:
                raise LabError(
                    f"{len(runs)} labs under {base} ({', '.join(runs) or 'none'}): name one"
                )
            run_id = runs[0]
        if run_id not in runs:
            raise LabError(f"no lab {run_id!r} under {base} (have {', '.join(runs) or 'none'})")
        return cls.load(base / run_id)

    # -- building -----------------------------------------------------------------------------

    @classmethod
    def up(
        cls,
        nodes: int = 3,
        backends: int = 2,
        router: bool | str = False,
        base: Path = DEFAULT_BASE,
        progress: Progress = print,
        timing: str = "fast",
        start_agents: bool = True,
        bfd: bool = False,
        bgp6: bool = False,
        ibgp: bool = False,
        vips_on_leader: str = "avoid",
    ) -> NetLab:
        """Build a lab and start everything in it; on any failure, remove it all again."""
        require_root()
        started = time.monotonic()
        run_id = _new_run_id()
        run_dir = base / run_id
        run_dir.mkdir(parents=True)
        _register(run_id, run_dir)
        (run_dir / "logs").mkdir()
        kind = router if isinstance(router, str) else "bird"
        make_router(kind)  # an unknown kind fails before anything is built
        lab = cls(
            run_id=run_id,
            dir=run_dir,
            nodes=nodes,
            backends=backends,
            router=bool(router),
            router_kind=kind,
            bfd=bfd and bool(router),
            bgp6=bgp6 and bool(router),
            ibgp=ibgp and bool(router),
            vips_on_leader=vips_on_leader,
        )
        try:
            lab.save()
            progress(
                f"lab {run_id}: building {nodes} node(s), {backends} backend(s)"
                f"{f', a router ({kind})' if router else ''} in namespaces {NS_PREFIX}{run_id}-*"
            )
            netns.build(lab.plan, progress)
            lab._write_configs(timing)
            for host in lab.plan.of_kind("backend"):
                lab.start_backend(host.name)
            if router:
                lab.lab_router.start(lab)
            if start_agents:
                for node in lab.node_names():
                    lab.start_agent(node)
                progress(f"started {nodes} agent(s); waiting for a leader")
                leader = lab.wait_leader(timeout=60)
                progress(f"leader {leader} elected ({time.monotonic() - started:.2f}s after start)")
            lab._wait_backends()
        except BaseException:
            progress(f"lab {run_id}: start failed, removing it")
            lab.down(progress=progress)
            raise
        return lab

    def _write_configs(self, timing: str) -> None:
        password_file, token_file = write_secrets(self.dir)
        addresses = [
            NodeAddresses(h.name, f"{h.ipv4}:{RAFT_PORT}", f"{h.ipv4}:{API_PORT}")
            for h in self.plan.of_kind("node")
        ]
        data = cluster_config_data(
            addresses,
            self.dir,
            password_file,
            token_file,
            timing,
            extra={
                "data_interface": "eth0",
                "announce": "l2",
                "forward": "nftables",
                "vips_on_leader": self.vips_on_leader,
            },
        )
        if self.router:
            router = str(self.plan.host("router").ipv4)
            for name, config in data.items():
                config["announce"] = "l2+bgp"
                config["bgp"] = {
                    "asn": ROUTER_ASN if self.ibgp else NODES_ASN,
                    "peers": [{"address": router, "asn": ROUTER_ASN, "hold_time": 3}],
                    "next_hop6": str(self.plan.host(name).ipv6),
                }
                if self.bfd:
                    config["bgp"]["bfd"] = {"interval_ms": BFD_INTERVAL_MS, "multiplier": 3}
                if self.bgp6:  # a second session, over IPv6, from the node's IPv6 address
                    router6 = str(self.plan.host("router").ipv6)
                    config["bgp"]["peers"].append({"address": router6, "asn": ROUTER_ASN})
                    config["bgp"]["local_address6"] = str(self.plan.host(name).ipv6)
        for name, config in data.items():
            path = self.config_path(name)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(yaml.safe_dump(config, sort_keys=False))

    def config_path(self, node: str) -> Path:
        return self.dir / node / "agent.yaml"

    def spawn(self, key: str, host: str, argv: list[str]) -> int:
        """Start argv inside host's namespace in its own process group; log to logs/KEY.log."""
        ns = self.plan.host(host).netns
        with open(self.log_path(key), "ab") as log:
            proc = subprocess.Popen(
                ["ip", "netns", "exec", ns, *argv],  # ip execs argv: the pid is argv's
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=self.dir,
            )
        self.pids[key] = [proc.pid, procs.start_time(proc.pid)]
        self.save()
        return proc.pid

    def start_agent(self, node: str) -> int:
        if self.agent_alive(node):
            raise LabError(f"the agent of {node} already runs (pid {self.pid(f'agent-{node}')})")
        argv = [
            sys.executable,
            "-m",
            "appliance.cli",
            "agent",
            "--config",
            str(self.config_path(node)),
        ]
        return self.spawn(f"agent-{node}", node, argv)

    def start_backend(self, name: str) -> None:
        self.spawn(
            f"backend-{name}",
            name,
            [
                sys.executable,
                "-m",
                "appliance.lab.backend",
                "--name",
                name,
                "--bind",
                "::",
                "--http-port",
                str(BACKEND_HTTP_PORT),
                "--tcp-port",
                str(BACKEND_TCP_PORT),
                "--udp-port",
                str(BACKEND_UDP_PORT),
            ],
        )

    def _wait_backends(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        for host in self.plan.of_kind("backend"):
            while (
                f"backend {host.name} ready"
                not in self.log_path(f"backend-{host.name}").read_text()
            ):
                if time.monotonic() > deadline:
                    raise LabError(
                        f"backend {host.name} not ready; see "
                        f"{self.log_path(f'backend-{host.name}')}"
                    )
                time.sleep(0.02)

    # -- looking at it --------------------------------------------------------------------------

    def pid(self, key: str) -> int | None:
        entry = self.pids.get(key)
        return entry[0] if entry else None

    def alive(self, key: str) -> bool:
        entry = self.pids.get(key)
        return entry is not None and procs.alive(entry[0], entry[1])

    def agent_alive(self, node: str) -> bool:
        return self.alive(f"agent-{node}")

    def in_ns(self, host: str) -> netns.NsThread:
        """A thread inside host's namespace (close it when done)."""
        return netns.NsThread(self.plan.host(host).netns)

    def api(
        self,
        node: str,
        method: str,
        path: str,
        body: Any = None,
        via: str = "client",
        timeout: float = 2.0,
    ) -> Any:
        """`node`'s API asked from inside `via`'s namespace: the JSON answer, None on failure."""
        return self.api_many([(node, method, path, body)], via, timeout)[0]

    def api_many(
        self, calls: list[tuple[str, str, str, Any]], via: str = "client", timeout: float = 2.0
    ) -> list[Any]:
        """Several API calls (node, method, path, body) from one thread inside `via`."""
        import requests

        headers = {"Authorization": f"Bearer {self.token()}"}

        def ask() -> list[Any]:
            out = []
            for node, method, path, body in calls:
                try:
                    resp = requests.request(
                        method,
                        f"{self.api_url(node)}{path}",
                        json=body,
                        timeout=timeout,
                        headers=headers,
                    )
                    out.append(resp.json() if resp.ok else None)
                except (requests.RequestException, ValueError):
                    out.append(None)
            return out

        thread = self.in_ns(via)
        try:
            return thread.run(ask)
        finally:
            thread.close()

    def next_hops(self, prefix: str) -> set[str]:
        """The gateways of the router's kernel route to `prefix` (empty: no route)."""
        family = "-6" if ":" in prefix else "-4"
        shown = self.exec(
            "router", ["ip", "-j", family, "route", "show", prefix], capture_output=True, text=True
        )
        found: set[str] = set()
        for route in json.loads(shown.stdout or "[]"):
            if route.get("gateway"):
                found.add(route["gateway"])
            found.update(h["gateway"] for h in route.get("nexthops", []) if h.get("gateway"))
        return found

    def statuses(self, via: str = "client", timeout: float = 1.0) -> dict[str, Any]:
        """Each node's /v1/status, asked from inside `via`'s namespace (None: no answer)."""
        nodes = self.node_names()
        calls = [(node, "GET", "/v1/status", None) for node in nodes]
        return dict(zip(nodes, self.api_many(calls, via, timeout), strict=True))

    def wait_leader(self, timeout: float = 30.0, exclude: tuple[str, ...] = ()) -> str:
        """Wait until the running nodes agree on a leader not in `exclude`; return it."""
        deadline = time.monotonic() + timeout
        while True:
            running = [n for n in self.node_names() if self.agent_alive(n) and n not in exclude]
            statuses = {n: s for n, s in self.statuses().items() if n in running}
            leaders = {s["raft"]["leader"] if s else None for s in statuses.values()}
            if running and len(leaders) == 1 and None not in leaders:
                leader = str(leaders.pop())
                if leader not in exclude:
                    return leader
            dead = [
                n
                for n in self.node_names()
                if f"agent-{n}" in self.pids and not self.agent_alive(n) and n not in exclude
            ]
            if time.monotonic() > deadline:
                raise LabError(
                    f"no agreed leader after {timeout:g}s (leaders seen {sorted(map(str, leaders))}"
                    f"{', dead agents ' + ', '.join(dead) if dead else ''}); see {self.dir}/logs"
                )
            time.sleep(0.05)

    def exec(self, host: str, argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[Any]:
        """Run a command inside host's namespace with the lab's API settings in its env."""
        node = host if host in self.node_names() else self.node_names()[0]
        env = {
            **os.environ,
            "RAFTLB_API": self.api_url(node),
            "RAFTLB_TOKEN_FILE": str(self.token_file),
            # `raftlb` from the same installation as this process, venv or not.
            "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
        }
        return subprocess.run(
            ["ip", "netns", "exec", self.plan.host(host).netns, *argv],
            env=env,
            check=False,
            **kwargs,
        )

    # -- crashes ------------------------------------------------------------------------------

    def crash(self, node: str, method: str) -> None:
        """Crash `node` by `method` (kill, link or freeze)."""
        host = self.plan.host(node)
        if method == "kill":
            pid = self.pid(f"agent-{node}")
            if pid is None or not self.agent_alive(node):
                raise LabError(f"the agent of {node} is not running")
            os.killpg(pid, signal.SIGKILL)
            procs.reap(pid)
        elif method == "link":
            port = host.interfaces[0].switch_port
            assert port is not None
            netns.set_link(self.plan.switch_ns, port, up=False)
        elif method == "freeze":
            for pid in netns.pids_in(host.netns):
                os.kill(pid, signal.SIGSTOP)
        else:
            raise LabError(f"crash method must be one of {CRASH_METHODS}, got {method!r}")

    def recover(self, node: str, method: str) -> None:
        """Undo a crash: restart the agent, bring the link up, or thaw."""
        host = self.plan.host(node)
        if method == "kill":
            self.start_agent(node)
        elif method == "link":
            port = host.interfaces[0].switch_port
            assert port is not None
            netns.set_link(self.plan.switch_ns, port, up=True)
        elif method == "freeze":
            for pid in netns.pids_in(host.netns):
                os.kill(pid, signal.SIGCONT)
        else:
            raise LabError(f"crash method must be one of {CRASH_METHODS}, got {method!r}")

    # -- tearing down -------------------------------------------------------------------------

    def down(self, progress: Progress = print, keep_logs: bool = False) -> None:
        """Kill every process by pid, delete the namespaces, remove the run dir."""
        for key in list(self.pids):
            pid = self.pid(key)
            if pid is None or not self.alive(key):
                continue
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
                os.kill(pid, signal.SIGCONT)
            procs.reap(pid)
        netns.destroy(self.plan.namespaces())
        if self.router:
            self.lab_router.cleanup(self)
        (REGISTRY / self.run_id).unlink(missing_ok=True)
        if keep_logs:
            progress(f"lab {self.run_id} removed; logs kept in {self.dir}/logs")
            (self.dir / STATE_FILE).unlink(missing_ok=True)
        else:
            shutil.rmtree(self.dir, ignore_errors=True)
            progress(f"lab {self.run_id} removed")


def _new_run_id() -> str:
    taken = {n[len(NS_PREFIX) :].split("-")[0] for n in netns.existing()}
    while True:
        run_id = secrets.token_hex(3)
        if run_id not in taken:
            return run_id


def list_runs(base: Path = DEFAULT_BASE) -> list[str]:
    if not base.is_dir():
        return []
    return sorted(p.name for p in base.iterdir() if (p / STATE_FILE).is_file())


def _register(run_id: str, run_dir: Path) -> None:
    REGISTRY.mkdir(parents=True, exist_ok=True)
    (REGISTRY / run_id).write_text(str(run_dir))


def _owner_alive(run_id: str, base: Path) -> bool:
    """True if run_id belongs to a live lab under another base dir (not ours to remove)."""
    try:
        run_dir = Path((REGISTRY / run_id).read_text())
    except OSError:
        return False
    return run_dir.parent.resolve() != base.resolve() and (run_dir / STATE_FILE).is_file()


def down_all(base: Path = DEFAULT_BASE, progress: Progress = print) -> int:
    """Remove every lab under `base`, then leftovers of crashed runs: `rlb-*` namespaces (and
    their processes) whose lab is gone, and run dirs without a lab. Labs that live under
    another base dir are left alone, so parallel test runs do not remove each other's."""
    count = 0
    for run_id in list_runs(base):
        NetLab.load(base / run_id).down(progress)
        count += 1
    leftovers = [
        name
        for name in netns.existing()
        if not _owner_alive(name[len(NS_PREFIX) :].split("-")[0], base)
    ]
    if leftovers:
        progress(f"removing {len(leftovers)} leftover namespace(s): {', '.join(leftovers)}")
        netns.destroy(leftovers)
    for name in leftovers:
        (REGISTRY / name[len(NS_PREFIX) :].split("-")[0]).unlink(missing_ok=True)
    if base.is_dir():
        for path in base.iterdir():
            if path.is_dir() and RUN_ID.fullmatch(path.name):
                shutil.rmtree(path, ignore_errors=True)
    if FRR_RUN.is_dir():  # FRR's runtime dirs of labs that are gone
        for path in FRR_RUN.iterdir():
            if not (REGISTRY / path.name).exists():
                shutil.rmtree(path, ignore_errors=True)
    return count
