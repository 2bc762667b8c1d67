"""Runs `nft -f` and keeps the node's nftables table equal to what it forwards, by delta.

`NftApplier` runs nft (libnftables in process, in the calling thread's network namespace): a
file is applied whole or not at all (a broken one changes nothing and raises `NftError` with
nft's message).
`DataPlane` holds what the kernel has, per VIP, and turns each change into one transaction that
names only the VIPs that changed (`render_delta`); it loads the whole table (`render`) only the
first time, and again after a transaction failed (the kernel's copy is then not trusted: someone
changed the table by hand, or nft misbehaved), retrying with backoff while that fails.
"""

from __future__ import annotations

import logging
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path

from appliance.backoff import Backoff
from appliance.dataplane.firewall import Firewall
from appliance.dataplane.forwards import Forward, ForwardMap
from appliance.dataplane.hashing import uses_of
from appliance.dataplane.libnft import LibNft, LibNftError
from appliance.dataplane.render import TABLE, removal, render, render_delta
from appliance.model import IPAddress

log = logging.getLogger("raftlb.dataplane")
# After a refused change, the whole table is loaded again after this wait (per refusal in a row).
RELOAD = Backoff(first=0.5, cap=30.0)

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


def _chains(forwards: Iterable[Forward]) -> Counter[str]:
    return uses_of(c for c in (f.chain() for f in forwards) if c is not None)


class NftError(Exception):
    """nft refused a ruleset or could not run; nothing was changed."""


class NftApplier:
    """Applies `nft -f` files: through libnftables in process when it loads, else by running
    the `nft` command (`nft=` given, or no library)."""

    def __init__(self, table: str = TABLE, nft: str | None = None, timeout: float = 30.0) -> None:
        self.table = table
        self.nft = nft or "nft"
        self.timeout = timeout
        self._lib: LibNft | None = None
        if nft is None:
            try:
                self._lib = LibNft()
            except LibNftError as exc:
                log.warning("%s; running the nft command instead (slower)", exc)

    @property
    def how(self) -> str:
        return "libnftables" if self._lib is not None else self.nft

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

    def _apply(self, text: str) -> tuple[bool, str]:
        if self._lib is not None:
            return self._lib.run(text)
        result = self._run(["-f", "-"], text)
        return result.returncode == 0, result.stderr

    def apply(self, text: str) -> None:
        """Apply an `nft -f` file as one transaction."""
        ok, error = self._apply(text)
        if not ok:
            raise NftError(f"nft refused the ruleset (nothing changed): {error.strip()[:2000]}")

    def remove(self) -> None:
        ok, error = self._apply(removal(self.table))
        if not ok:
            raise NftError(f"cannot remove the raftlb tables: {error.strip()}")

    def close(self) -> None:
        if self._lib is not None:
            self._lib.close()


class DataPlane:
    """Keeps the forwarding rules equal to what the reconciler says each VIP forwards.

    Not thread-safe: one caller at a time (the reconciler runs it in a worker thread so that
    nft never blocks the agent's event loop, which sends the lease renewals)."""

    def __init__(
        self,
        applier: NftApplier,
        firewall: Firewall | None = None,
        observe: Callable[[str, float], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.applier = applier
        self.firewall = firewall
        self.observe = observe
        self.clock = clock
        self.current: dict[IPAddress, tuple[Forward, ...]] = {}  # what the kernel has
        # How many VIP ports use each hash chain and lookup table, in `current`: a delta
        # creates and deletes them by these counts, without looking at every VIP.
        self.uses: Counter[str] = Counter()
        self.loaded = False  # False: the kernel's table is unknown, the next change loads all
        self.loads = 0
        self.deltas = 0
        self.errors = 0
        self.last_error: str | None = None
        self.last_seconds: dict[str, float] = {}
        self._retry_at = 0.0
        self._failures = 0  # loads refused in a row

    def update(self, changes: ForwardMap) -> bool:
        """Make each VIP of `changes` forward exactly its forwards (none: drop it). True when
        the kernel now has everything asked for so far; False after a refusal (retried by
        `update` or `repair` later, with backoff)."""
        desired = dict(self.current)
        for vip, wanted in changes.items():
            if wanted:
                desired[vip] = tuple(wanted)
            else:
                desired.pop(vip, None)
        if self.loaded:
            text = render_delta(self.current, changes, self.applier.table, self.uses)
            if not text:
                return True
            uses = self.uses.copy()
            uses.subtract(_chains(f for vip in changes for f in self.current.get(vip, ())))
            uses.update(_chains(f for vip in changes for f in desired.get(vip, ())))
            return self._apply("delta", text, desired, +uses)
        if self.clock() < self._retry_at:
            self.current = desired  # loaded whole once the backoff is over
            return False
        return self._load(desired)

    def repair(self) -> bool:
        """Load the whole table again if the last change failed and its backoff is over."""
        if self.loaded or self.clock() < self._retry_at:
            return self.loaded
        return self._load(self.current)

    def _load(self, desired: dict[IPAddress, tuple[Forward, ...]]) -> bool:
        items = [f for forwards in desired.values() for f in forwards]
        text = render(items, self.applier.table, self.firewall)
        return self._apply("full", text, desired, _chains(items))

    def _apply(
        self,
        kind: str,
        text: str,
        desired: dict[IPAddress, tuple[Forward, ...]],
        uses: Counter[str],
    ) -> bool:
        started = self.clock()
        try:
            self.applier.apply(text)
        except NftError as exc:
            self.errors += 1
            self.loaded = False  # whatever the kernel has now, the next attempt loads it all
            self.current = desired
            self._failures += 1
            self._retry_at = self.clock() + RELOAD.delay(self._failures)
            if str(exc) != self.last_error:  # retried with backoff: say it once
                log.error(
                    "%s; the previous rules stay in place and the whole table is loaded again "
                    "in %.1fs. Check `nft --version` (1.0+) and that nothing else edits table "
                    "inet %s",
                    exc,
                    self._retry_at - self.clock(),
                    self.applier.table,
                )
            self.last_error = str(exc)
            return False
        seconds = self.clock() - started
        self.last_seconds[kind] = seconds
        if self.observe is not None:
            self.observe(kind, seconds)
        if kind == "full":
            self.loads += 1
            log.info(
                "data plane: whole table loaded, %d VIP(s) in %.1f ms", len(desired), 1000 * seconds
            )
        else:
            self.deltas += 1
        if self.last_error is not None:
            log.info("data plane: rules loaded again after %d error(s)", self.errors)
        self.current, self.loaded, self.last_error, self._failures = desired, True, None, 0
        self.uses = uses
        return True

    def status(self) -> dict[str, object]:
        """For `raftlb status`: the sysctls forwarding needs, and how loading rules went."""
        return {
            "forward": "nftables",
            "sysctl_problems": sysctl_problems(),
            "vips": len(self.current),
            "loaded": self.loaded,
            "loads": self.loads,
            "deltas": self.deltas,
            "errors": self.errors,
            "last_error": self.last_error,
            "last_update_ms": {k: round(1000 * v, 2) for k, v in sorted(self.last_seconds.items())},
        }

    def stop(self) -> None:
        try:
            self.applier.remove()
        except NftError as exc:
            log.error("%s; remove them by hand: nft list tables | grep raftlb", exc)
        self.current, self.loaded = {}, False
        self.applier.close()
