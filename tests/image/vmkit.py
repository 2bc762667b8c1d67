"""Appliance VMs under qemu for the image tests: a private network namespace with a bridge
(the "LAN", 192.0.2.0/24 and 2001:db8:8::/64, the test host at .1), one tap per VM, each VM
booted from a throwaway overlay of the built image with its seed and a blank data disk.

Nothing is linked to the host's interfaces: the VMs reach only the namespace. Everything is
removed by `VmNet.close`, which the fixtures call also when a test fails.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

GATEWAY4 = "192.0.2.1"
GATEWAY6 = "2001:db8:8::1"
NS_PREFIX = "rlbimg-"


def sh(*args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, check=check, capture_output=True, text=True, timeout=timeout)


def accel() -> str:
    """tcg unless RAFTLB_QEMU_ACCEL says otherwise: nested KVM hung in GRUB on this machine."""
    return os.environ.get("RAFTLB_QEMU_ACCEL", "tcg")


@dataclass
class Vm:
    name: str
    address: str
    folder: Path
    index: int
    image: Path
    seed_iso: Path
    memory_mb: int
    process: subprocess.Popen[bytes] | None = None
    started: float = 0.0

    @property
    def console(self) -> Path:
        return self.folder / "console.log"

    def console_text(self) -> str:
        try:
            return self.console.read_text(errors="replace")
        except OSError:
            return ""


@dataclass
class VmNet:
    base: Path
    name: str = field(default_factory=lambda: NS_PREFIX + uuid.uuid4().hex[:8])
    vms: list[Vm] = field(default_factory=list)

    def __post_init__(self) -> None:
        sh("ip", "netns", "add", self.name)
        self.ns("ip", "link", "set", "lo", "up")
        self.ns("ip", "link", "add", "br0", "type", "bridge")
        self.ns("ip", "addr", "add", f"{GATEWAY4}/24", "dev", "br0")
        self.ns("ip", "addr", "add", f"{GATEWAY6}/64", "dev", "br0", "nodad")
        self.ns("ip", "link", "set", "br0", "up")

    def ns(
        self, *args: str, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        return sh("ip", "netns", "exec", self.name, *args, check=check, timeout=timeout)

    def boot(
        self, name: str, address: str, image: Path, seed_iso: Path, memory_mb: int = 1024
    ) -> Vm:
        index = len(self.vms)
        folder = self.base / name
        folder.mkdir(parents=True)
        # A blank disk: the seed's fs_setup formats it for /var/lib/raftlb.
        with (folder / "data.raw").open("wb") as handle:
            handle.truncate(256 << 20)
        tap = f"tap{index}"
        self.ns("ip", "tuntap", "add", tap, "mode", "tap")
        self.ns("ip", "link", "set", tap, "master", "br0", "up")
        vm = Vm(name, address, folder, index, image, seed_iso, memory_mb)
        self._start(vm)
        self.vms.append(vm)
        return vm

    def replace_system_disk(self, vm: Vm, image: Path) -> None:
        """What an upgrade does: power the VM off, give it a fresh system disk made from
        `image`, keep its data disk and seed, power it on."""
        self.kill(vm)
        (vm.folder / "disk.qcow2").unlink()
        vm.image = image
        self._start(vm)

    def _start(self, vm: Vm) -> None:
        overlay = vm.folder / "disk.qcow2"
        if not overlay.exists():
            sh(
                "qemu-img",
                "create",
                "-q",
                "-f",
                "qcow2",
                "-F",
                "qcow2",
                "-b",
                str(vm.image),
                str(overlay),
            )
        command = [
            "ip", "netns", "exec", self.name,
            "qemu-system-x86_64", "-machine", f"q35,accel={accel()}", "-m", str(vm.memory_mb),
            "-smp", "1", "-display", "none", "-no-user-config", "-nodefaults",
            "-serial", f"file:{vm.console}",
            "-drive", f"file={overlay},if=virtio,format=qcow2",
            "-drive", f"file={vm.folder / 'data.raw'},if=virtio,format=raw",
            "-drive", f"file={vm.seed_iso},if=virtio,format=raw,readonly=on",
            "-netdev", f"tap,id=n0,ifname=tap{vm.index},script=no,downscript=no",
            "-device", f"virtio-net-pci,netdev=n0,mac=52:54:00:7b:00:{vm.index + 10:02x}",
        ]  # fmt: skip
        vm.started = time.monotonic()
        with (vm.folder / "qemu.log").open("ab") as log:
            vm.process = subprocess.Popen(command, stdout=log, stderr=log, start_new_session=True)

    def kill(self, vm: Vm) -> None:
        """Power a VM off at once (SIGKILL to qemu): a node lost without warning."""
        if vm.process is not None and vm.process.poll() is None:
            os.killpg(vm.process.pid, signal.SIGKILL)
            vm.process.wait(timeout=30)

    def close(self) -> None:
        for vm in self.vms:
            self.kill(vm)
        sh("ip", "netns", "delete", self.name, check=False)


def ssh_command(
    net: VmNet, vm: Vm, key: Path, command: str, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return net.ns(
        "ssh", "-i", str(key), "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
        "-o", "UserKnownHostsFile=/dev/null", "-o", "ConnectTimeout=5", "-o", "LogLevel=ERROR",
        f"raftlb-admin@{vm.address}", command,
        check=False, timeout=timeout,
    )  # fmt: skip


def wait_until_active(net: VmNet, vm: Vm, key: Path, deadline: float) -> float:
    """Seconds from power-on until `systemctl is-active raftlb-agent` says active (over SSH)."""
    while time.monotonic() < deadline:
        if vm.process is not None and vm.process.poll() is not None:
            raise AssertionError(f"{vm.name}: qemu exited: {(vm.folder / 'qemu.log').read_text()}")
        result = ssh_command(net, vm, key, "systemctl is-active raftlb-agent", timeout=30)
        if result.stdout.strip() == "active":
            return time.monotonic() - vm.started
        time.sleep(2)
    raise AssertionError(
        f"{vm.name}: raftlb-agent not active in time; console:\n{vm.console_text()[-4000:]}"
    )


def leftovers() -> list[str]:
    return [n for n in sh("ip", "netns", "list").stdout.split() if n.startswith(NS_PREFIX)]


def have_tools() -> str | None:
    for tool in ("qemu-system-x86_64", "qemu-img", "ssh", "mmdebstrap"):
        if shutil.which(tool) is None:
            return f"the image tests need {tool} (tools/bootstrap.sh installs it as root)"
    return None
