"""Moving to raftlb from another load balancer: what every migration shares.

A migration reads the other product's configuration (already parsed YAML: no I/O here) and
answers raftlb models plus a report, in which every setting that has no raftlb equivalent, or
whose meaning changes on the way, is a `Finding` naming its object and field: nothing is left
out silently. Input that cannot be translated is collected as errors (each with the file, the
object and the field) and raised together as `MigrationError`, so no half-done answer exists.

Kubernetes-based products share the rest: `Objects` reads manifests and `kubectl get -o yaml`
output (`kind: List` included), `label_selector` and `duration_seconds` read their values.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

# ignored: left out of the raftlb configuration; changed: translated, with another meaning or
# after a choice the report explains.
Effect = Literal["ignored", "changed"]
_EMPTY: tuple[Any, ...] = (None, "", [], {}, False)


@dataclass(frozen=True)
class Ref:
    """One object of the input: the file it came from, its kind and its name."""

    file: str
    kind: str
    name: str

    def __str__(self) -> str:
        return f"{self.kind}/{self.name}"


def short(value: Any) -> Any:
    """The value as given when it is small, else a shortened text (a report stays readable)."""
    try:
        text = json.dumps(value, default=str)
    except (TypeError, ValueError):
        text = repr(value)
    else:
        if len(text) <= 200:
            return value
    return text if len(text) <= 120 else text[:117] + "..."


@dataclass(frozen=True)
class Finding:
    """One line of the report."""

    ref: Ref
    field: str
    value: Any
    effect: Effect
    message: str

    def to_json(self) -> dict[str, Any]:
        return {
            "file": self.ref.file,
            "kind": self.ref.kind,
            "name": self.ref.name,
            "field": self.field,
            "value": short(self.value),
            "effect": self.effect,
            "message": self.message,
        }


def error_entry(ref: Ref | None, file: str, path: str, value: Any, message: str) -> dict[str, Any]:
    """An error in the API's field shape, with the file and the object added."""
    where = f"{ref} {path}" if ref is not None else path
    return {
        "file": file,
        "kind": ref.kind if ref else None,
        "name": ref.name if ref else None,
        "field": where,
        "value": short(value),
        "message": message,
    }


