#!/usr/bin/env bash
# Build the raftlb appliance VM image: a bootable qcow2 (BIOS and UEFI) made from Debian 12
# packages (mmdebstrap) and the project's wheel, with no secret inside (each VM is configured on
# its first boot from a NoCloud seed or a config drive; see images/README.md).
#
#   images/build.sh [--out DIR] [--size 3G] [--mirror URL] [--raw] [--keep-work]
#
# Needs root (the root filesystem holds files of several owners) and the tools checked below.
# Every step prints a numbered line; the tools' own output goes to DIR/build.log.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
OUT="$HERE/out"
SIZE="3G"
MIRROR="${RAFTLB_IMAGE_MIRROR:-http://deb.debian.org/debian}"
SUITE="bookworm"
RAW=0
KEEP=0
STEPS=8
while (($#)); do
    case "$1" in
        --out) OUT="$2"; shift 2 ;;
        --size) SIZE="$2"; shift 2 ;;
        --mirror) MIRROR="$2"; shift 2 ;;
        --raw) RAW=1; shift ;;
        --keep-work) KEEP=1; shift ;;
        -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
        *) echo "images/build.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done

START=$SECONDS
N=0
step() { N=$((N + 1)); printf '\033[1m[image %d/%d]\033[0m %s (%ds)\n' "$N" "$STEPS" "$*" "$((SECONDS - START))"; }
die() { printf '\033[1;31m[image] error:\033[0m %s\n' "$*" >&2; exit 1; }

# -- 1. tools -------------------------------------------------------------------------------
step "checking the build tools"
[ "$(id -u)" = 0 ] || die "run as root: the root filesystem holds files of several owners (root, raftlb)"
missing=()
for pair in mmdebstrap:mmdebstrap mkfs.ext4:e2fsprogs mkfs.vfat:dosfstools mcopy:mtools \
    sfdisk:fdisk qemu-img:qemu-utils grub-mkimage:grub-common git:git; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
