"""Loads rendered rulesets with `nft -f` and keeps the node's data plane in step with what it holds.

`NftApplier` runs nft (in the calling process's network namespace): a ruleset is loaded whole or
not at all (a broken one changes nothing and raises `NftError` with nft's message), and is not
reloaded when the same text is already in place, also across an agent restart (the table carries
the digest of its rules). `DataPlane` renders from the replicated state and the VIPs held, and
applies only when that input changed.
"""

from __future__ import annotations

import logging
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

from appliance.dataplane.render import TABLE, Firewall, digest_of, forwards, removal, render
from appliance.model import Backend, IPAddress, Service

log = logging.getLogger("raftlb.dataplane")


# What a forwarding node needs: routing on, and no ICMP redirects telling clients to go to a
# backend directly (they would bypass the VIP's NAT).
FORWARDING_SYSCTLS = {
    "net/ipv4/ip_forward": "1",
    "net/ipv6/conf/all/forwarding": "1",
    "net/ipv4/conf/all/send_redirects": "0",
    "net/ipv4/conf/default/send_redirects": "0",
}


def sysctl_problems(root: Path = Path("/proc/sys")) -> list[str]:
    """The forwarding sysctls that are not as they must be, as `name=value (want W)`."""
    wrong = []
    for key, value in FORWARDING_SYSCTLS.items():
        try:
            now = (root / key).read_text().strip()
        except OSError:
            now = "unreadable"
        if now != value:
            wrong.append(f"{key.replace('/', '.')}={now} (want {value})")
    return wrong


def set_forwarding_sysctls(root: Path = Path("/proc/sys")) -> list[str]:
    """Set FORWARDING_SYSCTLS; the problems, each saying what to do."""
    problems = []
    for key, value in FORWARDING_SYSCTLS.items():
        path = root / key
        try:
            if path.read_text().strip() != value:
                path.write_text(value)
        except OSError as exc:
            name = key.replace("/", ".")
            problems.append(
                f"cannot set {name}={value} ({exc.strerror}): forwarding through this node "
                f"may fail; set it with sysctl -w {name}={value}"
            )
    return problems


class NftError(Exception):
    """nft refused a ruleset or could not run; nothing was changed."""


class NftApplier:
    def __init__(self, table: str = TABLE, nft: str = "nft", timeout: float = 10.0) -> None:
        self.table = table
        self.nft = nft
        self.timeout = timeout
        self.loaded: str | None = None  # the digest of what is in the kernel, when known
        self.loads = 0
        self.last_load_seconds = 0.0

    def _run(self, args: list[str], text: str | None = None) -> subprocess.CompletedProcess[str]:
        try:
            return subprocess.run(
                [self.nft, *args],
                input=text,
                capture_output=True,
                text=True,
                timeout=self.timeout,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise NftError(f"cannot run {self.nft}: {exc}") from None

    def current_digest(self) -> str | None:
        """The digest of the table now in the kernel (None: no table, or not ours)."""
        result = self._run(["list", "table", "inet", self.table])
        return digest_of(result.stdout) if result.returncode == 0 else None

    def apply(self, text: str) -> bool:
        """Load `text` unless it is what is loaded already; True if it was loaded."""
        digest = digest_of(text)
        if self.loaded is None:
            self.loaded = self.current_digest()
        if digest is not None and digest == self.loaded:
            return False
        started = time.monotonic()
        result = self._run(["-f", "-"], text)
        if result.returncode != 0:
            raise NftError(
                f"nft refused the ruleset (nothing changed): {result.stderr.strip()[:2000]}"
            )
        self.last_load_seconds = time.monotonic() - started
        self.loads += 1
        self.loaded = digest
        return True

    def remove(self) -> None:
        result = self._run(["-f", "-"], removal(self.table))
        if result.returncode != 0:
            raise NftError(f"cannot remove table inet {self.table}: {result.stderr.strip()}")
        self.loaded = None


class Health(Protocol):
    """What the data plane needs of the health checker (appliance.health)."""

    version: int

    def healthy(self, service_id: str, backend: Backend) -> bool: ...


class DataPlane:
    """Keeps the forwarding rules equal to (services, held VIPs, backend health)."""

    def __init__(
        self, applier: NftApplier, health: Health | None = None, firewall: Firewall | None = None
    ) -> None:
        self.applier = applier
        self.health = health
        self.firewall = firewall
        self._key: tuple[frozenset[IPAddress], tuple[Service, ...], int] | None = None
        self.errors = 0
        self.last_error: str | None = None

    def sync(self, services: Iterable[Service], held: Iterable[IPAddress]) -> None:
        vips = frozenset(held)
        mine = tuple(s for s in services if s.address in vips)
        key = (vips, mine, self.health.version if self.health else 0)
        old = self._key
        if (
            old is not None
            and old[0] == key[0]
            and old[2] == key[2]
            and len(old[1]) == len(mine)
            and all(a is b for a, b in zip(old[1], mine, strict=True))
        ):
            return  # same objects: the models are frozen, so the same rules
        healthy = self.health.healthy if self.health else None
        text = render(forwards(mine, vips, healthy), self.applier.table, self.firewall)
        try:
            if self.applier.apply(text):
                log.info(
                    "data plane: %d VIP(s), %d service(s) loaded in %.1f ms",
                    len(vips),
                    len(mine),
                    1000 * self.applier.last_load_seconds,
                )
        except NftError as exc:
            self.errors += 1
            if str(exc) != self.last_error:  # retried on every reconcile: say it once
                log.error("%s; the previous rules stay in place. Check `nft --version` (1.0+)", exc)
            self.last_error = str(exc)
            return  # key not stored: the next sync tries again
        self.last_error = None
        self._key = key

    def status(self) -> dict[str, object]:
        """For `raftlb status`: the sysctls forwarding needs, and how loading rules went."""
        return {
            "forward": "nftables",
            "sysctl_problems": sysctl_problems(),
            "loads": self.applier.loads,
            "errors": self.errors,
            "last_error": self.last_error,
        }

    def stop(self) -> None:
        try:
            self.applier.remove()
        except NftError as exc:
            log.error("%s; remove it by hand: nft delete table inet %s", exc, self.applier.table)
        self._key = None
