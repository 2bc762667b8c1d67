"""PATCH as the Kubernetes API server applies it, for the lab's test API server.

The server picks the patch format from the Content-Type, as the real one does: a JSON patch
(RFC 6902, a list of operations), a JSON merge patch (RFC 7386) or a strategic merge patch
(a merge patch where a list whose field declares `patchStrategy: merge` is merged, not
replaced, and `$deleteFromPrimitiveList/<field>` removes items). Any other type is 415, a body
of the wrong shape 400, a `metadata.resourceVersion` in the patch that is not the object's
409: the answers a real server gives, so a client that sends the wrong one fails here too.
"""

from __future__ import annotations

import copy
from typing import Any

JSON_PATCH = "application/json-patch+json"
MERGE_PATCH = "application/merge-patch+json"
STRATEGIC = "application/strategic-merge-patch+json"
# Lists of the kinds served whose fields declare patchStrategy merge on primitives.
_MERGED_PRIMITIVE_LISTS = {"finalizers"}


class PatchError(Exception):
    """A refused patch: the HTTP code and the Status reason the real server answers with."""

    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message

    def status(self) -> dict[str, Any]:
        return {
            "kind": "Status",
            "apiVersion": "v1",
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }


def apply_patch(obj: dict[str, Any], content_type: str, body: Any) -> dict[str, Any]:
    """`obj` patched (a new object; `obj` is not changed), or PatchError."""
    kind = content_type.split(";", maxsplit=1)[0].strip().lower()
    if kind == JSON_PATCH:
        if not isinstance(body, list):
            raise PatchError(
                400,
                "BadRequest",
                "json: cannot unmarshal object into Go value of type []handlers.jsonPatchOp",
            )
        out = _json_patch(copy.deepcopy(obj), body)
    elif kind in (MERGE_PATCH, STRATEGIC):
        if not isinstance(body, dict):
            raise PatchError(400, "BadRequest", "the patch is not a JSON object")
        _precondition(obj, body)
        out = copy.deepcopy(obj)
        _merge(out, body, strategic=kind == STRATEGIC)
    else:
        raise PatchError(
            415,
            "UnsupportedMediaType",
            f"the body of the request was in an unknown format: "
            f"{content_type or '(none)'}; accepted: {JSON_PATCH}, {MERGE_PATCH}, {STRATEGIC}",
        )
    return out


def _precondition(obj: dict[str, Any], body: dict[str, Any]) -> None:
    wanted = (body.get("metadata") or {}).get("resourceVersion")
    have = (obj.get("metadata") or {}).get("resourceVersion")
    if wanted is not None and wanted != have:
        name = (obj.get("metadata") or {}).get("name")
        raise PatchError(
            409,
            "Conflict",
            f"Operation cannot be fulfilled on {name!r}: the object has been "
            "modified; please apply your changes to the latest version and try again",
        )


def _merge(target: dict[str, Any], patch: dict[str, Any], strategic: bool) -> None:
    for key, value in patch.items():
        if strategic and key.startswith("$deleteFromPrimitiveList/"):
            field = key.split("/", 1)[1]
            if isinstance(value, list) and isinstance(target.get(field), list):
                target[field] = [v for v in target[field] if v not in value]
            continue
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge(target[key], value, strategic)
        elif strategic and key in _MERGED_PRIMITIVE_LISTS and isinstance(value, list):
            found = target.get(key)
            current: list[Any] = found if isinstance(found, list) else []
            target[key] = [*current, *(v for v in value if v not in current)]
        else:
            target[key] = copy.deepcopy(value)


def _pointer(path: str) -> list[str]:
    if path and not path.startswith("/"):
        raise PatchError(400, "BadRequest", f"the JSON pointer {path!r} does not start with /")
    return [part.replace("~1", "/").replace("~0", "~") for part in path.split("/")[1:]]


def _parent(doc: Any, parts: list[str], path: str) -> Any:
    for part in parts[:-1]:
        if isinstance(doc, dict) and part in doc:
            doc = doc[part]
        elif isinstance(doc, list) and part.isdigit() and int(part) < len(doc):
            doc = doc[int(part)]
        else:
            raise PatchError(422, "Invalid", f"the path {path!r} does not exist")
    return doc


def _json_patch(doc: dict[str, Any], ops: list[Any]) -> dict[str, Any]:
    for op in ops:
        if not isinstance(op, dict) or not isinstance(op.get("path"), str):
            raise PatchError(400, "BadRequest", f"not a JSON patch operation: {op!r}")
        parts = _pointer(op["path"])
        if not parts:
            raise PatchError(422, "Invalid", "a patch of the whole object is not allowed")
        parent, last = _parent(doc, parts, op["path"]), parts[-1]
        name = op.get("op")
        if name == "test":
            current = (
                parent.get(last)
                if isinstance(parent, dict)
                else parent[int(last)]
                if last.isdigit() and int(last) < len(parent)
                else None
            )
            if current != op.get("value"):
                raise PatchError(
                    422, "Invalid", f"the test of {op['path']} failed: it is {current!r}"
                )
        elif name in ("add", "replace"):
            value = copy.deepcopy(op.get("value"))
            if isinstance(parent, list):
                index = len(parent) if last == "-" else int(last)
                if name == "add":
                    parent.insert(index, value)
                else:
                    parent[index] = value
            else:
                if name == "replace" and last not in parent:
                    raise PatchError(422, "Invalid", f"replace of {op['path']}: it does not exist")
                parent[last] = value
        elif name == "remove":
            try:
                del parent[int(last) if isinstance(parent, list) else last]
            except (KeyError, IndexError, ValueError):
                raise PatchError(
                    422, "Invalid", f"remove of {op['path']}: it does not exist"
                ) from None
        else:
            raise PatchError(400, "BadRequest", f"unsupported JSON patch operation {name!r}")
    return doc
