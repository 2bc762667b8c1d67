"""The layer-2 announcer on a real (namespaced) LAN: GARP/NA, answers, lease lapse, takeover, close.

Each test builds its own switch (bridge) + n1 + n2 + client with prefix `rlbt-<random>-`, runs
`L2Announcer`s inside n1/n2 (on an `NsThread`, or as a process for the freeze test) and looks
from the client: its neighbour table (rtnetlink events, timestamped) and a raw socket that sends
ARP requests / NS with a unique id each (the id is the sender MAC, so every reply names the
request it answers; the client socket is promiscuous to see them).

Client sysctls set here: arp_accept=1, and IPv6 forwarding=1 with accept_untracked_na=1, so a GARP
or unsolicited NA creates an entry the client never had (Linux creates one from an unsolicited NA
only on a router, whatever accept_untracked_na says); updating an existing entry needs none of
them. Nodes have the lab's
arp_ignore=1/arp_announce=2 and the VIPs are on no interface, so only the announcer can answer.
Figures are printed (run with -s to see them).
"""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import signal
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path
from typing import Any

import pytest

from announce import frames
from announce.l2 import L2Announcer
from appliance.lab import netns, topology
from appliance.lab.neighask import NeighbourAsker
from tests.support.waiting import until

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(os.geteuid() != 0, reason="builds network namespaces: needs root"),
]


VIP4 = IPv4Address("192.0.2.210")
VIP6 = IPv6Address("2001:db8:1::210")
ONLY_N1 = IPv4Address("192.0.2.211")
ONLY_N2 = IPv4Address("192.0.2.212")
RTMGRP_NEIGH = 0x4
RTM_NEWNEIGH = 28
NDA_DST, NDA_LLADDR = 1, 2
REPO = Path(__file__).resolve().parents[2]


# --- the client's view -------------------------------------------------------------------------


class Prober(NeighbourAsker):
    """The product's neighbour asker on the client's eth0, plus a kernel-style baseline."""

    def __init__(self, client_mac: bytes, client4: IPv4Address) -> None:
        # Made on the client's NsThread: the socket belongs to the client namespace.
        super().__init__("eth0")
        self.client_mac = client_mac
        self.client4 = client4

    def answered_by(self, ident: int) -> set[str]:
        return {r.mac for r in self.replies if r.ident == ident}

    def kernel_ask4(self, target: IPv4Address, timeout: float = 0.2) -> float | None:
        """Round trip of an ordinary ARP request from the client's own MAC/IP (a baseline)."""
        frame = frames.arp_request(self.client_mac, self.client4, target)
        start = time.monotonic()
        self.sock.send(frame)
        while time.monotonic() - start < timeout:
            try:
                got = self.sock.recv(2048)
            except TimeoutError:
                continue
            if (
                got[12:14] == b"\x08\x06"
                and got[20:22] == b"\x00\x02"
                and got[28:32] == (target.packed)
            ):
                return time.monotonic() - start
        return None


class NeighWatch:
    """rtnetlink neighbour events of one namespace, each timestamped when read."""

    def __init__(self) -> None:
        # Made on the client's NsThread; read by a plain thread (the socket keeps its netns).
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        self.sock.bind((0, RTMGRP_NEIGH))
        self.sock.settimeout(0.1)
        self.events: list[tuple[float, str, str | None]] = []  # (time, dst, lladdr)
        self.cond = threading.Condition()
        self.stopped = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stopped:
            try:
                data = self.sock.recv(65536)
            except (TimeoutError, OSError):
                continue
            now = time.monotonic()
            found = []
            pos = 0
            while pos + 16 <= len(data):
                length, kind = struct.unpack_from("=IH", data, pos)
                if length < 16:
                    break
                if kind == RTM_NEWNEIGH:
                    found.append(self._parse(data[pos + 16 : pos + length]))
                pos += (length + 3) & ~3
            with self.cond:
                self.events += [(now, dst, mac) for dst, mac in found if dst]
                self.cond.notify_all()

    @staticmethod
    def _parse(body: bytes) -> tuple[str, str | None]:
        family = body[0]
        dst, mac = "", None
        pos = 12
        while pos + 4 <= len(body):
            alen, atype = struct.unpack_from("=HH", body, pos)
            if alen < 4:
                break
            value = body[pos + 4 : pos + alen]
            if atype == NDA_DST:
                dst = str(IPv4Address(value) if family == socket.AF_INET else IPv6Address(value))
            elif atype == NDA_LLADDR and len(value) == 6:
                mac = frames.mac_str(value)
            pos += (alen + 3) & ~3
        return dst, mac

    def wait_for(self, dst: Any, mac: str, since: float, timeout: float = 2.0) -> float | None:
        """Seconds from `since` to the first event after it giving `dst` the MAC `mac`."""
        end = time.monotonic() + timeout
        with self.cond:
            while True:
                for at, d, m in self.events:
                    if at >= since and d == str(dst) and m == mac:
                        return at - since
                left = end - time.monotonic()
                if left <= 0:
                    return None
                self.cond.wait(left)

    def close(self) -> None:
        self.stopped = True
        self.thread.join(timeout=1)
        self.sock.close()


