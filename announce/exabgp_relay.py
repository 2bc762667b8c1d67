"""exabgp's API process: relays between exabgp (stdin/stdout) and the agent (a unix socket).

`python -m announce.exabgp_relay SOCKET`. Lines from the agent go to stdout (exabgp reads them as
API commands); lines from exabgp (acknowledgements, JSON neighbour changes) go to the agent. It
keeps reading stdin, because exabgp stalls when its API output is not read, and exits as soon
as either side closes, so it never outlives exabgp or the agent.
"""

from __future__ import annotations

import os
import select
import socket
import sys


def relay(path: str) -> int:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except OSError as exc:
        print(f"exabgp relay: cannot reach the agent at {path}: {exc}", file=sys.stderr)
        return 1
    stdin = sys.stdin.fileno()
    stdout = sys.stdout.fileno()
    while True:
        ready, _, _ = select.select([stdin, sock], [], [])
        if stdin in ready:
            data = os.read(stdin, 65536)
            if not data:
                return 0  # exabgp is gone
            sock.sendall(data)
        if sock in ready:
            data = sock.recv(65536)
            if not data:
                return 0  # the agent is gone
            view = memoryview(data)
            while view:
                view = view[os.write(stdout, view) :]


if __name__ == "__main__":
    sys.exit(relay(sys.argv[1]))
