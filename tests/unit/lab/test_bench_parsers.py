"""Parsing what the benchmark tools print."""

from __future__ import annotations

import pytest

from appliance.lab import LabError
from appliance.lab.bench_dataplane import parse_wrk

WRK = """Running 3s test @ http://192.0.2.200:8088/
  2 threads and 50 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   712.29us  581.16us  14.41ms   91.32%
    Req/Sec    28.31k     2.49k   33.44k    68.33%
  Latency Distribution
     50%  577.00us
     75%  790.00us
     90%    1.18ms
     99%    {p99}
  169045 requests in 3.00s, 24.66MB read
Requests/sec:  56349.12
Transfer/sec:      8.22MB
"""


@pytest.mark.parametrize(("p99", "ms"), [("4.87ms", 4.87), ("950.00us", 0.95), ("1.20s", 1200.0)])
def test_parse_wrk(p99: str, ms: float) -> None:
    rps, latency = parse_wrk(WRK.format(p99=p99))
    assert rps == 56349.12
    assert latency == pytest.approx(ms)


def test_parse_wrk_names_what_it_could_not_read() -> None:
    with pytest.raises(LabError, match="could not read wrk"):
        parse_wrk("unable to connect to 192.0.2.200:8088 Connection refused")