# --- the lab -----------------------------------------------------------------------------------


def ip_json(*args: str) -> Any:
    out = subprocess.run(["ip", "-j", *args], check=True, capture_output=True, text=True).stdout
    return json.loads(out or "[]")


@dataclasses.dataclass
class Lab:
    plan: Any
    threads: dict[str, Any]
    prober: Prober
    watch: NeighWatch
    announcers: list[L2Announcer] = dataclasses.field(default_factory=list)
    procs: list[subprocess.Popen[str]] = dataclasses.field(default_factory=list)

    def ns(self, host: str) -> str:
        return str(self.plan.host(host).netns)

    def mac(self, host: str) -> str:
        return str(self.plan.host(host).interfaces[0].mac)

    def announcer(self, host: str, **kwargs: Any) -> L2Announcer:
        announcer: L2Announcer = self.threads[host].run(L2Announcer, "eth0", **kwargs)
        self.announcers.append(announcer)
        assert frames.mac_str(announcer.mac) == self.mac(host)
        return announcer

    def neigh(self, vip: Any) -> dict[str, Any] | None:
        entries = ip_json("-n", self.ns("client"), "neigh", "show", "to", str(vip), "dev", "eth0")
        return entries[0] if entries else None

    def link_groups(self, host: str) -> set[str]:
        """Link-layer multicast addresses joined on the host's eth0."""
        shown = ip_json("-n", self.ns(host), "maddr", "show", "dev", "eth0")
        return {m["link"] for m in shown[0]["maddr"] if "link" in m}

    def client_sysctls(self, values: dict[str, str]) -> None:
        """Write sysctls of the client (under /proc/sys, from a thread inside its namespace)."""

        def write() -> None:
            for key, value in values.items():
                Path("/proc/sys", key).write_text(value)

        self.threads["client"].run(write)

    def forget(self, *vips: Any) -> None:
        for vip in vips:
            subprocess.run(
                ["ip", "-n", self.ns("client"), "neigh", "del", str(vip), "dev", "eth0"],
                capture_output=True,
                check=False,
            )

    def dump(self) -> str:
        lines = []
        for name in self.plan.namespaces():
            for what in (["addr"], ["neigh"]):
                out = subprocess.run(
                    ["ip", "-n", name, "-br", *what], capture_output=True, text=True, check=False
                )
                lines.append(f"--- {name}: ip {' '.join(what)}\n{out.stdout}{out.stderr}")
        lines += [
            f"--- announcer {a.interface} {frames.mac_str(a.mac)}: {a.stats()}"
            for a in self.announcers
        ]
        return "\n".join(lines)

    @contextmanager
    def diagnosed(self) -> Iterator[None]:
        """On failure, print addresses, neighbour tables and announcer counters."""
        try:
            yield
        except BaseException:
            print(self.dump())
            raise


