"""An in-memory stand-in for `RaftCluster`, for unit tests of the API, CLI and agent logic.

It applies commands to a `ClusterState` directly (a one-node cluster with instant commits) and
can pretend to have lost quorum, so callers' error paths can be tested without processes.
"""

from __future__ import annotations

import asyncio
from typing import Any

from raft.cluster import RaftStatus, SubmitError
from raft.commands import Command, encode
from raft.state import ClusterState, StateView


class InMemoryCluster:
    def __init__(self, node_id: str = "n1", peers: dict[str, str] | None = None) -> None:
        self.node_id = node_id
        self.peers = peers or {node_id: "127.0.0.1:7001"}
        self.state = ClusterState()
        self.has_quorum = True
        self.applied: list[dict[str, Any]] = []
        self.term = 1

    def view(self) -> StateView:
        return self.state.snapshot()

    def status(self) -> RaftStatus:
        leader = self.node_id if self.has_quorum else None
        return RaftStatus(
            node_id=self.node_id,
            role="leader" if self.has_quorum else "candidate",
            leader=leader,
            term=self.term,
            commit_index=len(self.applied),
            last_applied=len(self.applied),
            has_quorum=self.has_quorum,
            ready=True,
            connected={n: n == self.node_id or self.has_quorum for n in self.peers},
        )

    async def submit(self, command: Command, timeout: float) -> dict[str, Any]:
        if not self.has_quorum:
            await asyncio.sleep(min(timeout, 0.05))
            raise SubmitError("no_quorum", f"no Raft leader within {timeout:g}s (fake)")
        # Through the wire form, as a real commit goes: what the log would hold.
        raw = encode(command)
        self.applied.append(raw)
        return self.state.apply(raw)
