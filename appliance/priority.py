"""The Raft tick thread's CPU priority: ahead of ordinary work on its machine.

pysyncobj's tick thread sends the leader's Raft heartbeats (every 40 ms with `fast`; followers
campaign after 150-300 ms without one). With two busy loops on the two cores beside the leader
(`raftlb lab torture --faults cpuhog --duration 60`), agents at the default nice 0 shared the
CPUs with them and the leader went 0.17 s without a heartbeat: two elections in a minute. At
nice -10 the kernel weighs a thread about nine times an ordinary one, so the woken tick thread
runs at once.

Only that thread: with the whole agent at nice -10, three agents writing 5,000 services on two
cores (`raftlb lab bench scale`) starved the kernel's softirq threads (nice 0) that carry
their own packets, heartbeats came 0.4 s late, and leases flapped by the thousand. The
heartbeat helper is real-time (appliance/heartbeat_helper.py) for the same reason as this.

Raising a thread's priority needs CAP_SYS_NICE or an RLIMIT_NICE that allows it: the
appliance's unit has `LimitNICE=30` (nice down to -10); as root (the lab) it just works.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger("raftlb.agent")

TICK_NICE = -10


def raise_priority(thread: int | None = 0, target: int = TICK_NICE) -> int | None:
    """Lower a thread's nice value (its kernel id; 0: the calling thread) to `target` unless it
    is there already; the value it has afterwards (None: no thread). A refusal is logged with
    what to do, and the agent runs on."""
    if thread is None:
        return None
    current = os.getpriority(os.PRIO_PROCESS, thread)
    if current <= target:
        return current
    try:
        os.setpriority(os.PRIO_PROCESS, thread, target)
    except OSError as exc:
        log.warning(
            "Raft tick thread at nice %d (raising it to %d refused: %s): on a busy machine the "
            "leader's heartbeats can be late enough for an election; give the agent's unit "
            "LimitNICE=%d (or CAP_SYS_NICE)",
            current,
            target,
            exc.strerror,
            20 - target,
        )
        return current
    return os.getpriority(os.PRIO_PROCESS, thread)
