#!/usr/bin/env bash
# The raftlb demo: a three-node appliance cluster on this machine, a pool and a service applied
# with the CLI, the Raft leader crashed (kill -9 of its process group), the cluster going on
# without it, everything stopped at the end (also on Ctrl-C or failure).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/tools/bootstrap.sh"
cd "$ROOT"

say() { printf '\n\033[1;36m>>> %s\033[0m\n' "$*"; }
run() { printf '\033[2m$ %s\033[0m\n' "$*"; "$@"; }

DIR="$(mktemp -d /tmp/raftlb-demo.XXXXXX)"
cleanup() {
    say "stopping every agent and removing $DIR"
    raftlb lab local down --dir "$DIR" || true
    rm -rf "$DIR"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say "1. Start three appliance agents on 127.0.0.1 (each in its own process group). They form a Raft cluster and elect a leader."
run raftlb lab local up --nodes 3 --dir "$DIR"
api_of() { python -c 'import json,sys; print(json.load(open(sys.argv[1]))["nodes"][sys.argv[2]]["api_url"])' "$DIR/lab.json" "$1"; }
export RAFTLB_TOKEN_FILE="$DIR/api-token"
export RAFTLB_API="$(api_of n1)"

say "2. Give the appliance an address pool (layer 2, documentation range) through node n1's API."
cat >"$DIR/pool.yaml" <<'YAML'
pools:
  - name: lan
    addresses: ["192.0.2.200-192.0.2.230", "2001:db8:100::/120"]
    default: true
YAML
run cat "$DIR/pool.yaml"
run raftlb pools apply -f "$DIR/pool.yaml"

say "3. Apply two services. 'web' gets the first free address; 'dns' asks for IPv6. Writes go to the Raft leader and commit on a majority."
cat >"$DIR/services.yaml" <<'YAML'
services:
  - id: demo/default/web
    ports:
      - port: 80
        backends:
          - {address: 198.51.100.11, port: 30080}
          - {address: 198.51.100.12, port: 30080, weight: 2}
  - id: demo/default/dns
    ip_family: ipv6
    ports:
      - {port: 53, protocol: udp, backends: [{address: "2001:db8:1::53", port: 53}]}
YAML
run cat "$DIR/services.yaml"
run raftlb services apply -f "$DIR/services.yaml"
run raftlb vips

say "4. The cluster as n1 sees it."
run raftlb status
run raftlb nodes
LEADER="$(raftlb --json status | python -c 'import json,sys; print(json.load(sys.stdin)["raft"]["leader"])')"

say "5. Crash the Raft leader, $LEADER: kill -9 of its whole process group."
T0=$(date +%s.%N)
run raftlb lab local kill --dir "$DIR" "$LEADER"
for n in n1 n2 n3; do [ "$n" != "$LEADER" ] && SURVIVOR="$n" && break; done
export RAFTLB_API="$(api_of "$SURVIVOR")"
say "6. Ask a survivor ($SURVIVOR). The two remaining nodes are a majority: they elect a new leader at once."
leader_now() { raftlb --json status 2>/dev/null | python -c 'import json,sys; print(json.load(sys.stdin)["raft"]["leader"])' || echo None; }
until NEW="$(leader_now)" && [ "$NEW" != "None" ] && [ "$NEW" != "$LEADER" ]; do sleep 0.05; done
printf 'new leader: %s, seen %.2f s after the kill (polled with `raftlb status`, whose start-up time is included)\n' "$NEW" "$(python -c "import sys; print(float(sys.argv[1]) - float(sys.argv[2]))" "$(date +%s.%N)" "$T0")"
run raftlb status
run raftlb nodes

say "7. The cluster still takes writes, and kept every service and address."
cat >"$DIR/more.yaml" <<'YAML'
services:
  - id: demo/default/api
    ports: [{port: 443, backends: [{address: 198.51.100.13, port: 30443}]}]
YAML
run raftlb services apply -f "$DIR/more.yaml"
run raftlb services list

say "8. Bring $LEADER back: it rejoins as a follower and catches up from the log."
run raftlb lab local start --dir "$DIR" "$LEADER"
sleep 2
run raftlb nodes
say "Done. (Next: the namespace lab with real VIP failover: see the README.)"