def _lab_plan(run_id: str) -> Any:
    base = topology.plan(run_id, nodes=2, backends=0)

    def rename(name: str) -> str:
        return name.replace(topology.NS_PREFIX, "rlbt-", 1)

    hosts = []
    for host in base.hosts:
        extra: tuple[tuple[str, str], ...] = ()
        if host.kind == "client":
            # accept_untracked_na creates entries only on a router (forwarding=1): the client
            # plays the LAN's router for IPv6, as the real client of a VIP usually is.
            extra = (
                ("net/ipv4/conf/default/arp_accept", "1"),
                ("net/ipv6/conf/all/forwarding", "1"),
                ("net/ipv6/conf/default/accept_untracked_na", "1"),
            )
        hosts.append(
            dataclasses.replace(host, netns=rename(host.netns), sysctls=host.sysctls + extra)
        )
    return dataclasses.replace(base, switch_ns=rename(base.switch_ns), hosts=tuple(hosts))


@pytest.fixture
def l2lab() -> Iterator[Lab]:
    """Switch + n1 + n2 + client under `rlbt-<random>-`, a client prober and neighbour watch.

    Not called `lab`: tests/lab/conftest.py gives that name to its whole-appliance lab."""
    plan = _lab_plan(secrets.token_hex(3))
    names = plan.namespaces()
    assert all(n.startswith("rlbt-") for n in names)
    threads: dict[str, Any] = {}
    prober = watch = None
    built = None
    try:
        netns.build(plan)
        threads = {h.name: netns.NsThread(h.netns) for h in plan.hosts}
        client = plan.host("client")
        prober = threads["client"].run(
            Prober, frames.mac_bytes(client.interfaces[0].mac), client.ipv4
        )
        watch = threads["client"].run(NeighWatch)
        built = Lab(plan=plan, threads=threads, prober=prober, watch=watch)
        yield built
    finally:
        for announcer in built.announcers if built else []:
            announcer.close()
        for proc in built.procs if built else []:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGCONT)
                proc.kill()
            proc.wait(timeout=5)
        if watch:
            watch.close()
        if prober:
            prober.close()
        for thread in threads.values():
            thread.close()
        netns.destroy(names)
        left = [n for n in netns.existing("rlbt-") if n in names]
        assert not left, f"namespaces left behind: {left}"


def report(name: str, values: list[float]) -> str:
    ms = sorted(v * 1000 for v in values)
    p90 = ms[min(len(ms) - 1, int(len(ms) * 0.9))]
    line = (
        f"{name}: n={len(ms)} min {ms[0]:.3f} median {statistics.median(ms):.3f} "
        f"p90 {p90:.3f} max {ms[-1]:.3f} ms"
    )
    print(line)
    return line


def wait_until(deadline: float) -> None:
    while (left := deadline - time.monotonic()) > 0:
        time.sleep(min(left, 0.01))


# --- the tests ---------------------------------------------------------------------------------


