"""The agent's CPU priority: ahead of ordinary work on its machine.

pysyncobj's tick thread sends the leader's Raft heartbeats (every 40 ms with `fast`; followers
campaign after 150-300 ms without one). With two busy loops on the two cores beside the leader
(`raftlb lab torture --faults cpuhog --duration 60`), agents at the default nice 0 shared the
CPUs with them and the leader went 0.17 s without a heartbeat: two elections in a minute. At
nice -10 the kernel weighs the agent's threads about nine times an ordinary process's, so a
woken tick thread runs at once. The heartbeat helper goes further (real-time,
appliance/heartbeat_helper.py); the agent does not: its bulk work (thousands of services) must
never starve its machine.

Nice is per thread on Linux, and a thread inherits it from the thread that starts it: the agent
calls this on its main thread before any other starts (and after its start's checks, so a
refused start leaves the calling process as it was). Raising a priority needs CAP_SYS_NICE or
RLIMIT_NICE: the appliance's unit has systemd set `Nice=-10` before it drops privileges, which
makes this a no-op there; as root (the lab) the agent does it itself.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger("raftlb.agent")

AGENT_NICE = -10


def raise_priority(target: int = AGENT_NICE) -> int:
    """Lower this thread's nice value to `target` unless it is there already; the value it has
    afterwards. A refusal is logged with what to do, and the agent runs on."""
    current = os.getpriority(os.PRIO_PROCESS, 0)
    if current <= target:
        return current
    try:
        os.setpriority(os.PRIO_PROCESS, 0, target)
    except OSError as exc:
        log.warning(
            "agent at nice %d (raising it to %d refused: %s): on a busy machine the Raft "
            "leader's heartbeats can be late enough for an election; give the agent's unit "
            "Nice=%d (or CAP_SYS_NICE)",
            current,
            target,
            exc.strerror,
            target,
        )
        return current
    return os.getpriority(os.PRIO_PROCESS, 0)
