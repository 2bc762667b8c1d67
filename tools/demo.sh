#!/usr/bin/env bash
# The raftlb demo. As root: a whole network in namespaces (`raftlb lab demo`); without root: the
# same story on 127.0.0.1 (tools/demo-local.sh). Either way everything is removed at the end.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/tools/bootstrap.sh"
if [ "$(id -u)" = 0 ]; then
    exec raftlb lab demo
fi
echo "not root: running the loopback demo (the namespace lab needs root)" >&2
exec bash "$ROOT/tools/demo-local.sh"
