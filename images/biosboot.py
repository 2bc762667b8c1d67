"""Install GRUB's BIOS boot code into a GPT disk image file, as grub-bios-setup does on a device.

    biosboot.py DISK BOOT_IMG CORE_IMG CORE_SECTOR

The MBR keeps its partition table (bytes 440-511); its first 440 bytes become GRUB's boot.img,
told the sector where core.img starts. core.img is written there (the BIOS boot partition),
its first sector (diskboot) told where the rest of it follows. grub-bios-setup itself wants a
block device and a mounted /boot; an image built in a folder has neither.
"""

from __future__ import annotations

import struct
import sys
from pathlib import Path

SECTOR = 512
MBR_CODE_END = 0x1B8  # the disk signature and the partition table follow
KERNEL_SECTOR = 0x5C  # boot.img: 64-bit LBA of core.img's first sector
DRIVE_CHECK = 0x66  # boot.img: a jump skipped on hard disks (grub-bios-setup writes two NOPs)
BLOCKLIST = SECTOR - 12  # diskboot.img: start (u64), length (u16), segment (u16)


def install(disk: Path, boot_img: bytes, core_img: bytes, core_sector: int) -> None:
    if len(boot_img) != SECTOR:
        raise SystemExit(f"boot.img is {len(boot_img)} bytes, expected {SECTOR}")
    sectors = -(-len(core_img) // SECTOR)
    start, length, _segment = struct.unpack_from("<QHH", core_img, BLOCKLIST)
    # grub-mkimage leaves the blocklist at "the sector after this one", for a core image at
    # sector 1; its length must cover the rest of the image, or the loader would stop short.
    if start != 2 or length != sectors - 1:
        raise SystemExit(f"unexpected core.img blocklist start={start} length={length}")
    boot = bytearray(boot_img)
    struct.pack_into("<Q", boot, KERNEL_SECTOR, core_sector)
    boot[DRIVE_CHECK : DRIVE_CHECK + 2] = b"\x90\x90"
    core = bytearray(core_img)
    struct.pack_into("<Q", core, BLOCKLIST, core_sector + 1)
    with disk.open("r+b") as handle:
        mbr = bytearray(handle.read(SECTOR))
        if mbr[510:512] != b"\x55\xaa":
            raise SystemExit(f"{disk} has no partition table (write it first)")
        mbr[:MBR_CODE_END] = boot[:MBR_CODE_END]
        handle.seek(0)
        handle.write(mbr)
        handle.seek(core_sector * SECTOR)
        handle.write(core)
    print(f"BIOS boot code installed: core.img ({sectors} sectors) at sector {core_sector}")


if __name__ == "__main__":
    if len(sys.argv) != 5:
        raise SystemExit(__doc__)
    disk, boot, core, sector = sys.argv[1:]
    install(Path(disk), Path(boot).read_bytes(), Path(core).read_bytes(), int(sector))
