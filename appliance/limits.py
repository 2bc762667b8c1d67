"""Limits of the HTTP API that clients must know to split their writes (the Kubernetes sync).

A `POST /v1/apply` becomes one Raft entry, applied on every node's Raft tick thread, which
also sends heartbeats: a batch must apply well within the election timeout (0.15-0.3 s with
`fast` timing) even on a loaded machine. 100 services with ten backends apply in ~12 ms alone,
and in 50-100 ms with three agents sharing this lab machine's two cores. Bigger writes are
split by the client into several batches.
"""

from __future__ import annotations

# Items (pools + services + deletions) in one POST /v1/apply.
APPLY_MAX_ITEMS = 100
# Bytes of one POST /v1/apply body.
APPLY_MAX_BYTES = 2 * 1024 * 1024
# Bytes of any other request body (one pool or service).
BODY_MAX_BYTES = 1024 * 1024
# Seconds within which a request's body must have arrived (a slow body held a handler forever).
BODY_SECONDS = 10.0