done
[ -f /usr/lib/grub/i386-pc/boot.img ] || missing+=(grub-pc-bin)
[ -d /usr/lib/grub/x86_64-efi ] || missing+=(grub-efi-amd64-bin)
if ((${#missing[@]})); then
    die "missing tools; install them with: apt-get install ${missing[*]}"
fi
if [ -x "$ROOT/.venv/bin/python" ]; then PY="$ROOT/.venv/bin/python"; else PY="$(command -v python3.11 || command -v python3 || true)"; fi
PY="${RAFTLB_IMAGE_PYTHON:-$PY}"
[ -n "$PY" ] || die "no python3: apt-get install python3 python3-pip (or run tools/bootstrap.sh)"
# The wheels built here (pydantic-core, cryptography...) must match Debian 12's Python 3.11.
"$PY" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' ||
    die "the wheels must be built with Python 3.11 (Debian 12's); $PY is $("$PY" --version 2>&1)"
"$PY" -m pip --version >/dev/null 2>&1 ||
    die "$PY has no pip: apt-get install python3-pip, or run tools/bootstrap.sh (makes .venv)"

mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
LOG="$OUT/build.log"
: >"$LOG"
WORK="$(mktemp -d "${TMPDIR:-/var/tmp}/raftlb-image.XXXXXX")"
cleanup() {
    local rc=$?
    if ((rc != 0)); then
        printf '\033[1;31m[image] failed\033[0m after %ds; last lines of %s:\n' "$((SECONDS - START))" "$LOG" >&2
        tail -25 "$LOG" >&2 || true
    fi
    if ((KEEP)); then echo "[image] work directory kept: $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
run() { "$@" >>"$LOG" 2>&1; }

# -- 2. source and wheels --------------------------------------------------------------------
step "exporting the source and building the wheels"
VERSION="$("$PY" -c 'import tomllib,sys; print(tomllib.load(open(sys.argv[1],"rb"))["project"]["version"])' "$ROOT/pyproject.toml")"
if git -C "$ROOT" rev-parse --git-dir >/dev/null 2>&1; then
    REV="$(git -C "$ROOT" describe --always --dirty --abbrev=12)"
    # Timestamps inside the image come from the commit, so two builds of one commit agree.
    EPOCH="$(git -C "$ROOT" log -1 --format=%ct)"
    [[ "$REV" == *-dirty ]] && echo "[image] warning: the tree has uncommitted changes; the image will not match commit ${REV%-dirty}"
    mkdir -p "$WORK/src"
    # Only what git knows (tracked, or new and not ignored): no venv, caches or old outputs.
    git -C "$ROOT" ls-files -z -c -o --exclude-standard |
        (cd "$ROOT" && xargs -0 tar -cf - --no-recursion 2>>"$LOG") | tar -xf - -C "$WORK/src"
else
    REV="unknown"
    EPOCH="$(date +%s)"
    cp -a "$ROOT" "$WORK/src"
fi
export SOURCE_DATE_EPOCH="$EPOCH"
# The lab (namespace networks, a fake Kubernetes API, test backends, keepalived and HAProxy
# baselines, benchmarks) is a workstation tool, not part of the appliance: its wheel is built
# without it, and `raftlb lab` in the image says where to run it instead.
rm -rf "$WORK/src/appliance/lab"
NAME="raftlb-$VERSION"
run "$PY" -m pip wheel --disable-pip-version-check --no-cache-dir \
    --constraint "$HERE/constraints.txt" --wheel-dir "$WORK/wheels" "$WORK/src[k8s]" ||
    die "building the wheels failed (see $LOG): check the access to PyPI"
echo "[image] raftlb $VERSION ($REV), $(ls "$WORK/wheels" | wc -l) wheels"

# -- 3. root filesystem ----------------------------------------------------------------------
step "installing Debian $SUITE from $MIRROR (mmdebstrap, about a minute)"
PACKAGES=(
    systemd-sysv udev dbus systemd-timesyncd systemd-resolved
    linux-image-amd64 initramfs-tools
    python3 python3-venv
    nftables iproute2 iputils-ping tcpdump procps less netbase ca-certificates
    bird2
    cloud-init cloud-guest-utils openssh-server logrotate sudo
)
export RAFTLB_WHEELS="$WORK/wheels" RAFTLB_OVERLAY="$HERE/rootfs" RAFTLB_VERSION="$VERSION"
export RAFTLB_REV="$REV" RAFTLB_DOCS="$ROOT"
# mmdebstrap's own progress ("I: ...") is shown; everything else goes to the log.
{
    mmdebstrap --mode=root --variant=apt --format=directory \
        --include="$(IFS=,; echo "${PACKAGES[*]}")" \
        --customize-hook="\"$HERE/customize.sh\" \"\$1\"" \
        "$SUITE" "$WORK/root" "$MIRROR" 2>&1
    echo $? >"$WORK/mmdebstrap.rc"
} | tee -a "$LOG" | { grep --line-buffered '^[IE]: ' || true; } | sed -u 's/^/    /'
[ "$(cat "$WORK/mmdebstrap.rc")" = 0 ] ||
    die "mmdebstrap or the customize hook failed (see $LOG; a download error: check the mirror)"
cp "$WORK/root/usr/share/doc/raftlb/manifest.txt" "$OUT/$NAME.manifest"

# -- 4. filesystems --------------------------------------------------------------------------
step "making the root and EFI filesystems"
# Fixed identifiers (derived from the version) keep two builds of one commit alike; the
# labels are what the boot loader, the kernel command line and fstab look for.
uuid_of() { "$PY" -c 'import uuid,sys; print(uuid.uuid5(uuid.NAMESPACE_URL, sys.argv[1]))' "raftlb/$REV/$1"; }
DISK_MB=$(( $(numfmt --from=iec "$SIZE") / 1048576 ))
ROOT_START_MB=66
ROOT_MB=$((DISK_MB - ROOT_START_MB - 1))
((ROOT_MB >= 1536)) || die "--size $SIZE is too small: the image needs at least 1.6G"
E2FSPROGS_FAKE_TIME="$EPOCH" run mkfs.ext4 -q -F -L raftlb-root -U "$(uuid_of root)" \
    -E "hash_seed=$(uuid_of hash),root_owner=0:0" -d "$WORK/root" "$WORK/root.img" "${ROOT_MB}M" ||
    die "mkfs.ext4 failed (see $LOG)"
run mkfs.vfat -n RAFTLB-ESP -i 5241F7B0 -C "$WORK/esp.img" $((64 * 1024)) || die "mkfs.vfat failed"
GRUB_MODULES=(part_gpt part_msdos ext2 fat search search_label configfile normal linux echo test
    gzio serial terminal sleep)
run grub-mkimage -O x86_64-efi -o "$WORK/BOOTX64.EFI" -c "$HERE/grub/early.cfg" -p /boot/grub \
    "${GRUB_MODULES[@]}" efi_gop efi_uga all_video || die "grub-mkimage (EFI) failed"
MTOOLS_SKIP_CHECK=1 run mmd -i "$WORK/esp.img" ::/EFI ::/EFI/BOOT
MTOOLS_SKIP_CHECK=1 run mcopy -i "$WORK/esp.img" "$WORK/BOOTX64.EFI" ::/EFI/BOOT/BOOTX64.EFI

# -- 5. boot loader for BIOS -----------------------------------------------------------------
step "making the BIOS boot loader"
run grub-mkimage -O i386-pc -o "$WORK/core.img" -c "$HERE/grub/early.cfg" -p /boot/grub \
    biosdisk "${GRUB_MODULES[@]}" || die "grub-mkimage (BIOS) failed"
CORE_SECTORS=$(( ($(stat -c %s "$WORK/core.img") + 511) / 512 ))
((CORE_SECTORS <= 2048)) || die "the BIOS core image ($CORE_SECTORS sectors) outgrew its 1 MiB partition"

# -- 6. disk ---------------------------------------------------------------------------------
step "assembling the $SIZE disk (GPT: BIOS boot, EFI system, root)"
DISK="$WORK/disk.raw"
truncate -s "${DISK_MB}M" "$DISK"
run sfdisk --no-reread --no-tell-kernel "$DISK" <<EOF
label: gpt
label-id: $(uuid_of disk)
start=2048, size=2048, type=21686148-6E6D-7049-6E6F-744E65656446, uuid=$(uuid_of p1), name="bios"
start=4096, size=131072, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, uuid=$(uuid_of p2), name="esp"
start=$((ROOT_START_MB * 2048)), type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, uuid=$(uuid_of p3), name="root"
EOF
dd if="$WORK/esp.img" of="$DISK" bs=1M seek=2 conv=notrunc,sparse status=none
dd if="$WORK/root.img" of="$DISK" bs=1M seek="$ROOT_START_MB" conv=notrunc,sparse status=none
# What grub-bios-setup does, on a file: the MBR's boot code jumps to the core image in the
# BIOS boot partition (sector 2048), and the core image's first sector loads the rest of it.
"$PY" "$HERE/biosboot.py" "$DISK" /usr/lib/grub/i386-pc/boot.img "$WORK/core.img" 2048 >>"$LOG" ||
    die "writing the BIOS boot code failed (see $LOG)"

# -- 7. image --------------------------------------------------------------------------------
if ((RAW)); then
    step "writing $NAME.raw"
    IMAGE="$OUT/$NAME.raw"
    cp --sparse=always "$DISK" "$IMAGE"
else
    step "converting to a compressed qcow2 (about a minute)"
    IMAGE="$OUT/$NAME.qcow2"
    run qemu-img convert -c -O qcow2 "$DISK" "$IMAGE" || die "qemu-img convert failed"
fi

# -- 8. checksums ----------------------------------------------------------------------------
step "checksums"
(cd "$OUT" && sha256sum "$(basename "$IMAGE")" "$NAME.manifest" >"$NAME.sha256")
printf '\033[1m[image] done\033[0m in %ds: %s (%s, raftlb %s, %s)\n' "$((SECONDS - START))" \
    "$IMAGE" "$(du -h --apparent-size "$IMAGE" | cut -f1)" "$VERSION" "$REV"
