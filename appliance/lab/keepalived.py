"""keepalived (VRRP, the Debian package) in the lab's nodes, as the baseline raftlb is compared to.

Each node runs `keepalived -n` in its namespace with its own pid files (the file system is
shared by every namespace) for one VRRP instance on eth0 that holds KA_VIP. The nodes forward
KA_VIP:80 to the backends with a static nftables DNAT table of their own (`inet kabench`), the
same spread as raftlb's, so the prober measures the same path; only the holder of the VIP gets
the traffic, as the only one answering ARP for it. Two timer sets: VRRPv2 with the default
1 s adverts, and VRRPv3 with 100 ms adverts.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import time

from appliance.lab import LabError, procs
from appliance.lab.apt import apt_install
from appliance.lab.netlab import NetLab, Progress
from appliance.lab.topology import BACKEND_HTTP_PORT

KA_VIP = "192.0.2.240"
TIMERS = {"vrrp2-1s": (2, "1"), "vrrp3-100ms": (3, "0.1")}


def ensure_installed(progress: Progress) -> str:
    found = shutil.which("keepalived")
    if found:
        return found
    error = apt_install(["keepalived"], "for the comparison", progress)
    found = shutil.which("keepalived")
    if error is not None or not found:
        raise LabError(
            "keepalived is not installed and apt-get could not install it: "
            f"{error}; install it (apt-get install keepalived) and retry"
        )
    return found


def config(node: str, priority: int, timers: str) -> str:
    version, advert = TIMERS[timers]
    return f"""global_defs {{
    router_id {node}
    vrrp_version {version}
    script_user root
    enable_script_security
}}
vrrp_instance bench {{
    state BACKUP
    interface eth0
    virtual_router_id 51
    priority {priority}
    advert_int {advert}
    virtual_ipaddress {{
        {KA_VIP}/24 dev eth0
    }}
}}
"""


def dnat_table(lab: NetLab) -> str:
    backends = [str(h.ipv4) for h in lab.plan.of_kind("backend")]
    entries = ", ".join(f"{i} : {b} . {BACKEND_HTTP_PORT}" for i, b in enumerate(backends))
    spread = f"numgen random mod {len(backends)} map {{ {entries} }}"
    return f"""table inet kabench
delete table inet kabench
table inet kabench {{
    chain prerouting {{
        type nat hook prerouting priority dstnat; policy accept;
        ip daddr {KA_VIP} tcp dport 80 dnat ip to {spread}
    }}
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        ct status dnat ct original ip daddr {KA_VIP} masquerade
    }}
}}
"""


class Keepalived:
    """keepalived on every node of `lab` with one timer set; `stop()` removes all of it."""

    def __init__(self, lab: NetLab, timers: str) -> None:
        self.lab = lab
        self.timers = timers
        self.dir = lab.dir / f"keepalived-{timers}"
        self.dir.mkdir(exist_ok=True)
        table = dnat_table(lab)
        for node in lab.node_names():
            result = lab.exec(node, ["nft", "-f", "-"], input=table, capture_output=True, text=True)
            if result.returncode != 0:
                raise LabError(f"nft refused the keepalived DNAT table: {result.stderr}")
        for i, node in enumerate(lab.node_names()):
            (self.dir / f"{node}.conf").write_text(config(node, 200 - 10 * i, timers))
            self.start(node)

    def key(self, node: str) -> str:
        return f"keepalived-{self.timers}-{node}"

    def start(self, node: str) -> None:
        d = self.dir
        argv = ["keepalived", "-n", "-l", "-G", "-f", str(d / f"{node}.conf")]
        argv += ["-p", str(d / f"{node}.pid"), "-r", str(d / f"{node}-vrrp.pid")]
        argv += ["-c", str(d / f"{node}-checkers.pid"), "-b", str(d / f"{node}-bfd.pid")]
        self.lab.spawn(self.key(node), node, argv)

    def kill(self, node: str) -> None:
        """kill -9 of keepalived's whole process group: the VIP stays on the interface."""
        pid = self.lab.pid(self.key(node))
        if pid is None:
            raise LabError(f"keepalived on {node} is not running")
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        procs.reap(pid)

    def holders(self) -> list[str]:
        """The nodes whose eth0 carries the VIP now."""
        out = []
        for node in self.lab.node_names():
            shown = self.lab.exec(
                node, ["ip", "-j", "addr", "show", "dev", "eth0"], capture_output=True, text=True
            )
            infos = json.loads(shown.stdout or "[]")
            if any(a.get("local") == KA_VIP for i in infos for a in i.get("addr_info", [])):
                out.append(node)
        return out

    def forget(self, node: str) -> None:
        """What an operator does after a kill -9: take the orphaned VIP off the interface."""
        self.lab.exec(
            node, ["ip", "addr", "del", f"{KA_VIP}/24", "dev", "eth0"], capture_output=True
        )

    def steady(self, timeout: float = 60.0) -> str:
        """Wait until exactly one node holds the VIP (for a second); return it."""
        deadline = time.monotonic() + timeout
        stable_since, last = 0.0, None
        while time.monotonic() < deadline:
            holders = self.holders()
            now = time.monotonic()
            if len(holders) == 1 and holders[0] == last:
                if now - stable_since >= 1.0:
                    return holders[0]
            else:
                stable_since, last = now, holders[0] if len(holders) == 1 else None
            time.sleep(0.1)
        raise LabError(f"keepalived ({self.timers}) did not settle: holders {self.holders()}")

    def stop(self) -> None:
        for node in self.lab.node_names():
            pid = self.lab.pid(self.key(node))
            if pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
                procs.reap(pid)
                self.lab.pids.pop(self.key(node), None)
            self.forget(node)
            self.lab.exec(node, ["nft", "delete", "table", "inet", "kabench"], capture_output=True)
        self.lab.save()
