"""Python's garbage collector in an agent that holds thousands of services.

CPython's cyclic collector now and then walks every object (a "full" collection): with 5,000
services x 10 backends that is ~350,000 objects and 0.3 s, during which no other thread runs,
pysyncobj's tick thread included (its heartbeats and elections have a 0.15-0.3 s budget). In the
lab the first full collections during a bulk write of 2,000 services made leaders lose their
followers. The replicated state is long-lived and free of reference cycles (frozen models in
persistent maps): walking it again and again finds nothing.

So, from the agent's start:
- young collections stay automatic and as frequent as by default (they walk a few thousand
  objects; making them rarer made each walk longer: 0.16 s with 10,000 allocations between
  them);
- automatic full collections are off (`gc.set_threshold(..., FULL_OFF)`);
- every `every` seconds the young generations are collected and what survived is moved to the
  permanent generation (`gc.freeze()`, O(1)), so no collection ever walks the state again.

The cost: an object that is alive at a freeze and later becomes part of a garbage cycle is never
freed. The agent's long-lived objects are the state (acyclic) and its tasks; short-lived ones
(requests, commands in flight) rarely span a freeze. `raftlb_gc_frozen_objects` in /metrics shows
the frozen count, which follows the state's size.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time

log = logging.getLogger("raftlb.gc")

FULL_OFF = 1_000_000


def install() -> None:
    """No automatic full collection (see the module doc)."""
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, FULL_OFF)


def freeze() -> float:
    """Collect the young generations, freeze the rest; seconds it took."""
    started = time.perf_counter()
    gc.collect(1)
    gc.freeze()
    return time.perf_counter() - started


async def freeze_loop(every: float = 10.0) -> None:
    """Freeze what survived, periodically (run as a task of the agent)."""
    slow = 0.05
    while True:
        await asyncio.sleep(every)
        took = freeze()
        if took > slow:
            log.info("gc: young collection and freeze took %.0f ms", 1000 * took)
