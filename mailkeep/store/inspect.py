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


def retry(conn: sqlite3.Connection, message_ids: list[int]) -> dict[int, str]:
    """Make deferred recipients of the messages due now.

    Returns:
        For each message left unchanged, the reason (on hold, held by its
        domain's mode); messages not in the result were made due.
    """
    unchanged = {}
    for mid in message_ids:
        changed = conn.execute(
            "UPDATE recipient SET state = 'queued', next_attempt = 0"
            " WHERE message_id = ? AND state IN ('queued', 'deferred')", (mid,)
        ).rowcount
        hold = conn.execute("SELECT hold FROM message WHERE id = ?", (mid,)).fetchone()
        if hold and hold[0]:
            unchanged[mid] = "on hold; run `mailkeep queue release` first"
        elif not changed:
            unchanged[mid] = "held by its domain's mode; use `mailkeep queue flush DOMAIN`"
    return unchanged


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


def set_hold(conn: sqlite3.Connection, message_ids: list[int], hold: bool) -> dict[int, str]:
    """Put messages on hold or release them.

    Returns:
        For each message that already was in the requested state, the reason
        it was left unchanged.
    """
    unchanged = {}
    for mid in message_ids:
        changed = conn.execute("UPDATE message SET hold = ? WHERE id = ? AND hold != ?",
                               (hold, mid, hold)).rowcount
        if not changed:
            unchanged[mid] = "already on hold" if hold else "not on hold"
            continue
        if not hold:
            # A released message is tried at once, as `postsuper -H` does.
            conn.execute(
                "UPDATE recipient SET next_attempt = 0 WHERE message_id = ? AND state = 'deferred'",
                (mid,),
            )
    return unchanged


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


@dataclass
class DomainQueue:
    """One line of the console's queue summary."""

    domain: str
    held: int = 0
    deferred: int = 0
    queued: int = 0
    active: int = 0
    bytes: int = 0
    oldest: float = 0.0


def domain_summary(conn: sqlite3.Connection) -> list[DomainQueue]:
    """Return message counts per recipient domain and state, with bytes and the oldest arrival."""
    rows = conn.execute(
        "SELECT r.domain, CASE WHEN m.delivering THEN 'active' ELSE r.state END AS state,"
        " COUNT(DISTINCT m.id), SUM(m.size), MIN(m.arrived)"
        " FROM recipient r JOIN message m ON m.id = r.message_id GROUP BY r.domain, 2"
    ).fetchall()
    result: dict[str, DomainQueue] = {}
    for domain, state, count, size, oldest in rows:
        entry = result.setdefault(domain, DomainQueue(domain, oldest=oldest or 0.0))
        if state in ("held", "deferred", "queued", "active"):
            setattr(entry, state, getattr(entry, state) + count)
        entry.bytes += size or 0
        entry.oldest = min(entry.oldest, oldest) if entry.oldest else oldest
    return sorted(result.values(), key=lambda e: e.domain)


@dataclass
class MessageRow:
    """A message as one row of the console's queue table."""

    id: int
    queue_id: str
    state: str
    size: int
    arrived: float
    sender: str
    first_recipient: str
    recipients: int


_STATE_FILTERS = {
    "active": "m.delivering = 1",
    "hold": "m.hold = 1",
    "held": "EXISTS (SELECT 1 FROM recipient x WHERE x.message_id = m.id AND x.state = 'held')",
    "deferred": "EXISTS (SELECT 1 FROM recipient x WHERE x.message_id = m.id AND x.state = 'deferred')",
    "queued": "EXISTS (SELECT 1 FROM recipient x WHERE x.message_id = m.id AND x.state = 'queued')",
}


def page_messages(conn: sqlite3.Connection, *, domain: str = "", state: str = "", sender: str = "",
                  recipient: str = "", offset: int = 0, limit: int = 200) -> tuple[list[MessageRow], int]:
    """Return one page of queued messages, newest first, and the number that match.

    Filters: ``domain`` exact; ``state`` one of :data:`STATES`; ``sender`` and
    ``recipient`` match a substring, case-insensitively.
    """
    where = ["EXISTS (SELECT 1 FROM recipient x WHERE x.message_id = m.id)"]
    args: list = []
    if domain:
        where.append("m.id IN (SELECT message_id FROM recipient WHERE domain = ?)")
        args.append(domain.lower())
    if state in _STATE_FILTERS:
        where.append(_STATE_FILTERS[state])
    if sender:
        where.append("m.sender LIKE ?")
        args.append(f"%{sender}%")
    if recipient:
        where.append("EXISTS (SELECT 1 FROM recipient x WHERE x.message_id = m.id AND x.address LIKE ?)")
        args.append(f"%{recipient}%")
    clause = " AND ".join(where)
    total = conn.execute(f"SELECT COUNT(*) FROM message m WHERE {clause}", args).fetchone()[0]
    rows = conn.execute(
        "SELECT m.id, m.queue_id, m.hold, m.delivering, m.size, m.arrived, m.sender,"
        " (SELECT group_concat(DISTINCT r.state) FROM recipient r WHERE r.message_id = m.id),"
        " (SELECT r.address FROM recipient r WHERE r.message_id = m.id ORDER BY r.id LIMIT 1),"
        " (SELECT COUNT(*) FROM recipient r WHERE r.message_id = m.id)"
        f" FROM message m WHERE {clause} ORDER BY m.id DESC LIMIT ? OFFSET ?",
        (*args, limit, offset),
    ).fetchall()
    page = []
    for mid, qid, hold, delivering, size, arrived, sender_, states, first, count in rows:
        found = set((states or "").split(","))
        if delivering:
            shown = "active"
        elif hold:
            shown = "hold"
        else:
            shown = next((s for s in ("deferred", "queued", "held") if s in found), "queued")
        page.append(MessageRow(mid, qid, shown, size, arrived, sender_, first or "", count))
    return page, total