def test_takeover_announces_to_the_client_and_requests_are_answered(l2lab: Lab) -> None:
    """(a) GARP/NA create the client's entries; (b) the client's resolution gets n1's MAC."""
    with l2lab.diagnosed():
        n1 = l2lab.announcer("n1")
        n1_mac = l2lab.mac("n1")
        assert l2lab.neigh(VIP4) is None
        assert l2lab.neigh(VIP6) is None
        t0 = time.monotonic()
        n1.set([VIP4, VIP6], t0 + 30)  # called from the host's thread, not n1's
        took4 = l2lab.watch.wait_for(VIP4, n1_mac, since=t0)
        took6 = l2lab.watch.wait_for(VIP6, n1_mac, since=t0)
        assert took4 is not None, "no neighbour entry from the gratuitous ARP"
        assert took6 is not None, "no neighbour entry from the unsolicited NA"
        print(
            f"first announcement to client entry: IPv4 {took4 * 1e3:.3f} ms, "
            f"IPv6 {took6 * 1e3:.3f} ms"
        )
        assert (l2lab.neigh(VIP4) or {}).get("lladdr") == n1_mac
        assert (l2lab.neigh(VIP6) or {}).get("lladdr") == n1_mac
        assert n1.held() == {VIP4, VIP6}

        # The VIP is on no interface of n1: only the announcer speaks for it.
        addrs = ip_json("-n", l2lab.ns("n1"), "addr", "show", "dev", "eth0")
        on_eth0 = {a["local"] for a in addrs[0]["addr_info"]}
        assert str(VIP4) not in on_eth0 and str(VIP6) not in on_eth0

        # (b) the client's kernel resolves the VIP from scratch: its request, our answer.
        l2lab.forget(VIP4, VIP6)

        def poke() -> None:
            for family, vip in ((socket.AF_INET, VIP4), (socket.AF_INET6, VIP6)):
                with socket.socket(family, socket.SOCK_DGRAM) as s:
                    s.sendto(b"x", (str(vip), 9))

        t1 = time.monotonic()
        l2lab.threads["client"].run(poke)
        assert l2lab.watch.wait_for(VIP4, n1_mac, since=t1) is not None
        assert l2lab.watch.wait_for(VIP6, n1_mac, since=t1) is not None
        for vip in (VIP4, VIP6):
            entry = l2lab.neigh(vip) or {}
            assert entry.get("lladdr") == n1_mac, entry
            assert "REACHABLE" in entry.get("state", []), entry

        # Answer latency: raw requests from the client, and the kernel answering for n1's own
        # address as a baseline.
        rtt4, rtt6, kernel = [], [], []
        for _ in range(200):
            got4 = l2lab.prober.ask(VIP4)
            got6 = l2lab.prober.ask(VIP6)
            base = l2lab.prober.kernel_ask4(l2lab.plan.host("n1").ipv4)
            assert got4 is not None and got4[0] == n1_mac
            assert got6 is not None and got6[0] == n1_mac
            assert base is not None
            rtt4.append(got4[1])
            rtt6.append(got6[1])
            kernel.append(base)
        report("ARP request -> announcer reply (round trip at client)", rtt4)
        report("NS -> announcer NA (round trip at client)", rtt6)
        report("ARP request -> kernel reply for n1's own address (baseline)", kernel)
        stats = n1.stats()
        assert stats["arp_replies"] >= 200 and stats["na_replies"] >= 200
        assert stats["garp_sent"] >= 6 and stats["na_sent"] >= 3
        assert stats["send_errors"] == 0 and stats["conflicts"] == 0


def test_nothing_answers_after_the_lease_ends(l2lab: Lab) -> None:
    """(c) set() with a deadline 0.3 s ahead and no renewal: no answer to anything asked later."""
    with l2lab.diagnosed():
        n1 = l2lab.announcer("n1")
        deadline = time.monotonic() + 0.3
        n1.set([VIP4, VIP6], deadline)
        l2lab.prober.probe([VIP4, VIP6], duration=0.8, interval=0.005)
        before = [i for i, (_, at) in l2lab.prober.sent.items() if at < deadline]
        after = [i for i, (_, at) in l2lab.prober.sent.items() if at >= deadline]
        answered_before = [i for i in before if l2lab.prober.answered_by(i)]
        answered_after = [i for i in after if l2lab.prober.answered_by(i)]
        print(
            f"lease end: {len(answered_before)}/{len(before)} answered before, "
            f"{len(answered_after)}/{len(after)} after"
        )
        assert len(answered_before) >= len(before) * 0.9
        assert answered_after == [], "answered on an ended lease"
        last = max(r.at for r in l2lab.prober.replies)
        print(f"last reply arrived {(last - deadline) * 1e3:+.3f} ms from the deadline")
        assert n1.held() == frozenset()
        stats = n1.stats()
        assert stats["lapses"] == 2
        assert stats["stale_refusals"] >= len(after) * 0.9
        # Renewing after a lapse is a new takeover: announced again at once.
        t0 = time.monotonic()
        n1.set([VIP4, VIP6], t0 + 30)
        assert n1.stats()["takeovers"] == 4
        assert l2lab.prober.ask(VIP4) is not None


