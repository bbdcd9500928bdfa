"""The hosted domains, cached in memory and kept current with the database.

The CLI changes domains from another process. A background task reloads the
table when SQLite's data_version shows a commit from elsewhere, and a lookup
that misses the cache asks the database before rejecting, so a domain added
a moment ago is accepted at the next RCPT.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Callable

from ..store import accounts
from ..store.accounts import Route
from ..store.db import Database

log = logging.getLogger("mailkeep.routes")


class Routes:
    """Hosted domains keyed by name.

    Args:
        db: the store.
        interval: seconds between checks for changes made by other processes.
    """

    def __init__(self, db: Database, interval: float = 0.5):
        self.db = db
        self.interval = interval
        self.routes: dict[str, Route] = {}
        self._version: int | None = None
        self._changed = asyncio.Event()
        self.on_commit: Callable[[], None] | None = None
        """Called when another connection has committed, e.g. to wake the scheduler for a
        retry or flush that the CLI just wrote."""

    async def load(self) -> None:
        self.routes = await self.db.read(accounts.load_routes)
        self._changed.set()

    def get(self, domain: str) -> Route | None:
        """Return the cached route of a domain, or None."""
        return self.routes.get(domain)

    async def lookup(self, domain: str) -> Route | None:
        """Return a domain's route, reloading the table when the cache misses."""
        route = self.routes.get(domain)
        if route is None:
            routes = await self.db.read(accounts.load_routes)
            if routes != self.routes:
                self.routes = routes
                self._changed.set()
            route = routes.get(domain)
        return route

    async def watch(self) -> None:
        """Reload the table whenever another connection has committed."""
        while True:
            await asyncio.sleep(self.interval)
            try:
                version = await self.db.read(accounts.data_version)
                if version != self._version:
                    self._version = version
                    if self.on_commit is not None:
                        self.on_commit()
                    routes = await self.db.read(accounts.load_routes)
                    if routes != self.routes:
                        self.routes = routes
                        self._changed.set()
            except Exception:
                log.exception("reloading the domain table failed")

    async def changed(self) -> None:
        """Wait until the table has changed since the last call."""
        await self._changed.wait()
        self._changed.clear()
