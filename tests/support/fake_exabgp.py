"""A stand-in for exabgp that speaks its API to `announce.exabgp_relay`, for tests without root.

`python -m tests.support.fake_exabgp server CONFIG`, as the announcer starts exabgp. It reads
the `run` line and the neighbours of CONFIG, starts the API process there the way exabgp does
(its stdin gets exabgp's messages, its stdout carries commands), reports every neighbour `up`
in exabgp's JSON, and answers each command `done`, or `error` when the command does not parse
(or holds $FAKE_EXABGP_REFUSE). With $FAKE_EXABGP_REFRESH set, the first neighbour also asks
for a route refresh, as exabgp reports one it received. Every start and command is appended
to $FAKE_EXABGP_LOG as one JSON line, so a test asserts exactly what a router would have been
told, in order.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

COMMAND = re.compile(
    r"^(?P<verb>announce|withdraw) route (?P<prefix>\S+) next-hop (?P<next_hop>\S+)(?P<rest>.*)$"
)
ATTRIBUTES = re.compile(
    r"^( community \[ [\d: ]+ \]| large-community \[ [\d: ]+ \]"
    r"| local-preference \d+| med \d+)*$"
)


def record(event: dict[str, Any]) -> None:
    path = os.environ.get("FAKE_EXABGP_LOG")
    if path:
        with open(path, "a", encoding="utf-8") as out:
            out.write(json.dumps({"pid": os.getpid(), **event}) + "\n")


def parses(line: str) -> bool:
    """A command exabgp would take: a host route, a next hop of an address, known attributes."""
    match = COMMAND.match(line)
    if match is None:
        return False
    try:
        prefix = ipaddress.ip_network(match["prefix"])
        ipaddress.ip_address(match["next_hop"])
    except ValueError:
        return False
    if prefix.prefixlen != prefix.max_prefixlen:
        return False
    return match["verb"] == "withdraw" or ATTRIBUTES.match(match["rest"]) is not None


def state_message(peer: str, state: str) -> str:
    return json.dumps(
        {
            "exabgp": "5.0.0",
            "time": time.time(),
            "type": "state",
            "neighbor": {"address": {"local": "0.0.0.0", "peer": peer}, "state": state},
        }
    )


def refresh_message(peer: str) -> str:
    """A route refresh request received from `peer`, in the shape exabgp 5 writes it."""
    return json.dumps(
        {
            "exabgp": "5.0.0",
            "time": time.time(),
            "type": "refresh",
            "neighbor": {
                "address": {"local": "0.0.0.0", "peer": peer},
                "asn": {"local": 65001, "peer": 65000},
                "direction": "receive",
                "route-refresh": {"afi": "ipv4", "safi": "unicast", "subtype": "0"},
            },
        }
    )


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] != "server":
        print("usage: fake_exabgp server CONFIG", file=sys.stderr)
        return 2
    config = Path(argv[1]).read_text()
    run = re.search(r"^\s*run (.+);$", config, re.MULTILINE)
    if run is None:
        print("fake exabgp: no `run` line in the configuration", file=sys.stderr)
        return 1
    peers = re.findall(r"^neighbor (\S+) \{$", config, re.MULTILINE)
    record({"event": "start", "peers": peers})
    api = subprocess.Popen(
        run[1].split(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1
    )
    assert api.stdin is not None and api.stdout is not None
    for peer in peers:
        api.stdin.write(state_message(peer, "up") + "\n")
    if os.environ.get("FAKE_EXABGP_REFRESH") and peers:
        api.stdin.write(refresh_message(peers[0]) + "\n")
    refuse = os.environ.get("FAKE_EXABGP_REFUSE")
    for raw in api.stdout:
        line = raw.rstrip("\n")
        ok = parses(line) and not (refuse and refuse in line)
        record({"event": "command", "line": line, "ok": ok})
        try:
            api.stdin.write("done\n" if ok else "error\n")
        except BrokenPipeError:
            break
    return api.wait()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
