"""A seeded demo store for screenshots and console tests: a few customers,
one domain per delivery mode, and mail in every queue state."""

from __future__ import annotations

import sqlite3
import time

from argon2 import PasswordHasher
from sqlmodel import Session

from ..config import Settings
from ..store import accounts, mailboxes
from ..store.db import connect, create_schema, make_engine
from ..store.queue import NewMessage, enqueue

DEMO_PASSWORD = "demo-password"
SECRET = "demo-cram-secret"


def _message(index: int, sender: str, to: str, subject: str) -> bytes:
    return (f"Received: from mail.example.net (unknown [192.0.2.{index}])\r\n"
            f"\tby mx.mailkeep.test (Mailkeep) with ESMTP id DEMO{index:09d}\r\n"
            f"From: <{sender}>\r\nTo: <{to}>\r\nSubject: {subject}\r\n"
            f"Message-ID: <demo{index}@example.net>\r\n\r\n"
            + "Hello from the demo store.\r\n" * (3 + index % 40)).encode()


def seed(settings: Settings, now: float | None = None, sink_port: int = 2526) -> None:
    """Fill ``settings.data_dir`` with demo accounts, domains and queued mail.

    Args:
        settings: where the store lives.
        now: the arrival clock; fixed in snapshot tests so ages are stable.
        sink_port: the port the ``smtp`` demo domain pushes to (nothing listens there, so
            its mail is deferred with a real connection error).
    """
    now = time.time() if now is None else now
    create_schema(settings.database)
    engine = make_engine(settings.database)
    digest = PasswordHasher().hash(DEMO_PASSWORD)
    with Session(engine) as session:
        for name in ("acme", "bakery", "clinic"):
            account = accounts.add_account(session, name, digest)
            account.shared_secret = SECRET if name != "clinic" else ""
            session.add(account)
        session.commit()
        accounts.add_domain(session, "acme.example", "acme", "smtp", "127.0.0.1", sink_port, 30)
        accounts.add_domain(session, "bakery.example", "bakery", "etrn", "", 2525, 30)
        accounts.add_domain(session, "branch.bakery.example", "bakery", "etrn", "10.0.0.5", 25, 14)
        accounts.add_domain(session, "clinic.example", "clinic", "odmr", "", 25, 30)
        accounts.add_domain(session, "shop.example", "acme", "pop3", "", 25, 60)
    engine.dispose()
    conn = connect(settings.database)
    try:
        conn.execute("BEGIN")
        mailboxes.add_mailbox(conn, "alice@shop.example", "acme", digest, 5000, 100 * 1024 * 1024)
        mailboxes.add_mailbox(conn, "@shop.example", "acme", digest)
        mailboxes.set_apop_secret(conn, "alice@shop.example", "demo-apop-secret")
        _seed_messages(conn, now)
        conn.execute("COMMIT")
    finally:
        conn.close()


def _seed_messages(conn: sqlite3.Connection, now: float) -> None:
    plans = [
        ("bakery.example", "held", "orders@flour.example", "Invoice"),
        ("branch.bakery.example", "held", "news@town.example", "Market day"),
        ("clinic.example", "held", "lab@results.example", "Results"),
        ("acme.example", "deferred", "sales@partner.example", "Quote"),
    ]
    index = 0
    for round_ in range(6):
        for domain, state, sender, subject in plans:
            index += 1
            to = f"user{round_}@{domain}"
            data = _message(index, sender, to, f"{subject} {round_ + 1}")
            message = NewMessage(queue_id=f"DEMO{index:09d}", sender=sender, data=data,
                                 recipients=[(to, domain, state)], client=f"unknown[192.0.2.{index}]",
                                 helo="mail.example.net", arrived=now - 3600 * (index % 30) - 60 * index)
            mid = enqueue(conn, message)
            if state == "deferred":
                error = "connect to 127.0.0.1[127.0.0.1]:2526: Connection refused"
                conn.execute("UPDATE recipient SET attempts = 2, next_attempt = ?, last_error = ?"
                             " WHERE message_id = ?", (now + 3600, error, mid))
                conn.execute("INSERT INTO attempt (message_id, address, at, relay, status, reply)"
                             " VALUES (?, ?, ?, ?, 'deferred', ?)",
                             (mid, to, now - 120, "127.0.0.1:2526", error))
    conn.execute("UPDATE message SET hold = 1 WHERE queue_id = 'DEMO000000004'")
