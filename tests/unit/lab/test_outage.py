"""Outage windows, MACs, forwarders and percentiles from recorded sample sequences."""

from __future__ import annotations

import json
import random

import pytest

from appliance.lab.outage import (
    MacChange,
    MacSeen,
    Outage,
    Sample,
    Stats,
    backends_seen,
    forwarders,
    mac_changes,
    mac_returns,
    macs_seen,
    outages,
    parse_samples,
    percentile,
    send_gaps,
    summarize,
    summary_line,
)

A, B = "02:00:00:00:00:0a", "02:00:00:00:00:0b"


def run(pattern: str, step: float = 0.01, start: float = 100.0) -> list[Sample]:
    """Samples from a pattern: '.' ok, 'x' failed, one per `step` seconds."""
    return [
        Sample(t=start + i * step, ok=c == ".", error=None if c == "." else "timeout")
        for i, c in enumerate(pattern)
    ]


def with_macs(macs: str) -> list[Sample]:
    """Samples from a MAC pattern: 'a'/'b' the MAC seen, '-' no entry; all ok."""
    named = {"a": A, "b": B, "-": None}
    return [Sample(t=float(i), ok=True, mac=named[c]) for i, c in enumerate(macs)]


def windows(found: list[Outage]) -> list[tuple[float, float, int, bool]]:
    return [(round(o.start, 6), round(o.end, 6), o.failed, o.open) for o in found]


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        pytest.param("", [], id="no samples"),
        pytest.param("..........", [], id="no failure"),
        pytest.param("...xxxxx..", [(100.03, 100.08, 5, False)], id="one in the middle"),
        pytest.param("xxx.......", [(100.0, 100.03, 3, False)], id="at the start"),
        pytest.param("......xxxx", [(100.06, 100.09, 4, True)], id="open at the end"),
        pytest.param(".........x", [(100.09, 100.09, 1, True)], id="open, last sample only"),
        pytest.param("xxxx", [(100.0, 100.03, 4, True)], id="all failed"),
        pytest.param("....x.....", [(100.04, 100.05, 1, False)], id="single failed sample"),
        pytest.param(
            ".xx...xxxx.x.",
            [(100.01, 100.03, 2, False), (100.06, 100.1, 4, False), (100.11, 100.12, 1, False)],
            id="several",
        ),
    ],
)
def test_outage_windows(pattern: str, expected: list[tuple[float, float, int, bool]]) -> None:
    assert windows(outages(run(pattern))) == expected


def test_samples_in_completion_order_are_sorted_by_send_time() -> None:
    samples = run("..xxx...x..")
    shuffled = samples[:]
    random.Random(7).shuffle(shuffled)
    assert outages(shuffled) == outages(samples)
    assert send_gaps(shuffled) == pytest.approx([0.01] * 10)


@pytest.mark.parametrize(
    ("pattern", "min_failed", "expected"),
    [
        ("..x..xx..xxx.", 1, [(100.02, 100.03), (100.05, 100.07), (100.09, 100.12)]),
        ("..x..xx..xxx.", 2, [(100.05, 100.07), (100.09, 100.12)]),
        ("..x..xx..xxx.", 3, [(100.09, 100.12)]),
        ("..x", 2, []),
    ],
)
def test_min_failed_drops_short_windows(
    pattern: str, min_failed: int, expected: list[tuple[float, float]]
) -> None:
    found = outages(run(pattern), min_failed=min_failed)
    assert [(round(o.start, 6), round(o.end, 6)) for o in found] == expected


def test_min_failed_must_be_positive() -> None:
    with pytest.raises(ValueError, match="min_failed"):
        outages(run("x"), min_failed=0)


def test_durations_follow_send_times_not_sample_count() -> None:
    # a late scheduler tick: the window is measured in time, whatever the number of samples
    samples = [
        Sample(t=0.0, ok=True),
        Sample(t=0.01, ok=False),
        Sample(t=0.2, ok=False),
        Sample(t=0.25, ok=True),
    ]
    (only,) = outages(samples)
    assert only.duration == pytest.approx(0.24)
    assert only.failed == 2


def test_summary_of_outages() -> None:
    found = outages(run(".xx...xxxx.x.xxxxxxxx"))
    summary = summarize(found)
    assert summary.count == 4
    assert summary.total == pytest.approx(0.02 + 0.04 + 0.01 + 0.07)
    assert summary.longest == pytest.approx(0.07)
    assert summary.p50 == pytest.approx(0.02)
    assert summary.p90 == pytest.approx(0.07)
    assert summary.open
    empty = summarize([])
    assert (empty.count, empty.total, empty.longest, empty.open) == (0, 0.0, 0.0, False)


def test_summary_line() -> None:
    line = summary_line(run("..xxx.....x"))
    assert line.startswith("11 samples; 4 failed; 2 outages: 30.0 ms, 0.0 ms (open); ")
    assert "send gap p50 10.0 ms" in line
    assert summary_line([]) == "0 samples; 0 failed; 0 outages"


