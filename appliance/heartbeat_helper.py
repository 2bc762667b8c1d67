"""The heartbeat helper: a small process that keeps the quorum-promise book and its heartbeats.

`python -m appliance.heartbeat_helper`, started by the agent (appliance/helper_book.py), one per
agent. Why a process and not a thread of the agent: a lease must not end because the agent is
busy, and a busy agent holds its GIL in single C calls (validating a batch of thousands of
services, a JSON document of the whole state, a garbage collection) for longer than a promise
window can wait; with W = 0.25 s at 5,000 services a heartbeat thread inside the agent let
leases end by the thousand. Here nothing competes for this interpreter's GIL.

The wire to the agent, one JSON document per line:
- stdin, first line: the settings (node, members, incarnation, window, drift, raft_grace,
  bind, peers, password, period, log_level); then the applied state's facts whenever they
  change: {"facts": {node: [incarnation or null, epoch]}, "alive": [node, ...]}.
- stdout, first line: {"ready": port} or {"error": why}; then every period the book's
  `BookView` (appliance/lease_book.py), the newest only when the agent reads slowly.
End of stdin (the agent gone, however it went) ends this process at once, and so does the
agent's death (parent-death signal): a helper must never promise for an agent that is gone.
The agent sends no liveness of its own: peers promise this node only while its renewals
commit (raft_grace), so an agent stuck whole loses its lease on that count.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from typing import Any, BinaryIO

from announce.child import die_with_parent
from appliance.heartbeats import HeartbeatService
from appliance.lease_book import LocalBook, view_of
from appliance.lease_cell import LeaseCell
from raft.promises import NodeFacts, Promises

log = logging.getLogger("raftlb.heartbeats")


class Reporter:
    """Writes the newest view to the agent; a slow reader gets the newest, never a backlog,
    and never blocks the heartbeat thread."""

    def __init__(self, out: BinaryIO) -> None:
        self.out = out
        self._line: bytes | None = None
        self._ready = threading.Condition()
        threading.Thread(target=self._run, name="report", daemon=True).start()

    def put(self, line: bytes) -> None:
        with self._ready:
            self._line = line
            self._ready.notify()

    def _run(self) -> None:
        while True:
            with self._ready:
                while self._line is None:
                    self._ready.wait()
                line, self._line = self._line, None
            try:
                self.out.write(line)
                self.out.flush()
            except OSError:
                os._exit(0)  # the agent is gone


def parse_facts(raw: dict[str, Any]) -> tuple[dict[str, NodeFacts], set[str]]:
    facts = {n: NodeFacts(v[0], int(v[1])) for n, v in raw["facts"].items()}
    return facts, set(raw["alive"])


def serve(settings: dict[str, Any], stdin: BinaryIO, out: BinaryIO) -> None:
    started = time.monotonic()
    book = LocalBook(
        Promises(
            settings["node"],
            list(settings["members"]),
            int(settings["incarnation"]),
            float(settings["window"]),
            started=started,
            drift=float(settings["drift"]),
            raft_grace=float(settings["raft_grace"]),
        )
    )
    reporter = Reporter(out)
    cell = None if settings.get("lease_fd") is None else LeaseCell(int(settings["lease_fd"]))

    def report(now: float) -> None:  # on the heartbeat thread, after each period's sends
        with book.lock:
            view = view_of(book.promises, now)
        reporter.put(json.dumps(view.to_json(), separators=(",", ":")).encode() + b"\n")

    try:
        service = HeartbeatService(
            book.promises,
            book.lock,
            (settings["bind"][0], int(settings["bind"][1])),
            {n: (a[0], int(a[1])) for n, a in settings["peers"].items()},
            settings["password"],
            float(settings["period"]),
            # Each period's lease end, straight into the agent's memory (appliance/lease_cell.py).
            extend=None if cell is None else cell.write,
            on_sent=report,
        )
    except OSError as exc:
        out.write(json.dumps({"error": exc.strerror or str(exc)}).encode() + b"\n")
        out.flush()
        return
    out.write(json.dumps({"ready": service.sock.getsockname()[1]}).encode() + b"\n")
    out.flush()
    service.start()
    for line in stdin:
        try:
            facts, alive = parse_facts(json.loads(line))
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            log.error("heartbeat helper: a bad line from the agent (%s): %r", exc, line[:200])
            continue
        book.observe(time.monotonic(), facts, alive)
    # End of input: the agent is gone. Not a word more to the peers.
    os._exit(0)


def main() -> None:
    stdin, out = sys.stdin.buffer, os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # stray prints go to the log, never into the reports
    first = stdin.readline()
    if not first:
        return
    settings = json.loads(first)
    # Set here, not between fork and exec (unsafe in the agent's threads); the parent check
    # closes the gap of an agent that died before the signal was armed.
    die_with_parent()
    if os.getppid() != settings.get("parent"):
        return
    logging.basicConfig(
        level=str(settings.get("log_level", "info")).upper(),
        format=f"%(asctime)s {settings['node']} %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    _realtime()
    serve(settings, stdin, out)


def _realtime() -> None:
    """Round-robin real-time priority 1 for this process's threads (set before they start:
    they inherit it), as keepalived's VRRP process does: a heartbeat then waits for no busy
    process on a loaded machine. Its work is a few datagrams per period, and the kernel's RT
    throttling still leaves the others 5% of each core should it ever spin."""
    try:
        # Allowed to root, to CAP_SYS_NICE, and to anyone whose RLIMIT_RTPRIO is at least 1
        # (the appliance's unit: LimitRTPRIO=1).
        os.sched_setscheduler(0, os.SCHED_RR, os.sched_param(1))
    except OSError as exc:
        log.warning(
            "heartbeats at normal priority (real-time refused: %s): a busy machine can then "
            "end leases; give the agent's unit LimitRTPRIO=1 (or CAP_SYS_NICE)",
            exc.strerror,
        )


if __name__ == "__main__":
    main()
