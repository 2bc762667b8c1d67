"""Apply files (`raftlb pools|services apply -f FILE`): read once, checked with the models.

A file is YAML or JSON holding a list of objects, a single object, or a mapping `{pools: [...]}`
/ `{services: [...]}`. Every problem is collected (not only the first), each naming its field by
its path in the file (`services.1.ports.0.port`) and the value found there, so that nothing is
sent until the whole file is valid.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ValidationError

from appliance.documents import DocumentError, decode, load_json, load_yaml, load_yaml_all
from appliance.model import Pool, ServiceSpec, field_errors

M = TypeVar("M", bound=BaseModel)


class FileInvalid(Exception):  # noqa: N818  (reads as a verdict on the file)
    """The file cannot be applied: `message` says why, `errors` name each bad field."""

    def __init__(self, message: str, errors: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.errors = errors or []


@dataclass(frozen=True)
class Kind(Generic[M]):
    """One kind of object an apply file holds: its mapping key, model and identifying field."""

    key: str
    model: type[M]
    id_field: str

    def ident(self, item: M) -> str:
        return str(getattr(item, self.id_field))


POOLS = Kind("pools", Pool, "name")
SERVICES = Kind("services", ServiceSpec, "id")
_KEYS = {"pools": "raftlb pools apply", "services": "raftlb services apply"}


def read_document(path: str) -> Any:
    """Parse the file at `path` ("-" for stdin): JSON if it ends in .json, YAML otherwise."""
    return _read(path, load_yaml)


def read_documents(path: str) -> list[Any]:
    """Every document of the file at `path` ("-": stdin): a YAML stream (`---`), or one JSON."""
    return _read(path, load_yaml_all, many=True)  # type: ignore[no-any-return]


def _read(path: str, yaml_loader: Callable[[str], Any], many: bool = False) -> Any:
    try:
        raw = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
    except OSError as exc:
        raise FileInvalid(f"cannot read the file: {exc.strerror or exc}") from None
    try:
        text = decode(raw)
        if path.endswith(".json"):
            return [load_json(text)] if many else load_json(text)
        return yaml_loader(text)
    except DocumentError as exc:
        raise FileInvalid(str(exc)) from None


def parse_document(data: Any, kind: Kind[M]) -> list[M]:
    """Validate a parsed file as objects of `kind`; raise FileInvalid listing every problem."""
    items, prefix = _items(data, kind)
    out: list[M] = []
    errors: list[dict[str, Any]] = []
    first_seen: dict[str, int] = {}
    for index, raw in enumerate(items):
        where = ".".join(p for p in (prefix, str(index)) if p) if prefix is not None else ""
        try:
            item = kind.model.model_validate(raw)
        except ValidationError as exc:
            errors += field_errors(exc, where)
            continue
        ident = kind.ident(item)
        if ident in first_seen:
            errors.append(
                {
                    "field": f"{where}.{kind.id_field}",
                    "value": ident,
                    "message": f"appears twice (also item {first_seen[ident]})",
                }
            )
        first_seen.setdefault(ident, index)
        out.append(item)
    if errors:
        raise FileInvalid(f"{len(errors)} invalid field(s); nothing was sent", errors)
    return out


def _items(data: Any, kind: Kind[M]) -> tuple[list[Any], str | None]:
    """The raw objects of the file and the path prefix of their fields (None: a single object)."""
    if data is None:
        raise FileInvalid("the file is empty; nothing was sent")
    if isinstance(data, dict) and set(data) & set(_KEYS):
        others = sorted(set(data) - {kind.key})
        if others:
            raise FileInvalid(
                "unexpected keys; nothing was sent",
                [
                    {
                        "field": key,
                        "value": None,
                        "message": f"use `{_KEYS[key]}` for {key}"
                        if key in _KEYS
                        else f"unknown key (expected {kind.key})",
                    }
                    for key in others
                ],
            )
        items = data[kind.key]
        if not isinstance(items, list):
            raise FileInvalid(
                "not a list; nothing was sent",
                [{"field": kind.key, "value": _type_name(items), "message": "must be a list"}],
            )
        prefix: str | None = kind.key
    elif isinstance(data, dict):
        return [data], None
    elif isinstance(data, list):
        items, prefix = data, ""
    else:
        raise FileInvalid(
            f"the file holds a {_type_name(data)}, not {kind.key} (a list, an object, "
            f"or a mapping with {kind.key}: [...]); nothing was sent"
        )
    if not items:
        raise FileInvalid(f"the file lists no {kind.key}; nothing was sent")
    return items, prefix


_TYPE_NAMES: dict[type, str] = {dict: "mapping", list: "list", str: "string"}


def _type_name(value: Any) -> str:
    return _TYPE_NAMES.get(type(value), type(value).__name__)
