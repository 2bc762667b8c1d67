#!/usr/bin/env bash
# The whole test suite: lint, format check, types, package graph, then pytest (unit,
# integration on loopback, and lab tests that need root). Sets itself up on a fresh machine.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/tools/bootstrap.sh"
cd "$ROOT"
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
step "ruff check";   ruff check appliance raft announce k8s_sync tests images
step "ruff format";  ruff format --check appliance raft announce k8s_sync tests images
step "mypy";         mypy
step "import-linter"; lint-imports
step "pytest"
# -p no:cacheprovider: CI runs on a read-mostly clone; nothing to cache between runs.
# --durations: the slowest tests in every log, to keep the whole command under ~25 minutes.
exec python -m pytest -p no:cacheprovider -ra --durations=25 "$@"
