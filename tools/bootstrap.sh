#!/usr/bin/env bash
# Set up everything raftlb needs on a fresh Debian 12 machine, idempotently:
# system packages (when missing), a virtualenv in .venv, and the package with its dev tools and
# the Kubernetes client (the k8s extra: the sync's tests and the lab's k8s benchmark need it).
# Sourced by tools/demo.sh and tools/test.sh; safe to run again and again.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"

say() { printf '\033[1m[setup]\033[0m %s\n' "$*" >&2; }

need_apt=()
command -v ip >/dev/null 2>&1 || need_apt+=(iproute2)
command -v nft >/dev/null 2>&1 || need_apt+=(nftables)
command -v bird >/dev/null 2>&1 || need_apt+=(bird2)
# FRR: the lab router can be FRR as well as BIRD, and its bfdd gives BGP mode sub-second BFD.
[ -x /usr/lib/frr/bgpd ] || need_apt+=(frr)
command -v tcpdump >/dev/null 2>&1 || need_apt+=(tcpdump)
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)
command -v ping >/dev/null 2>&1 || need_apt+=(iputils-ping)
if ! command -v python3 >/dev/null 2>&1; then need_apt+=(python3 python3-venv python3-dev); fi
# The appliance image: built by images/build.sh and booted under qemu by tests/image.
command -v mmdebstrap >/dev/null 2>&1 || need_apt+=(mmdebstrap)
command -v qemu-system-x86_64 >/dev/null 2>&1 || need_apt+=(qemu-system-x86)
command -v qemu-img >/dev/null 2>&1 || need_apt+=(qemu-utils)
[ -f /usr/lib/grub/i386-pc/boot.img ] || need_apt+=(grub-pc-bin)
[ -d /usr/lib/grub/x86_64-efi ] || need_apt+=(grub-efi-amd64-bin)
command -v mkfs.vfat >/dev/null 2>&1 || need_apt+=(dosfstools)
command -v mcopy >/dev/null 2>&1 || need_apt+=(mtools)
command -v sfdisk >/dev/null 2>&1 || need_apt+=(fdisk)
[ -f /usr/share/OVMF/OVMF_CODE_4M.fd ] || need_apt+=(ovmf)
command -v ssh >/dev/null 2>&1 || need_apt+=(openssh-client)
command -v curl >/dev/null 2>&1 || need_apt+=(curl)
if ((${#need_apt[@]})); then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        say "installing system packages: ${need_apt[*]}"
        export DEBIAN_FRONTEND=noninteractive
        # bird2's package starts a system-wide daemon; raftlb runs its own BIRDs in namespaces.
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
        apt-get update -qq || say "apt-get update failed; trying with the cached lists"
        apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
        rm -f /usr/sbin/policy-rc.d
    else
        say "missing ${need_apt[*]} (not root, or no apt-get): root-only features will be skipped"
    fi
fi

PY="${RAFTLB_PYTHON:-$(command -v python3.11 || command -v python3)}"
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    say "raftlb needs Python >= 3.11, $PY is $("$PY" --version)"; exit 1
fi
if [ ! -x "$VENV/bin/python" ]; then
    say "creating virtualenv $VENV"
    if ! "$PY" -m venv "$VENV" 2>/dev/null; then
        rm -rf "$VENV"
        apt-get install -y -qq python3-venv >/dev/null
        "$PY" -m venv "$VENV"
    fi
fi
# Reinstall only when the dependency list changed.
STAMP="$VENV/.raftlb-deps"
WANT="$(sha256sum "$ROOT/pyproject.toml" | cut -d' ' -f1)"
if [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]; then
    say "installing raftlb and its dependencies into $VENV (about a minute the first time)"
    LOG="$VENV/pip-install.log"
    if ! { "$VENV/bin/pip" install --disable-pip-version-check --upgrade pip &&
           "$VENV/bin/pip" install --disable-pip-version-check -e "$ROOT[dev,k8s]"; } >"$LOG" 2>&1; then
        tail -30 "$LOG" >&2
        say "pip install failed (full log: $LOG); check the network access to PyPI and retry"
        exit 1
    fi
    echo "$WANT" >"$STAMP"
fi
export PATH="$VENV/bin:$PATH"
