"""What the console reads and changes, kept off the event loop.

Reads go through the store's reader threads, queue changes through the
writer's group commit, and account and domain administration through the
same SQLModel operations the CLI uses, run in a worker thread. Nothing here
runs SQL on the loop, so the listeners never wait for the console.
"""

from __future__ import annotations

import asyncio
import collections
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, Callable, TypeVar

from argon2 import PasswordHasher
from sqlmodel import Session

from ..events import Event
from ..server.app import Server
from ..server.dsn import return_to_sender
from ..store import accounts, inspect, mailboxes
from ..store.db import make_engine

T = TypeVar("T")

SHOWN_KINDS = {"queued", "sent", "deferred", "bounced", "held", "expired", "bounce", "trigger",
               "atrn", "etrn", "reject", "admin"}
"""Event kinds the dashboard's event log shows; warnings and errors are shown too."""
RATE_WINDOW = 60
"""Seconds of history in the message-rate sparklines."""


@dataclass
class Feed:
    """Recent events from the bus: delivery lines and per-second message rates."""

    recent: collections.deque = field(default_factory=lambda: collections.deque(maxlen=200))
    """(sequence number, event) pairs, newest last."""
    received: collections.Counter = field(default_factory=collections.Counter)
    delivered: collections.Counter = field(default_factory=collections.Counter)
    sequence: int = 0

    def __call__(self, event: Event) -> None:
        second = int(event.at)
        if event.kind == "queued":
            self.received[second] += 1
        elif event.kind == "sent":
            self.delivered[second] += 1
        if event.kind in SHOWN_KINDS or event.level >= 30:
            self.sequence += 1
            self.recent.append((self.sequence, event))

    def since(self, sequence: int) -> list[tuple[int, Event]]:
        """Return the kept events newer than ``sequence``."""
        return [item for item in self.recent if item[0] > sequence]

    def rates(self, counter: collections.Counter, now: float | None = None) -> list[float]:
        """Return messages per second for the last :data:`RATE_WINDOW` seconds, oldest first."""
        end = int(now or time.time())
        for old in [k for k in counter if k < end - RATE_WINDOW * 2]:
            del counter[old]
        return [float(counter.get(second, 0)) for second in range(end - RATE_WINDOW, end)]


