#!/usr/bin/env bash
# mmdebstrap's customize hook: turn the Debian tree at $1 into the raftlb appliance.
# Runs on the build host (root) with $1 the image's root; the environment comes from build.sh.
set -euo pipefail
R="$1"
: "${RAFTLB_WHEELS:?} ${RAFTLB_OVERLAY:?} ${RAFTLB_VERSION:?} ${RAFTLB_REV:?} ${RAFTLB_DOCS:?}"
# Commands in the image see its own environment, not the build host's (pip settings, venvs).
in_image() { chroot "$R" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 "$@"; }
say() { echo "I: raftlb: $*"; }

say "user and directories"
# The agent runs as this user with only the capabilities it needs (see raftlb-agent.service).
in_image useradd --system --user-group --home-dir /var/lib/raftlb --no-create-home \
    --shell /usr/sbin/nologin --comment "raftlb agent" raftlb
# Secrets readable by the agent's group only; the seed writes the files (see appliance/seed.py).
GID="$(in_image getent group raftlb | cut -d: -f3)"
for dir in /etc/raftlb /etc/raftlb/secrets /etc/raftlb/tls; do
    install -d -m 0750 -o 0 -g "$GID" "$R$dir"
done

say "raftlb $RAFTLB_VERSION into /opt/raftlb"
mkdir -p "$R/tmp/wheels"
cp "$RAFTLB_WHEELS"/*.whl "$R/tmp/wheels/"
in_image python3 -m venv /opt/raftlb
# With the k8s extra: raftlb-k8s-sync.service runs the sync when the seed configures it.
in_image /opt/raftlb/bin/pip install --quiet --disable-pip-version-check --no-index --no-compile \
    --find-links /tmp/wheels "raftlb[k8s]==$RAFTLB_VERSION"
# Byte code checked by hash, not by timestamp: the same source makes the same image.
in_image /opt/raftlb/bin/python -m compileall -q --invalidation-mode unchecked-hash \
    /opt/raftlb/lib >/dev/null
rm -rf "$R/tmp/wheels"
ln -sf /opt/raftlb/bin/raftlb "$R/usr/local/bin/raftlb"
in_image /usr/local/bin/raftlb --help >/dev/null

say "configuration files and units"
cp -r --no-preserve=ownership "$RAFTLB_OVERLAY/." "$R/"
chmod 0644 "$R"/etc/systemd/system/raftlb-*.service
mkdir -p "$R/usr/share/doc/raftlb"
cp "$RAFTLB_DOCS/README.md" "$R/usr/share/doc/raftlb/README.md"
cp "$RAFTLB_DOCS/images/README.md" "$R/usr/share/doc/raftlb/IMAGE.md"
# BIRD is the agent's BFD daemon (bgp.bfd), started by the agent with its own config; the
# package's system-wide BIRD would load routes from /etc/bird/bird.conf: never start it.
in_image systemctl mask bird.service >/dev/null 2>&1
in_image systemctl enable raftlb-agent.service raftlb-k8s-sync.service systemd-networkd.service \
    systemd-resolved.service systemd-timesyncd.service >/dev/null 2>&1
# The unit files must be valid as systemd reads them (a typo would only show at boot).
in_image systemd-analyze verify --man=no raftlb-agent.service raftlb-k8s-sync.service

say "first-boot state"
# Each VM makes its own identity on its first boot: machine id, SSH host keys, random seed.
: >"$R/etc/machine-id"
rm -f "$R/var/lib/dbus/machine-id" "$R"/etc/ssh/ssh_host_* "$R/var/lib/systemd/random-seed"
echo "raftlb" >"$R/etc/hostname"
find "$R/var/log" -type f -exec truncate -s 0 {} +
rm -rf "$R"/var/cache/apt/*.bin "$R"/var/lib/apt/lists/* "$R"/tmp/* "$R"/root/.cache

say "manifest"
{
    echo "raftlb $RAFTLB_VERSION ($RAFTLB_REV)"
    echo
    echo "# Debian packages"
    in_image dpkg-query -W -f '${Package} ${Version}\n'
    echo
    echo "# Python packages in /opt/raftlb"
    in_image /opt/raftlb/bin/pip list --disable-pip-version-check --format=freeze
} >"$R/usr/share/doc/raftlb/manifest.txt"
echo "RAFTLB_VERSION=$RAFTLB_VERSION" >"$R/etc/raftlb-release"
echo "RAFTLB_REVISION=$RAFTLB_REV" >>"$R/etc/raftlb-release"
