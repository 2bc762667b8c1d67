"""The API's error answer, one class for both sides of the wire: the agent's handlers raise it
to answer with it (`appliance.api.app`), the client raises it when it receives one
(`appliance.client`).

Imports only the limits, so that the client (and through it `k8s_sync`) may use it.
"""

from __future__ import annotations

from typing import Any

from appliance.limits import APPLY_MAX_BYTES, APPLY_MAX_ITEMS

# By error code, not status: after a 503 `timeout` the change may still be committed later.
_HINTS = {
    "unauthorized": "the API token is missing or wrong: use the token file the agents were "
    "started with",
    "no_quorum": "the cluster has no quorum (fewer than a majority of the nodes reach each "
    "other) or just lost its leader; retrying is safe once the nodes are back",
    "timeout": "the change was not confirmed in time and may still be applied later; "
    "retrying is safe",
    "too_large": f"one apply takes at most {APPLY_MAX_ITEMS} items and {APPLY_MAX_BYTES} bytes, "
    "all or nothing: split the file into several",
}


class ApiError(Exception):
    """An HTTP error answer of the API, `{"error": {"code", "message", "fields"}}`: what a handler
    raises to answer with it, and what the client raises when it receives one.

    `status` is 0 (code "bad_response") when the client got an answer this API does not send.
    """

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        fields: list[dict[str, Any]] | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.fields = fields or []
        self.retry_after = retry_after

    @property
    def hint(self) -> str | None:
        """What to do next, for errors where the message alone does not say."""
        return _HINTS.get(self.code)

    @property
    def bad_input(self) -> bool:
        """True when the request itself was refused as malformed, invalid or too large (400,
        413, 422): nothing was changed, and sending it again will not help."""
        return self.status in (400, 413, 422)

    def __str__(self) -> str:
        return f"{self.message} (HTTP {self.status} {self.code})"