@pytest.mark.parametrize(
    ("macs", "changes", "returns"),
    [
        pytest.param("aaaa", [], [], id="one MAC"),
        pytest.param("----", [], [], id="no entry at all"),
        pytest.param("aaabbb", [(3.0, A, B)], [], id="clean takeover"),
        pytest.param("aa--bb", [(4.0, A, B)], [], id="entry gone in between"),
        pytest.param("aa--aa", [], [], id="entry gone and back, same MAC"),
        pytest.param("--aabb", [(4.0, A, B)], [], id="first entry is not a change"),
        pytest.param(
            "aababba",
            [(2.0, A, B), (3.0, B, A), (4.0, A, B), (6.0, B, A)],
            [(3.0, B, A), (4.0, A, B), (6.0, B, A)],
            id="interleaving: split brain",
        ),
        pytest.param("aabbaa", [(2.0, A, B), (4.0, B, A)], [(4.0, B, A)], id="failback"),
    ],
)
def test_mac_changes_and_returns(
    macs: str, changes: list[tuple[float, str, str]], returns: list[tuple[float, str, str]]
) -> None:
    samples = with_macs(macs)
    assert mac_changes(samples) == [MacChange(t, old, new) for t, old, new in changes]
    assert mac_returns(samples) == [MacChange(t, old, new) for t, old, new in returns]


def test_macs_seen() -> None:
    assert macs_seen(with_macs("-aab-ba")) == [
        MacSeen(mac=A, first=1.0, last=6.0, count=3),
        MacSeen(mac=B, first=3.0, last=5.0, count=2),
    ]
    assert macs_seen(with_macs("---")) == []


def test_forwarders_and_backends() -> None:
    nodes = {"192.0.2.11": "n1", "192.0.2.12": "n2", "2001:db8::11": "n1"}
    samples = [
        Sample(t=0.0, ok=True, backend="b1", peer="192.0.2.11"),
        Sample(t=1.0, ok=True, backend="b2", peer="2001:db8::11"),
        Sample(t=2.0, ok=False, error="timeout"),
        Sample(t=3.0, ok=True, backend="b1", peer="192.0.2.12"),
        Sample(t=4.0, ok=True, backend="b1", peer="192.0.2.99"),
        Sample(t=5.0, ok=True, backend=None, peer=None),  # a 200 from a foreign server
    ]
    assert forwarders(samples, nodes) == {"n1": 2, "n2": 1, "192.0.2.99": 1}
    assert list(forwarders(samples, nodes)) == ["n1", "n2", "192.0.2.99"]
    assert backends_seen(samples) == {"b1": 3, "b2": 1}


@pytest.mark.parametrize(
    ("values", "p", "expected"),
    [
        ([5.0], 0, 5.0),
        ([5.0], 50, 5.0),
        ([5.0], 100, 5.0),
        ([1.0, 2.0], 50, 1.0),
        ([1.0, 2.0], 50.1, 2.0),
        ([3.0, 1.0, 2.0], 0, 1.0),
        ([3.0, 1.0, 2.0], 100, 3.0),
        ([float(i) for i in range(1, 101)], 99, 99.0),
        ([float(i) for i in range(1, 101)], 99.5, 100.0),
        ([float(i) for i in range(1, 11)], 90, 9.0),
        ([float(i) for i in range(1, 11)], 91, 10.0),
        ([2.0, 2.0, 2.0, 7.0], 75, 2.0),
    ],
)
def test_percentile_nearest_rank(values: list[float], p: float, expected: float) -> None:
    assert percentile(values, p) == expected


@pytest.mark.parametrize(("values", "p"), [([], 50), ([1.0], -1), ([1.0], 100.5)])
def test_percentile_rejects(values: list[float], p: float) -> None:
    with pytest.raises(ValueError, match="percentile"):
        percentile(values, p)


def test_stats() -> None:
    stats = Stats.of(float(i) for i in range(100, 0, -1))
    assert (stats.count, stats.min, stats.p50, stats.p90, stats.p99, stats.max) == (
        100,
        1.0,
        50.0,
        90.0,
        99.0,
        100.0,
    )
    with pytest.raises(ValueError):
        Stats.of([])


@pytest.mark.parametrize(
    "sample",
    [
        Sample(t=12.5, ok=True, latency=0.0012, backend="b1", peer="192.0.2.11", mac=A),
        Sample(t=13.0, ok=False, mac=None, error="timeout"),
        Sample(t=14, ok=True),
    ],
)
def test_sample_json_round_trip(sample: Sample) -> None:
    line = sample.to_json()
    assert "\n" not in line
    assert Sample.from_json(line) == sample


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"ok": True}, "'t'"),
        ({"t": "1", "ok": True}, "'t'"),
        ({"t": True, "ok": True}, "'t'"),
        ({"t": 1.0, "ok": 1}, "'ok'"),
        ({"t": 1.0, "ok": True, "latency": "fast"}, "'latency'"),
        ({"t": 1.0, "ok": True, "mac": 5}, "'mac'"),
    ],
)
def test_sample_from_json_names_the_bad_field(data: dict[str, object], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        Sample.from_json(json.dumps(data))


def test_parse_samples_drops_a_torn_last_line_only() -> None:
    good = [s.to_json() + "\n" for s in run("..x")]
    assert len(parse_samples([*good, "\n", '{"t": 5.0, "o'])) == 3
    assert Sample.from_json('{"t": 1, "ok": true, "seq": 9}') == Sample(t=1.0, ok=True)
    with pytest.raises(ValueError, match="line 2"):
        parse_samples([good[0], "{bad\n", good[1]])
