"""Stable backend ids: what consistent hashing builds its tables from
(appliance/dataplane/consistent.py).

A backend of a port (address and port, under the port's protocol and number) keeps its id while
a service update keeps it; a new backend takes the lowest id its port does not use. So a port
that lost backend 3 and got a new one has ids 0..N-1 again and shares its table with every other
port of N backends, and a replaced backend takes over its predecessor's slots exactly. Pure and
O(backends of the service): it runs in the apply of a service update, on the Raft thread.
"""

from __future__ import annotations

from appliance.model import Service, ServiceSpec


def assign(spec: ServiceSpec, previous: Service | None) -> list[list[int]]:
    """The ids of `spec`'s backends, per port, given the service as stored before (if any)."""
    known: dict[tuple[str, int], dict[tuple[object, int], int]] = {}
    if previous is not None:
        for index, port in enumerate(previous.spec.ports):
            ids = previous.ids_of(index)
            known[(str(port.protocol), port.port)] = {
                (b.address, b.port): ids[k] for k, b in enumerate(port.backends)
            }
    out: list[list[int]] = []
    for port in spec.ports:
        old = known.get((str(port.protocol), port.port), {})
        kept = [old.get((b.address, b.port)) for b in port.backends]
        used = {i for i in kept if i is not None}
        free = (i for i in range(len(port.backends) + len(used)) if i not in used)
        out.append([i if i is not None else next(free) for i in kept])
    return out
