"""Limits on connections per service and per client address, and on failed logins."""

from __future__ import annotations

import time
from collections import Counter


class ConnectionLimiter:
    """Counts open sessions, in total and per client IP address.

    Args:
        max_total: sessions open at once across every listener.
        max_per_client: sessions open at once from one IP address.
    """

    def __init__(self, max_total: int, max_per_client: int):
        self.max_total = max_total
        self.max_per_client = max_per_client
        self.total = 0
        self.per_client: Counter[str] = Counter()

    def acquire(self, address: str) -> str | None:
        """Count a new session; return ``"total"`` or ``"client"`` when a limit
        is reached (nothing is counted then), else None."""
        if self.max_total and self.total >= self.max_total:
            return "total"
        if self.max_per_client and self.per_client[address] >= self.max_per_client:
            return "client"
        self.total += 1
        self.per_client[address] += 1
        return None

    def release(self, address: str) -> None:
        self.total -= 1
        self.per_client[address] -= 1
        if self.per_client[address] <= 0:
            del self.per_client[address]


class LoginThrottle:
    """Slows down and then refuses clients whose logins keep failing.

    Each failure adds ``delay`` seconds to the reply of the next failure from
    the same address, up to ten times that. After ``max_failures`` failures
    within ``window`` seconds the address is refused for ``lockout`` seconds.
    A success clears the address's record.
    """

    def __init__(self, delay: float, max_failures: int, lockout: float, window: float = 3600.0):
        self.delay = delay
        self.max_failures = max_failures
        self.lockout = lockout
        self.window = window
        self._failures: dict[str, list[float]] = {}
        self._locked_until: dict[str, float] = {}

    def locked(self, address: str, now: float | None = None) -> float:
        """Return the seconds the address stays refused, 0 when it may try."""
        now = time.monotonic() if now is None else now
        until = self._locked_until.get(address, 0.0)
        if until <= now:
            self._locked_until.pop(address, None)
            return 0.0
        return until - now

    def failed(self, address: str, now: float | None = None) -> float:
        """Record a failure; return the delay to apply before replying."""
        now = time.monotonic() if now is None else now
        recent = [t for t in self._failures.get(address, []) if now - t < self.window]
        recent.append(now)
        self._failures[address] = recent
        if self.max_failures and len(recent) >= self.max_failures:
            self._locked_until[address] = now + self.lockout
            self._failures.pop(address, None)
        if len(self._failures) > 10000:
            self._prune(now)
        return min(self.delay * len(recent), self.delay * 10)

    def succeeded(self, address: str) -> None:
        self._failures.pop(address, None)

    def _prune(self, now: float) -> None:
        for key in [k for k, times in self._failures.items() if now - times[-1] >= self.window]:
            del self._failures[key]
