"""Reading YAML and JSON documents that people (or attackers) wrote: bounded and strict.

`yaml.safe_load` is safe from code execution, not from everything else: a ~500-byte alias
bomb made `config check` use 1.09 GB and never answer, YAML nested 5,000 deep or JSON nested
100,000 deep crashed with a RecursionError traceback, and a duplicate key silently won. Here:
- aliases (`*name`) are refused: no config or apply file needs them;
- YAML nested deeper than `MAX_DEPTH`, JSON deeper than the decoder's limit, is refused;
- a key given twice in one mapping is refused, naming it and its line;
- a document larger than `MAX_BYTES` is refused before it is parsed;
- text must be UTF-8.
Every refusal is a `DocumentError` whose message says where.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, TypeVar

import yaml

T = TypeVar("T")

MAX_DEPTH = 64
MAX_BYTES = 16 * 1024 * 1024


class DocumentError(ValueError):
    """The document cannot be read; the message says why and where."""


def decode(raw: bytes, what: str = "the file") -> str:
    if len(raw) > MAX_BYTES:
        raise DocumentError(f"{what} has {len(raw)} bytes, more than {MAX_BYTES}")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DocumentError(f"{what} is not UTF-8 text (byte {exc.start})") from None


class _StrictLoader(yaml.SafeLoader):
    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()  # type: ignore[no-untyped-call]
            raise yaml.composer.ComposerError(
                None,
                None,
                f"alias *{event.anchor} is not accepted (write the value out)",
                event.start_mark,
            )
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise yaml.composer.ComposerError(
                    None,
                    None,
                    f"nested more than {MAX_DEPTH} deep",
                    self.peek_event().start_mark,  # type: ignore[no-untyped-call]
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
            except TypeError:
                continue  # an unhashable key: the base class says so
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} is given twice", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_yaml(text: str) -> Any:
    """One YAML document, strictly (see the module doc). Raises DocumentError."""
    return _yaml(lambda: yaml.load(text, Loader=_StrictLoader))


def load_yaml_all(text: str) -> list[Any]:
    """Every document of a YAML stream (`---`: manifests), each as strictly. DocumentError."""
    return _yaml(lambda: list(yaml.load_all(text, Loader=_StrictLoader)))


def _yaml(load: Callable[[], T]) -> T:
    try:
        return load()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise DocumentError(f"not valid YAML: {where}{problem}") from None


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise DocumentError(f"not valid JSON: key {key!r} is given twice")
        out[key] = value
    return out


def load_json(text: str) -> Any:
    """One JSON document, strictly. Raises DocumentError."""
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates)
    except json.JSONDecodeError as exc:
        raise DocumentError(
            f"not valid JSON: line {exc.lineno}, column {exc.colno}: {exc.msg}"
        ) from None
    except RecursionError:
        raise DocumentError("not valid JSON: nested too deeply") from None
    except ValueError as exc:  # e.g. an integer of more than 4,300 digits
        if isinstance(exc, DocumentError):
            raise
        raise DocumentError(f"not valid JSON: {exc}") from None