class MigrationError(Exception):
    """The input cannot be translated; `errors` name every problem's file, object and field."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__(f"{len(errors)} problem(s) in the input")
        self.errors = errors


@dataclass
class Problems:
    """What one migration found: report lines and errors, in the order of the input."""

    findings: list[Finding] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)

    def report(self, ref: Ref, path: str, value: Any, effect: Effect, message: str) -> None:
        self.findings.append(Finding(ref, path, value, effect, message))

    def error(self, ref: Ref | None, file: str, path: str, value: Any, message: str) -> None:
        self.errors.append(error_entry(ref, file, path, value, message))

    def raise_if_any(self) -> None:
        if self.errors:
            raise MigrationError(self.errors)


_TYPES: dict[str, tuple[type, ...]] = {
    "a string": (str,),
    "true or false": (bool,),
    "a mapping": (dict,),
    "a list": (list,),
}


class Fields:
    """One mapping of the input (an object's spec, a list entry), read key by key.

    Each read checks the value's type (a wrong one is an error naming the field); `aliases`
    renames keys, so one reader serves formats that spell the same setting differently
    (MetalLB's CRDs say `holdTime`, its ConfigMap `hold-time`); `finish` reports the keys that
    nothing read, so a setting this migration does not know is never dropped unseen.
    """

    def __init__(
        self,
        problems: Problems,
        ref: Ref,
        data: Mapping[str, Any],
        prefix: str,
        aliases: Mapping[str, str] | None = None,
    ) -> None:
        self.problems, self.ref, self.data, self.prefix = problems, ref, data, prefix
        self.aliases = aliases or {}
        self._read: set[str] = set()

    def key(self, name: str) -> str:
        return self.aliases.get(name, name)

    def path(self, name: str) -> str:
        return f"{self.prefix}.{self.key(name)}" if self.prefix else self.key(name)

    def raw(self, name: str) -> Any:
        self._read.add(self.key(name))
        return self.data.get(self.key(name))

    def error(self, name: str, value: Any, message: str) -> None:
        self.error_at(self.path(name), value, message)

    def error_at(self, path: str, value: Any, message: str) -> None:
        self.problems.error(self.ref, self.ref.file, path, value, message)

    def report(self, name: str, value: Any, effect: Effect, message: str) -> None:
        self.report_at(self.path(name), value, effect, message)

    def report_at(self, path: str, value: Any, effect: Effect, message: str) -> None:
        self.problems.report(self.ref, path, value, effect, message)

    def _typed(self, name: str, expected: str) -> Any:
        value = self.raw(name)
        if value is None:
            return None
        if isinstance(value, _TYPES[expected]) and not (
            expected != "true or false" and isinstance(value, bool)
        ):
            return value
        self.error(name, value, f"must be {expected}")
        return None

    def text(self, name: str) -> str | None:
        value: str | None = self._typed(name, "a string")
        return value

    def flag(self, name: str) -> bool | None:
        value: bool | None = self._typed(name, "true or false")
        return value

    def number(self, name: str) -> int | None:
        value = self.raw(name)
        if value is None or (isinstance(value, int) and not isinstance(value, bool)):
            return value
        self.error(name, value, "must be an integer")
        return None

    def texts(self, name: str) -> list[str]:
        values: list[Any] = self._typed(name, "a list") or []
        for i, value in enumerate(values):
            if not isinstance(value, str):
                self.error_at(f"{self.path(name)}.{i}", value, "must be a string")
        return [value for value in values if isinstance(value, str)]

    def mapping(self, name: str) -> dict[str, Any]:
        value: dict[str, Any] = self._typed(name, "a mapping") or {}
        return value

    def entries(self, name: str, aliases: Mapping[str, str] | None = None) -> Iterator[Fields]:
        """The mappings of a list, each as Fields of its own (path `name.i`)."""
        for i, value in enumerate(self._typed(name, "a list") or []):
            path = f"{self.path(name)}.{i}"
            if isinstance(value, dict):
                yield Fields(self.problems, self.ref, value, path, aliases)
            else:
                self.error_at(path, value, "must be a mapping")

    def unsupported(
        self, name: str, message: str, effect: Effect = "ignored", default: Any = None
    ) -> Any:
        """Report the setting when it is given with a value that matters (not empty, not the
        default that `kubectl get` shows for it); answer the value."""
        value = self.raw(name)
        if value not in _EMPTY and value != default:
            self.report(name, value, effect, message)
        return value

    def finish(self) -> None:
        for key in self.data:
            if key not in self._read:
                path = f"{self.prefix}.{key}" if self.prefix else str(key)
                message = "not a field this migration knows (a newer version's?): check it by hand"
                self.report_at(path, self.data[key], "ignored", message)


class Objects:
    """The Kubernetes objects of parsed YAML documents, each once: a `List` gives its items, an
    empty document nothing, and what is no object, or the same object twice, an error."""

    def __init__(self, problems: Problems, accept: Callable[[Ref, Any], bool]) -> None:
        # accept(ref, apiVersion): whether to read the object (it records why not, if it must).
        self.problems, self.accept = problems, accept
        self.seen: dict[tuple[str, str], str] = {}  # (kind, name): the file that gave it

    def read(self, file: str, docs: list[Any]) -> Iterator[tuple[Ref, dict[str, Any]]]:
        for i, doc in enumerate(docs):
            where = f"(document {i + 1})"
            if doc is None:  # an empty document: `---` twice, or a trailing one
                continue
            kind = doc.get("kind") if isinstance(doc, dict) else None
            entries: Iterable[tuple[str, Any]] = [(where, doc)]
            if isinstance(kind, str) and kind.endswith("List") and "items" in doc:
                if not isinstance(doc["items"], list):
                    self.problems.error(None, file, f"{where}.items", None, "must be a list")
                    continue
                entries = ((f"{where}.items.{j}", item) for j, item in enumerate(doc["items"]))
            for at, obj in entries:
                ref = self._object(file, at, obj)
                if ref is not None:
                    yield ref, obj

    def _object(self, file: str, where: str, obj: Any) -> Ref | None:
        kind = obj.get("kind") if isinstance(obj, dict) else None
        if not isinstance(obj, dict) or not isinstance(kind, str) or not kind:
            self.problems.error(None, file, where, short(obj), "not a Kubernetes object (no kind)")
            return None
        meta = obj.get("metadata")
        name = meta.get("name") if isinstance(meta, dict) else None
        ref = Ref(file, kind, name if isinstance(name, str) and name else where)
        if not self.accept(ref, obj.get("apiVersion")):
            return None
        if ref.name == where:
            self.problems.error(ref, file, "metadata.name", name, "missing")
            return None
        if (kind, ref.name) in self.seen:
            also = self.seen[kind, ref.name]
            self.problems.error(ref, file, "metadata.name", ref.name, f"given twice (also {also})")
            return None
        self.seen[kind, ref.name] = file
        return ref


_OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")


def label_selector(sel: Fields) -> Callable[[Mapping[str, str]], bool]:
    """A Kubernetes label selector (matchLabels, matchExpressions) as a test of labels."""
    wanted = sel.mapping("matchLabels")
    requirements: list[tuple[str, str, list[str]]] = []
    for expr in sel.entries("matchExpressions"):
        key, op, values = expr.text("key") or "", expr.text("operator"), expr.texts("values")
        if op in _OPERATORS:
            requirements.append((key, op, values))
        else:
            expr.error("operator", op, f"must be {', '.join(_OPERATORS)}")
        expr.finish()
    sel.finish()

    def matches(labels: Mapping[str, str]) -> bool:
        return all(labels.get(k) == v for k, v in wanted.items()) and all(
            _meets(labels, *requirement) for requirement in requirements
        )

    return matches


def _meets(labels: Mapping[str, str], key: str, op: str, values: list[str]) -> bool:
    if op == "In":
        return key in labels and labels[key] in values
    if op == "NotIn":
        return labels.get(key) not in values
    return (key in labels) == (op == "Exists")


_DURATION = re.compile(r"(?:[0-9]*(?:\.[0-9]*)?(?:ns|us|µs|ms|s|m|h))+")
_DURATION_PART = re.compile(r"([0-9]*(?:\.[0-9]*)?)(ns|us|µs|ms|s|m|h)")
_UNIT = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def duration_seconds(text: str) -> int | None:
    """A Go duration ("90s", "1m30s", metav1.Duration's text) in whole seconds, rounded down;
    None if it is none."""
    if text == "0":
        return 0
    if not _DURATION.fullmatch(text):
        return None
    total = 0.0
    for number, unit in _DURATION_PART.findall(text):
        if number in ("", "."):
            return None
        total += float(number) * _UNIT[unit]
    return int(total)