def test_a_lease_source_keeps_vips_past_a_late_renewal_and_not_past_its_end(l2lab: Lab) -> None:
    """Past the deadline, the announcer asks its lease source (the agent's lease cell) before
    it lets the VIPs lapse: a later end there keeps them (no lapse, no new takeover); once
    the source's end has passed too, they lapse and nothing answers."""
    with l2lab.diagnosed():
        n1 = l2lab.announcer("n1")
        t0 = time.monotonic()
        first, second = t0 + 0.3, t0 + 0.8
        asked: list[float] = []

        def source() -> float:
            asked.append(time.monotonic())
            return second

        n1.lease_source = source
        n1.set([VIP4, VIP6], first)
        l2lab.prober.probe([VIP4, VIP6], duration=1.2, interval=0.005)
        sent = l2lab.prober.sent.items()
        between = [i for i, (_, at) in sent if first <= at < second - 0.02]
        after = [i for i, (_, at) in sent if at >= second]
        answered_between = [i for i in between if l2lab.prober.answered_by(i)]
        print(
            f"source asked at {[round(a - t0, 3) for a in asked]}; answered between the ends "
            f"{len(answered_between)}/{len(between)}"
        )
        assert asked and first <= asked[0] < first + 0.1  # asked once the deadline passed
        assert len(answered_between) >= len(between) * 0.9, "lapsed although the lease held"
        assert not [i for i in after if l2lab.prober.answered_by(i)], "answered past the end"
        assert asked[-1] >= second  # asked again at the second end, which it did not extend
        stats = n1.stats()
        assert (stats["lapses"], stats["takeovers"], n1.held()) == (2, 2, frozenset())


FROZEN_OWNER = """
import ipaddress, json, sys, time
from announce.l2 import L2Announcer
announcer = L2Announcer("eth0")
deadline = time.monotonic() + float(sys.argv[1])
announcer.set([ipaddress.ip_address(v) for v in sys.argv[2:]], deadline)
print("ready", deadline, flush=True)
sys.stdin.readline()
print("stats", json.dumps(announcer.stats()), flush=True)
announcer.close()
"""