class ConsoleData:
    """The console's access to a running server.

    Args:
        server: the started server whose store, sessions and bus are shown.
    """

    def __init__(self, server: Server, clock: Callable[[], float] = time.time):
        self.clock = clock
        """Source of "now" for ages and rates; fixed in snapshot tests."""
        self.server = server
        self.context = server.context
        self.settings = server.settings
        self.engine = make_engine(self.settings.database)
        self.feed = Feed()
        self._unsubscribe = self.context.bus.subscribe(self.feed)
        self.hasher = PasswordHasher()

    def close(self) -> None:
        self._unsubscribe()
        self.engine.dispose()

    async def _admin(self, func: Callable[[Session], T]) -> T:
        def run() -> T:
            with Session(self.engine) as session:
                return func(session)
        return await asyncio.to_thread(run)

    # -- live state -----------------------------------------------------------------

    def listeners(self) -> list[tuple[str, str]]:
        """Return (service, address) of every bound listener."""
        return [(listener.service, listener.address) for listener in self.server.listeners]

    def sessions(self) -> list[dict[str, Any]]:
        """Return the open sessions as plain rows."""
        now = self.clock()
        rows = []
        for number, session in sorted(self.context.sessions.items()):
            rows.append({
                "number": number,
                "protocol": getattr(session, "service", "?"),
                "client": getattr(session, "client_ip", ""),
                "account": getattr(session, "account", "") or "-",
                "state": getattr(session, "state", ""),
                "bytes": getattr(session, "bytes_in", 0),
                "duration": now - getattr(session, "opened", now),
            })
        return rows

    async def domain_summary(self) -> list[inspect.DomainQueue]:
        return await self.context.db.read(inspect.domain_summary)

    async def page(self, **filters: Any) -> tuple[list[inspect.MessageRow], int]:
        return await self.context.db.read(lambda conn: inspect.page_messages(conn, **filters))

    async def message(self, queue_id: str) -> tuple[inspect.QueuedMessage | None, list, bytes]:
        """Return a message's envelope, its failed attempts and its header section."""
        def load(conn):
            found = inspect.list_messages(conn, queue_id=queue_id)
            if not found:
                return None, [], b""
            message = found[0]
            return message, inspect.attempts(conn, message.id), inspect.headers(conn, message.id)
        return await self.context.db.read(load)

    # -- queue actions -----------------------------------------------------------------

    async def queue_action(self, action: str, queue_ids: list[str]) -> tuple[int, list[str]]:
        """Apply ``retry``, ``hold``, ``release``, ``delete`` or ``bounce``.

        Returns:
            How many messages changed, and why the others did not.
        """
        held = {name for name, route in self.context.routes.routes.items() if route.mode != "smtp"}
        hostname = self.settings.hostname

        def apply(conn) -> tuple[int, list[str]]:
            ids = list(inspect.resolve_ids(conn, queue_ids).values())
            unchanged: dict[int, str] = {}
            if action == "retry":
                unchanged = inspect.retry(conn, ids)
            elif action in ("hold", "release"):
                unchanged = inspect.set_hold(conn, ids, action == "hold")
            elif action == "delete":
                inspect.delete(conn, ids)
            elif action == "bounce":
                return_to_sender(conn, ids, hostname, "returned to the sender by the administrator", held)
            return len(ids) - len(unchanged), list(unchanged.values())
        count, reasons = await self.context.db.write(apply)
        self.context.bus.emit("admin", 0, f"console: {action} {' '.join(queue_ids)}", "admin")
        if self.context.scheduler is not None:
            self.context.scheduler.wake()
        return count, reasons

    async def flush(self, domain: str) -> int:
        """Start delivery of a domain's waiting mail, as ``mailkeep queue flush`` does.

        Raises:
            LookupError: the domain is not hosted, or is held and has no host to deliver to.
        """
        route = self.context.routes.get(domain)
        if route is None:
            raise LookupError(f"{domain} is not a hosted domain")
        if route.mode != "smtp" and not route.host:
            raise LookupError(f"{domain} (mode {route.mode}) has no host; the customer triggers it")
        count = await self.context.db.write(inspect.flush_domain, domain)
        if self.context.scheduler is not None:
            self.context.scheduler.wake()
        return count

    # -- domains and accounts -----------------------------------------------------------

    async def domains(self) -> list[tuple[Any, str]]:
        return await self._admin(accounts.list_domains)

    async def accounts(self) -> list[tuple[Any, list[str]]]:
        return await self._admin(accounts.list_accounts)

    async def account_names(self) -> list[str]:
        rows = await self.accounts()
        return [account.name for account, _domains in rows]

    async def save_domain(self, name: str, values: dict[str, Any], new: bool) -> None:
        if new:
            await self._admin(lambda s: accounts.add_domain(
                s, name, values["account"], values["mode"], values["host"], values["port"],
                values["retention"], values.get("recipients", "")))
        else:
            await self._admin(lambda s: accounts.set_domain(
                s, name, account=values["account"], mode=values["mode"], host=values["host"],
                port=values["port"], retention_days=values["retention"],
                recipients=values.get("recipients", "")))
        await self.context.routes.load()

    async def remove_domain(self, name: str) -> None:
        await self._admin(lambda s: accounts.remove_domain(s, name, force=True))
        await self.context.routes.load()

    async def add_account(self, name: str, password: str) -> None:
        digest = await asyncio.to_thread(self.hasher.hash, password)
        await self._admin(lambda s: accounts.add_account(s, name, digest))

    async def set_password(self, name: str, password: str) -> None:
        digest = await asyncio.to_thread(self.hasher.hash, password)

        def change(session: Session) -> None:
            account = accounts.get_account(session, name)
            account.password_hash = digest
            session.add(account)
            session.commit()
        await self._admin(change)

    async def set_secret(self, name: str, secret: str | None = None) -> str:
        """Set the account's CRAM-MD5 secret, generating one when none is given; return it."""
        value = secret or secrets.token_urlsafe(18)

        def change(session: Session) -> None:
            account = accounts.get_account(session, name)
            account.shared_secret = value
            session.add(account)
            session.commit()
        await self._admin(change)
        return value

    async def toggle_enabled(self, name: str) -> bool:
        def change(session: Session) -> bool:
            account = accounts.get_account(session, name)
            account.enabled = not account.enabled
            session.add(account)
            session.commit()
            return account.enabled
        return await self._admin(change)

    # -- POP3 mailboxes -----------------------------------------------------------------

    async def mailboxes(self) -> list[mailboxes.MailboxInfo]:
        return await self.context.db.read(mailboxes.list_mailboxes)

    async def add_mailbox(self, address: str, account: str, password: str) -> str:
        """Create a mailbox (``@domain`` for the catch-all); return its address."""
        digest = await asyncio.to_thread(self.hasher.hash, password)
        stored, _mode = await self.context.db.write(mailboxes.add_mailbox, address, account, digest)
        return stored

    async def set_mailbox_password(self, address: str, password: str) -> None:
        digest = await asyncio.to_thread(self.hasher.hash, password)
        await self.context.db.write(mailboxes.set_password, address, digest)

    async def set_apop_secret(self, address: str, secret: str | None = None) -> str:
        """Set a mailbox's APOP secret, generating one when none is given; return it."""
        value = secret or secrets.token_urlsafe(18)
        await self.context.db.write(mailboxes.set_apop_secret, address, value)
        return value

    async def remove_mailbox(self, address: str) -> int:
        """Remove a mailbox with the mail in it; return how many messages went with it."""
        _address, count = await self.context.db.write(mailboxes.remove_mailbox, address, True)
        return count
