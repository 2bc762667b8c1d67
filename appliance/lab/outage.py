"""What a prober run saw: samples, outage windows, MACs, forwarders, backends. Pure, no I/O.

A `Sample` is one request of the prober (appliance.lab.prober). Every function here takes samples
in any order (the prober writes them as they complete, not as they were sent) and sorts them by
send time `t` first. Times are `time.monotonic()` seconds, which on Linux is one clock for every
process of the machine, so samples can be compared with times other processes record.

The outage definition is the one every failover figure uses: a window runs from the send time of
the first failed sample to the send time of the first successful sample after it. Its resolution
is therefore the probe interval (plus scheduler jitter), and a stall shorter than the probe
timeout shows up as latency, not as an outage.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Sample:
    """One probe request: when it was sent and what came back.

    t: monotonic send time; latency: seconds to the answer (None when it failed); backend and
    peer: the backend's name and the client address it saw; mac: the client's neighbour-table
    MAC for the target when the request was sent (None: no entry or not read); error: why it
    failed (None when ok).
    """

    t: float
    ok: bool
    latency: float | None = None
    backend: str | None = None
    peer: str | None = None
    mac: str | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        """One JSON object on one line (the prober's .jsonl format)."""
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Sample:
        """Check and convert a decoded JSON object; unknown keys are ignored (newer writers)."""
        t = data.get("t")
        if isinstance(t, bool) or not isinstance(t, int | float):
            raise ValueError(f"sample field 't' must be a number, got {t!r}")
        ok = data.get("ok")
        if not isinstance(ok, bool):
            raise ValueError(f"sample field 'ok' must be true or false, got {ok!r}")
        latency = data.get("latency")
        if latency is not None and (
            isinstance(latency, bool) or not isinstance(latency, int | float)
        ):
            raise ValueError(f"sample field 'latency' must be a number or null, got {latency!r}")
        texts: dict[str, str | None] = {}
        for name in ("backend", "peer", "mac", "error"):
            value = data.get(name)
            if value is not None and not isinstance(value, str):
                raise ValueError(f"sample field {name!r} must be a string or null, got {value!r}")
            texts[name] = value
        return cls(
            t=float(t),
            ok=ok,
            latency=None if latency is None else float(latency),
            backend=texts["backend"],
            peer=texts["peer"],
            mac=texts["mac"],
            error=texts["error"],
        )

    @classmethod
    def from_json(cls, line: str) -> Sample:
        """Parse one line written by `to_json`; ValueError names the bad field."""
        data = json.loads(line)
        if not isinstance(data, dict):
            raise ValueError(f"a sample must be a JSON object, got {line.strip()!r}")
        return cls.from_dict(data)


def parse_samples(lines: Iterable[str]) -> list[Sample]:
    """Samples from .jsonl lines; blank lines are skipped, a torn last line (a killed writer)
    is dropped, any other bad line raises ValueError with its line number."""
    items = [(n, line) for n, line in enumerate(lines, 1) if line.strip()]
    samples = []
    for index, (number, line) in enumerate(items):
        try:
            samples.append(Sample.from_json(line))
        except ValueError as exc:  # json.JSONDecodeError is a ValueError
            if index == len(items) - 1 and not line.endswith("\n"):
                break
            raise ValueError(f"line {number}: {exc}") from None
    return samples


def by_time(samples: Iterable[Sample]) -> list[Sample]:
    """Samples in send order."""
    return sorted(samples, key=lambda s: s.t)


@dataclass(frozen=True, slots=True)
class Outage:
    """A window without service: start = send time of the first failed sample, end = send time
    of the first successful one after it (or of the last sample when `open`)."""

    start: float
    end: float
    failed: int
    open: bool = False

    @property
    def duration(self) -> float:
        return self.end - self.start


def outages(samples: Iterable[Sample], min_failed: int = 1) -> list[Outage]:
    """The outage windows in the samples, in time order.

    `min_failed` drops windows with fewer consecutive failed samples (e.g. 2 to ignore a lone
    lost datagram). An outage still running at the last sample is reported with open=True and
    end = the last sample's send time.
    """
    if min_failed < 1:
        raise ValueError(f"min_failed must be at least 1, got {min_failed}")
    ordered = by_time(samples)
    found: list[Outage] = []
    start: float | None = None
    failed = 0
    for sample in ordered:
        if not sample.ok:
            if start is None:
                start = sample.t
            failed += 1
        elif start is not None:
            if failed >= min_failed:
                found.append(Outage(start=start, end=sample.t, failed=failed))
            start, failed = None, 0
    if start is not None and failed >= min_failed:
        found.append(Outage(start=start, end=ordered[-1].t, failed=failed, open=True))
    return found


def percentile(values: Iterable[float], p: float) -> float:
    """Nearest-rank percentile: the smallest value with at least p % of the values at or below
    it, i.e. sorted(values)[ceil(p / 100 * n) - 1]; p = 0 gives the minimum, p = 100 the
    maximum. Always one of the values (no interpolation). ValueError on no values or p outside
    [0, 100]."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("percentile of no values")
    if not 0 <= p <= 100:
        raise ValueError(f"percentile must be within [0, 100], got {p}")
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass(frozen=True, slots=True)
class Stats:
    """Nearest-rank figures of a set of values (seconds or whatever was given)."""

    count: int
    min: float
    p50: float
    p90: float
    p99: float
    max: float

    @classmethod
    def of(cls, values: Iterable[float]) -> Stats:
        """ValueError on no values."""
        ordered = sorted(values)
        if not ordered:
            raise ValueError("stats of no values")
        return cls(
            count=len(ordered),
            min=ordered[0],
            p50=percentile(ordered, 50),
            p90=percentile(ordered, 90),
            p99=percentile(ordered, 99),
            max=ordered[-1],
        )


@dataclass(frozen=True, slots=True)
class OutageSummary:
    """count, total and longest duration, p50/p90 of durations (0.0 when there is none)."""

    count: int
    total: float
    longest: float
    p50: float
    p90: float
    open: bool


def durations(found: Iterable[Outage]) -> list[float]:
    return [o.duration for o in found]


def summarize(found: Sequence[Outage]) -> OutageSummary:
    """Figures of a list of outages; open is True if the last one was still open."""
    values = durations(found)
    if not values:
        return OutageSummary(count=0, total=0.0, longest=0.0, p50=0.0, p90=0.0, open=False)
    return OutageSummary(
        count=len(values),
        total=sum(values),
        longest=max(values),
        p50=percentile(values, 50),
        p90=percentile(values, 90),
        open=found[-1].open,
    )


def send_gaps(samples: Iterable[Sample]) -> list[float]:
    """Gaps between consecutive send times: the prober's achieved schedule (its resolution)."""
    times = [s.t for s in by_time(samples)]
    return [b - a for a, b in itertools.pairwise(times)]


@dataclass(frozen=True, slots=True)
class MacSeen:
    mac: str
    first: float
    last: float
    count: int


def macs_seen(samples: Iterable[Sample]) -> list[MacSeen]:
    """Distinct neighbour MACs in order of first appearance, with first/last time and count."""
    seen: dict[str, MacSeen] = {}
    for s in by_time(samples):
        if s.mac is None:
            continue
        old = seen.get(s.mac)
        if old is None:
            seen[s.mac] = MacSeen(mac=s.mac, first=s.t, last=s.t, count=1)
        else:
            seen[s.mac] = MacSeen(mac=s.mac, first=old.first, last=s.t, count=old.count + 1)
    return list(seen.values())


@dataclass(frozen=True, slots=True)
class MacChange:
    """The neighbour entry for the target went from `old` to `new`; `t` is the send time of
    the first sample that saw `new`."""

    t: float
    old: str
    new: str


def mac_changes(samples: Iterable[Sample]) -> list[MacChange]:
    """Each change of the target's MAC. Samples without a MAC (no entry, or not read) are
    skipped: an entry that vanishes and comes back with the same MAC is not a change."""
    changes: list[MacChange] = []
    current: str | None = None
    for s in by_time(samples):
        if s.mac is None:
            continue
        if current is not None and s.mac != current:
            changes.append(MacChange(t=s.t, old=current, new=s.mac))
        current = s.mac
    return changes


def mac_returns(samples: Iterable[Sample]) -> list[MacChange]:
    """Changes back to a MAC that had already been replaced: two owners answering for the VIP
    in turn (the split-brain signature), or a failback. Empty for a clean failover A -> B."""
    returns: list[MacChange] = []
    left: set[str] = set()
    for change in mac_changes(samples):
        left.add(change.old)
        if change.new in left:
            returns.append(change)
    return returns


def forwarders(samples: Iterable[Sample], node_by_peer: Mapping[str, str]) -> dict[str, int]:
    """How many successful requests each appliance node forwarded, known from the peer address
    the backend saw (masquerade makes it the node's address). A peer not in `node_by_peer` is
    counted under the address itself. Keys in order of first appearance."""
    counts: dict[str, int] = {}
    for s in by_time(samples):
        if s.ok and s.peer is not None:
            node = node_by_peer.get(s.peer, s.peer)
            counts[node] = counts.get(node, 0) + 1
    return counts


def backends_seen(samples: Iterable[Sample]) -> dict[str, int]:
    """Successful requests per backend name, in order of first appearance."""
    counts: dict[str, int] = {}
    for s in by_time(samples):
        if s.ok and s.backend is not None:
            counts[s.backend] = counts.get(s.backend, 0) + 1
    return counts


def summary_line(samples: Sequence[Sample]) -> str:
    """The one-line report of a run: samples, failures, outages in ms, send-gap p99/max."""
    found = outages(samples)
    failed = sum(1 for s in samples if not s.ok)
    parts = [f"{len(samples)} samples", f"{failed} failed", f"{len(found)} outages"]
    if found:
        shown = ", ".join(
            f"{o.duration * 1000:.1f} ms{' (open)' if o.open else ''}" for o in found[:20]
        )
        more = f" and {len(found) - 20} more" if len(found) > 20 else ""
        parts[-1] += f": {shown}{more}"
    gaps = send_gaps(samples)
    if gaps:
        parts.append(
            f"send gap p50 {percentile(gaps, 50) * 1000:.1f} ms, "
            f"p99 {percentile(gaps, 99) * 1000:.1f} ms, max {max(gaps) * 1000:.1f} ms"
        )
    return "; ".join(parts)