def _state_of(pid: int) -> str:
    # /proc/PID/stat: "pid (comm) state ...", comm may hold spaces but not ")".
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def test_a_thawed_owner_never_answers_on_its_stale_lease(l2lab: Lab) -> None:
    """SIGSTOP an owner process across its deadline with requests queued: after SIGCONT it
    answers none of them (and nothing asked later)."""
    with l2lab.diagnosed():
        argv = ["ip", "netns", "exec", l2lab.ns("n1"), sys.executable, "-c", FROZEN_OWNER]
        proc = subprocess.Popen(
            [*argv, "1.0", str(VIP4), str(VIP6)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )
        l2lab.procs.append(proc)
        assert proc.stdout is not None and proc.stdin is not None
        word, deadline_text = proc.stdout.readline().split()
        assert word == "ready"
        deadline = float(deadline_text)
        assert l2lab.prober.ask(VIP4) is not None
        assert l2lab.prober.ask(VIP6) is not None
        wait_until(deadline - 0.3)
        os.kill(proc.pid, signal.SIGSTOP)  # `ip netns exec` execs: this is the python process
        # kill() returns before the stop lands: a thread still running on the other core
        # answered one more request (under its valid lease) after it, once in a while.
        until(lambda: _state_of(proc.pid) == "T", "the owner stopped", 10, every=0.001)
        stopped = time.monotonic()
        l2lab.prober.probe([VIP4, VIP6], duration=0.6, interval=0.01)  # queued in its socket
        os.kill(proc.pid, signal.SIGCONT)
        thawed = time.monotonic()
        assert thawed > deadline
        l2lab.prober.probe([VIP4, VIP6], duration=0.3, interval=0.01)
        late = [i for i, (_, at) in l2lab.prober.sent.items() if at >= stopped]
        answered = [i for i in late if l2lab.prober.answered_by(i)]
        assert late and answered == [], f"{len(answered)} answers after the freeze"
        proc.stdin.write("\n")
        proc.stdin.flush()
        line = proc.stdout.readline()
        print(f"frozen owner: {line.strip()}")
        assert line.startswith("stats")
        stats = json.loads(line.split(" ", 1)[1])
        assert stats["stale_refusals"] >= len(late) * 0.9


def test_two_owners_never_answer_together_and_takeover_moves_the_client(l2lab: Lab) -> None:
    """(d) Overlapping VIP sets, disjoint leases: one owner at a time, then takeover timings."""
    with l2lab.diagnosed():
        n1 = l2lab.announcer("n1")
        n2 = l2lab.announcer("n2")
        n1_mac, n2_mac = l2lab.mac("n1"), l2lab.mac("n2")
        handover = time.monotonic() + 0.4
        n1.set([VIP4, VIP6, ONLY_N1], handover)
        probing = threading.Thread(
            target=l2lab.prober.probe, args=([VIP4, VIP6, ONLY_N1, ONLY_N2], 0.9, 0.002)
        )
        probing.start()
        wait_until(handover)  # break before make: n2 is given the VIPs after n1's lease ends
        n2_from = time.monotonic()
        n2.set([VIP4, VIP6, ONLY_N2], n2_from + 30)
        probing.join()
        # The invariant is about time: n1 answers only before its lease ends, n2 only after it
        # was given the VIPs, so all n1 replies come before all n2 replies. A request in flight
        # at the handover may be answered by both, one after the other (n2 finds it queued in
        # its socket): the client then holds n2's MAC, because n2's GARP overrides.
        by = {mac: [r for r in l2lab.prober.replies if r.mac == mac] for mac in (n1_mac, n2_mac)}
        assert by[n1_mac] and by[n2_mac]
        assert all(l2lab.prober.sent[r.ident][1] < handover for r in by[n1_mac])
        assert all(r.at >= n2_from for r in by[n2_mac])
        gap = min(r.at for r in by[n2_mac]) - max(r.at for r in by[n1_mac])
        assert gap > 0, "n1 and n2 answered at the same time"
        both = [i for i in l2lab.prober.sent if len(l2lab.prober.answered_by(i)) > 1]
        print(
            f"handover under probing: last n1 reply -> first n2 reply {gap * 1e3:.3f} ms; "
            f"{len(both)} in-flight requests answered by n1 then n2"
        )
        assert {r.vip for r in by[n1_mac]} <= {str(VIP4), str(VIP6), str(ONLY_N1)}
        assert {r.vip for r in by[n2_mac]} <= {str(VIP4), str(VIP6), str(ONLY_N2)}
        for vip in (VIP4, VIP6):
            assert (l2lab.neigh(vip) or {}).get("lladdr") in (None, n2_mac)

        # Takeover timing, no probes running: the client's existing entry moves to the new
        # owner's MAC. Alternate owners; each move is break-before-make (clear, then set).
        # The client is a plain host again (kernel defaults): updating needs no sysctl.
        l2lab.client_sysctls(
            {
                "net/ipv4/conf/eth0/arp_accept": "0",
                "net/ipv6/conf/all/forwarding": "0",
                "net/ipv6/conf/eth0/accept_untracked_na": "0",
            }
        )
        owners = [(n2, n2_mac), (n1, n1_mac)]
        moved4, moved6 = [], []
        for round_ in range(20):
            old, _ = owners[round_ % 2]
            new, new_mac = owners[(round_ + 1) % 2]
            old.clear()
            t0 = time.monotonic()
            new.set([VIP4, VIP6], t0 + 30)
            took4 = l2lab.watch.wait_for(VIP4, new_mac, since=t0)
            took6 = l2lab.watch.wait_for(VIP6, new_mac, since=t0)
            assert took4 is not None and took6 is not None, f"round {round_}: no takeover"
            moved4.append(took4)
            moved6.append(took6)
            assert (l2lab.neigh(VIP4) or {}).get("lladdr") == new_mac
            assert (l2lab.neigh(VIP6) or {}).get("lladdr") == new_mac
            time.sleep(0.02)
        report("set() on the new owner -> client IPv4 entry moved", moved4)
        report("set() on the new owner -> client IPv6 entry moved", moved6)
        assert max(moved4) < 0.05 and max(moved6) < 0.05


def test_after_close_nothing_answers(l2lab: Lab) -> None:
    """(e) close() stops answering at once and for good, with the lease still valid."""
    with l2lab.diagnosed():
        n1 = l2lab.announcer("n1")
        n1.set([VIP4, VIP6], time.monotonic() + 30)
        assert l2lab.prober.ask(VIP4) is not None
        assert l2lab.prober.ask(VIP6) is not None
        thread = n1._thread
        n1.close()
        closed = time.monotonic()
        assert not thread.is_alive()
        assert n1.held() == frozenset()
        l2lab.prober.probe([VIP4, VIP6], duration=0.3, interval=0.005)
        late = [i for i, (_, at) in l2lab.prober.sent.items() if at >= closed]
        assert late and not [i for i in late if l2lab.prober.answered_by(i)]
        n1.close()  # idempotent
        with pytest.raises(RuntimeError, match="closed"):
            n1.set([VIP4], time.monotonic() + 30)


def test_silence_stops_answering_at_once_and_later_sets_change_nothing(l2lab: Lab) -> None:
    """silence() (the agent's stop) ends the answers before it returns, and a reconcile still
    running while the agent stops cannot bring them back; close() still works after it."""
    with l2lab.diagnosed():
        n1 = l2lab.announcer("n1")
        n1.set([VIP4, VIP6], time.monotonic() + 30)
        assert l2lab.prober.ask(VIP4) is not None
        n1.silence()
        silenced = time.monotonic()
        n1.set([VIP4, VIP6], time.monotonic() + 30)
        n1.extend(time.monotonic() + 30)
        assert n1.held() == frozenset()
        l2lab.prober.probe([VIP4, VIP6], duration=0.3, interval=0.005)
        late = [i for i, (_, at) in l2lab.prober.sent.items() if at >= silenced]
        assert late and not [i for i in late if l2lab.prober.answered_by(i)]
        n1.close()


def test_clear_and_set_dropping_a_vip_stop_answering_at_once(l2lab: Lab) -> None:
    """Dropping a VIP through set() or clear() ends its answers before the call returns."""
    with l2lab.diagnosed():
        n1 = l2lab.announcer("n1")
        group = frames.mac_str(frames.multicast_mac(frames.solicited_node(VIP6)))
        assert group not in l2lab.link_groups("n1")
        n1.set([VIP4, VIP6], time.monotonic() + 30)
        assert group in l2lab.link_groups("n1"), "solicited-node group of the VIP not joined"
        assert l2lab.prober.ask(VIP6) is not None
        n1.set([VIP4], time.monotonic() + 30)
        assert group not in l2lab.link_groups("n1")
        dropped = time.monotonic()
        l2lab.prober.probe([VIP4, VIP6], duration=0.1, interval=0.005)
        after = [i for i, (_, at) in l2lab.prober.sent.items() if at >= dropped]
        answered = {l2lab.prober.sent[i][0] for i in after if l2lab.prober.answered_by(i)}
        assert answered == {str(VIP4)}
        n1.clear()
        cleared = time.monotonic()
        l2lab.prober.probe([VIP4, VIP6], duration=0.1, interval=0.005)
        after = [i for i, (_, at) in l2lab.prober.sent.items() if at >= cleared]
        assert after and not [i for i in after if l2lab.prober.answered_by(i)]
        assert n1.stats()["releases"] == 2


def test_a_link_flap_does_not_stop_the_announcer(l2lab: Lab) -> None:
    """Link down (ENETDOWN on the socket) and up again: answers resume, the thread lives."""
    with l2lab.diagnosed():
        n1 = l2lab.announcer("n1", refresh_interval=0.2, repeats=())
        n1.set([VIP4, VIP6], time.monotonic() + 30)
        assert l2lab.prober.ask(VIP4) is not None
        netns.set_link(l2lab.ns("n1"), "eth0", up=False)
        time.sleep(0.5)  # refreshes fail meanwhile
        assert l2lab.prober.ask(VIP4, timeout=0.05) is None
        netns.set_link(l2lab.ns("n1"), "eth0", up=True)
        end = time.monotonic() + 2.0
        while time.monotonic() < end and l2lab.prober.ask(VIP4, timeout=0.05) is None:
            pass
        assert l2lab.prober.ask(VIP4) is not None
        assert l2lab.prober.ask(VIP6) is not None
        assert n1._thread.is_alive()
        stats = n1.stats()
        print(f"link flap: send_errors {stats['send_errors']}, recv_errors {stats['recv_errors']}")
        assert stats["send_errors"] + stats["recv_errors"] > 0
