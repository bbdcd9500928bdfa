"""Queue inspection and administration for ``mailkeep queue``: listing,
one message's details, retry, hold, release and delete.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass, field

from .queue import remove_finished


@dataclass
class QueuedRecipient:
    address: str
    domain: str
    state: str
    attempts: int
    next_attempt: float
    last_error: str


@dataclass
class QueuedMessage:
    """A message as the queue listing shows it."""

    id: int
    queue_id: str
    sender: str
    size: int
    arrived: float
    hold: bool
    delivering: bool
    client: str = ""
    helo: str = ""
    recipients: list[QueuedRecipient] = field(default_factory=list)

    @property
    def state(self) -> str:
        """``active``, ``hold``, ``held``, ``deferred`` or ``queued``, in that order of precedence."""
        if self.delivering:
            return "active"
        if self.hold:
            return "hold"
        states = {r.state for r in self.recipients}
        for name in ("deferred", "queued", "held"):
            if name in states:
                return name
        return "queued"


STATES = ("active", "hold", "held", "deferred", "queued")


def list_messages(conn: sqlite3.Connection, domain: str | None = None,
                  state: str | None = None, queue_id: str | None = None) -> list[QueuedMessage]:
    """Return queued messages in arrival order, filtered by recipient domain and state."""
    where, args = [], []
    if domain:
        where.append("m.id IN (SELECT message_id FROM recipient WHERE domain = ?)")
        args.append(domain)
    if queue_id:
        where.append("m.queue_id = ?")
        args.append(queue_id)
    sql = (
        "SELECT m.id, m.queue_id, m.sender, m.size, m.arrived, m.hold, m.delivering, m.client,"
        " m.helo, r.address, r.domain, r.state, r.attempts, r.next_attempt, r.last_error"
        " FROM message m JOIN recipient r ON r.message_id = m.id"
    )
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY m.id, r.id"
    messages: dict[int, QueuedMessage] = {}
    for row in conn.execute(sql, args):
        msg = messages.get(row[0])
        if msg is None:
            msg = messages[row[0]] = QueuedMessage(
                row[0], row[1], row[2], row[3], row[4], bool(row[5]), bool(row[6]), row[7], row[8]
            )
        msg.recipients.append(QueuedRecipient(*row[9:]))
    result = list(messages.values())
    if state:
        result = [m for m in result if m.state == state]
    return result


def attempts(conn: sqlite3.Connection, message_id: int) -> list[tuple[float, str, str, str, str]]:
    """Return (time, address, relay, status, reply) for each failed attempt, oldest first."""
    return conn.execute(
        "SELECT at, address, relay, status, reply FROM attempt WHERE message_id = ? ORDER BY id",
        (message_id,),
    ).fetchall()


def headers(conn: sqlite3.Connection, message_id: int, limit: int = 65536) -> bytes:
    """Return the message's header section (at most ``limit`` bytes)."""
    row = conn.execute("SELECT substr(data, 1, ?) FROM message WHERE id = ?", (limit, message_id)).fetchone()
    data = bytes(row[0]) if row else b""
    end = data.find(b"\r\n\r\n")
    return data if end < 0 else data[: end + 2]


def resolve_ids(conn: sqlite3.Connection, queue_ids: list[str]) -> dict[str, int]:
    """Map queue ids to row ids; unknown ids are left out."""
    found = {}
    for qid in queue_ids:
        row = conn.execute("SELECT id FROM message WHERE queue_id = ?", (qid,)).fetchone()
        if row:
            found[qid] = row[0]
    return found


def retry(conn: sqlite3.Connection, message_ids: list[int]) -> int:
    """Make deferred recipients of the messages due now; return how many."""
    total = 0
    for mid in message_ids:
        total += conn.execute(
            "UPDATE recipient SET state = 'queued', next_attempt = 0"
            " WHERE message_id = ? AND state IN ('queued', 'deferred')", (mid,)
        ).rowcount
    return total


def retry_domain(conn: sqlite3.Connection, domain: str) -> int:
    """Make the domain's deferred recipients due now; return how many."""
    return conn.execute(
        "UPDATE recipient SET state = 'queued', next_attempt = 0"
        " WHERE domain = ? AND state IN ('queued', 'deferred')", (domain,)
    ).rowcount


def flush_domain(conn: sqlite3.Connection, domain: str) -> int:
    """Make the domain's held and deferred recipients due now; return how many.

    The scheduler then delivers them to the domain's host; a temporary failure
    holds them again when the domain's mode holds mail.
    """
    return conn.execute(
        "UPDATE recipient SET state = 'queued', next_attempt = 0"
        " WHERE domain = ? AND state IN ('held', 'deferred')", (domain,)
    ).rowcount


def set_hold(conn: sqlite3.Connection, message_ids: list[int], hold: bool) -> int:
    total = 0
    for mid in message_ids:
        total += conn.execute("UPDATE message SET hold = ? WHERE id = ?", (hold, mid)).rowcount
        if not hold:
            # A released message is tried at once, as `postsuper -H` does.
            conn.execute(
                "UPDATE recipient SET next_attempt = 0 WHERE message_id = ? AND state = 'deferred'",
                (mid,),
            )
    return total


def delete(conn: sqlite3.Connection, message_ids: list[int]) -> int:
    for mid in message_ids:
        conn.execute("DELETE FROM recipient WHERE message_id = ?", (mid,))
    return len(remove_finished(conn, message_ids))


def summary(conn: sqlite3.Connection) -> dict[str, int]:
    """Return recipient counts per state and the number of messages."""
    counts = dict(conn.execute("SELECT state, COUNT(*) FROM recipient GROUP BY state").fetchall())
    counts["messages"] = conn.execute("SELECT COUNT(*) FROM message").fetchone()[0]
    counts["now"] = int(time.time())
    return counts
