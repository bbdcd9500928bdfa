"""Queue operations: each takes an open sqlite3 connection and runs inside
the caller's transaction (the writer's group commit, or one CLI command).
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from dataclasses import dataclass, field

from .mailboxes import add_entries

_ALPHABET = "0123456789BCDFGHJKLMNPQRSTVWXYZ"
_EPOCH_US = 1_704_067_200_000_000  # 2024-01-01T00:00:00Z in microseconds
_last_stamp = 0
_stamp_lock = threading.Lock()


def new_queue_id() -> str:
    """Make a queue id: 13 letters and digits that sort by arrival time.

    Ten characters encode the arrival time in microseconds and three come
    from the random source, so ids made in two processes do not collide in
    practice, and ids made in one process never do.
    """
    global _last_stamp
    with _stamp_lock:
        stamp = max(time.time_ns() // 1000 - _EPOCH_US, _last_stamp + 1)
        _last_stamp = stamp
    base = len(_ALPHABET)
    chars = []
    for _ in range(10):
        stamp, digit = divmod(stamp, base)
        chars.append(_ALPHABET[digit])
    noise = int.from_bytes(os.urandom(2), "big")
    for _ in range(3):
        noise, digit = divmod(noise, base)
        chars.append(_ALPHABET[digit])
    return "".join(reversed(chars[:10])) + "".join(chars[10:])


@dataclass
class NewMessage:
    """A message as the SMTP server accepted it, before it is stored."""

    queue_id: str
    sender: str
    data: bytes
    recipients: list[tuple[str, str, str]]
    """(address, domain, state) for each recipient."""
    client: str = ""
    helo: str = ""
    arrived: float = field(default_factory=time.time)
    is_bounce: bool = False
    body_8bit: bool = False
    mailboxes: list[tuple[int, str]] = field(default_factory=list)
    """(mailbox id, recipient address) for each POP3 mailbox that gets a copy."""


def enqueue(conn: sqlite3.Connection, msg: NewMessage) -> int:
    """Store a message with its recipients and mailbox entries; return its row id."""
    cur = conn.execute(
        "INSERT INTO message (queue_id, sender, size, arrived, client, helo, hold, delivering,"
        " is_bounce, body_8bit, data) VALUES (?, ?, ?, ?, ?, ?, 0, 0, ?, ?, ?)",
        (msg.queue_id, msg.sender, len(msg.data), msg.arrived, msg.client, msg.helo,
         msg.is_bounce, msg.body_8bit, msg.data),
    )
    message_id = cur.lastrowid
    conn.executemany(
        "INSERT INTO recipient (message_id, address, domain, state, next_attempt, attempts,"
        " last_error) VALUES (?, ?, ?, ?, 0, 0, '')",
        [(message_id, address, domain, state) for address, domain, state in msg.recipients],
    )
    if msg.mailboxes:
        add_entries(conn, message_id, msg.sender, msg.data, msg.arrived, msg.mailboxes)
    return message_id


@dataclass
class Job:
    """Recipients of one message that one delivery run carries."""

    message_id: int
    queue_id: str
    sender: str
    size: int
    arrived: float
    is_bounce: bool
    body_8bit: bool
    recipients: list[tuple[int, str, str, int]] = field(default_factory=list)
    """(recipient id, address, domain, attempts so far)."""
    parts: list[int] = field(default_factory=lambda: [1])
    """Parts of the claimed message still in flight, shared by the jobs it was split
    into; the message's in-delivery mark is cleared when the last one is recorded."""


_JOB_COLUMNS = (
    "m.id, m.queue_id, m.sender, m.size, m.arrived, m.is_bounce, m.body_8bit,"
    " r.id, r.address, r.domain, r.attempts"
)


def _jobs_from_rows(rows: list[tuple]) -> list[Job]:
    jobs: dict[int, Job] = {}
    for mid, qid, sender, size, arrived, bounce, eight, rid, address, domain, attempts in rows:
        job = jobs.get(mid)
        if job is None:
            job = jobs[mid] = Job(mid, qid, sender, size, arrived, bool(bounce), bool(eight))
        job.recipients.append((rid, address, domain, attempts))
    return list(jobs.values())


def _mark_delivering(conn: sqlite3.Connection, jobs: list[Job]) -> None:
    conn.executemany(
        "UPDATE message SET delivering = 1 WHERE id = ?", [(job.message_id,) for job in jobs]
    )


def claim_due(conn: sqlite3.Connection, now: float, limit: int) -> list[Job]:
    """Claim recipients whose delivery is due and mark their messages as in delivery."""
    rows = conn.execute(
        f"SELECT {_JOB_COLUMNS} FROM recipient r JOIN message m ON m.id = r.message_id"
        " WHERE r.state IN ('queued', 'deferred') AND r.next_attempt <= ?"
        " AND m.hold = 0 AND m.delivering = 0 ORDER BY r.next_attempt, r.id LIMIT ?",
        (now, limit),
    ).fetchall()
    jobs = _jobs_from_rows(rows)
    _mark_delivering(conn, jobs)
    return jobs


def claim_domains(conn: sqlite3.Connection, domains: list[str], states: tuple[str, ...]) -> list[Job]:
    """Claim every recipient in ``states`` for the given domains, for a triggered delivery."""
    if not domains:
        return []
    marks = ",".join("?" * len(domains))
    state_marks = ",".join("?" * len(states))
    rows = conn.execute(
        f"SELECT {_JOB_COLUMNS} FROM recipient r JOIN message m ON m.id = r.message_id"
        f" WHERE r.domain IN ({marks}) AND r.state IN ({state_marks})"
        " AND m.hold = 0 AND m.delivering = 0 ORDER BY m.id, r.id",
        (*domains, *states),
    ).fetchall()
    jobs = _jobs_from_rows(rows)
    _mark_delivering(conn, jobs)
    return jobs


def release_delivering(conn: sqlite3.Connection, message_ids: list[int] | None = None) -> None:
    """Clear the in-delivery mark: at start for every message, else for the given ones."""
    if message_ids is None:
        conn.execute("UPDATE message SET delivering = 0 WHERE delivering = 1")
    else:
        conn.executemany("UPDATE message SET delivering = 0 WHERE id = ?",
                         [(mid,) for mid in message_ids])


def load_data(conn: sqlite3.Connection, message_ids: list[int]) -> dict[int, bytes]:
    """Return the stored content of each message id that still exists."""
    result: dict[int, bytes] = {}
    for start in range(0, len(message_ids), 500):
        chunk = message_ids[start:start + 500]
        marks = ",".join("?" * len(chunk))
        for mid, data in conn.execute(f"SELECT id, data FROM message WHERE id IN ({marks})", chunk):
            result[mid] = data
    return result


@dataclass
class Outcome:
    """What happened to one recipient in one delivery attempt."""

    recipient_id: int
    message_id: int
    address: str
    status: str
    """``sent``, ``bounced``, ``deferred`` or ``held``."""
    reply: str = ""
    relay: str = ""
    next_attempt: float = 0.0


def record_outcomes(conn: sqlite3.Connection, outcomes: list[Outcome], message_ids: list[int],
                    release_ids: list[int] | None = None) -> None:
    """Apply delivery results, clear the in-delivery mark of ``release_ids`` (all of
    ``message_ids`` when None), and remove the messages that have no recipient left.

    A message whose recipients went to several servers is released only with
    its last part, so the scheduler cannot claim the parts still in flight again.
    """
    now = time.time()
    done = [(o.recipient_id,) for o in outcomes if o.status in ("sent", "bounced")]
    if done:
        conn.executemany("DELETE FROM recipient WHERE id = ?", done)
    waiting = [o for o in outcomes if o.status in ("deferred", "held")]
    if waiting:
        # A domain switched to mode smtp while its held mail was being delivered: a temporary
        # failure must then wait for a retry, not for a trigger that no longer comes.
        for outcome in waiting:
            if outcome.status != "held":
                continue
            row = conn.execute("SELECT d.mode FROM recipient r JOIN domain d ON d.name = r.domain"
                               " WHERE r.id = ?", (outcome.recipient_id,)).fetchone()
            if row and row[0] == "smtp":
                outcome.status = "deferred"
                outcome.next_attempt = now + 60
        conn.executemany(
            "UPDATE recipient SET state = ?, next_attempt = ?, attempts = attempts + 1,"
            " last_error = ? WHERE id = ?",
            [(o.status, o.next_attempt, o.reply, o.recipient_id) for o in waiting],
        )
        conn.executemany(
            "INSERT INTO attempt (message_id, address, at, relay, status, reply)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            [(o.message_id, o.address, now, o.relay, o.status, o.reply) for o in waiting],
        )
    release_delivering(conn, message_ids if release_ids is None else release_ids)
    remove_finished(conn, message_ids)


def remove_finished(conn: sqlite3.Connection, message_ids: list[int]) -> list[int]:
    """Delete the given messages that have no recipient left; return their ids."""
    gone = []
    for mid in message_ids:
        if conn.execute("SELECT 1 FROM recipient WHERE message_id = ? LIMIT 1", (mid,)).fetchone():
            continue
        if conn.execute("SELECT 1 FROM mailbox_entry WHERE message_id = ? LIMIT 1", (mid,)).fetchone():
            continue  # still in a POP3 mailbox
        conn.execute("DELETE FROM attempt WHERE message_id = ?", (mid,))
        conn.execute("DELETE FROM message WHERE id = ?", (mid,))
        gone.append(mid)
    return gone


def next_due(conn: sqlite3.Connection) -> float | None:
    """Return the earliest time a queued or deferred recipient is due, or None."""
    row = conn.execute(
        "SELECT MIN(r.next_attempt) FROM recipient r JOIN message m ON m.id = r.message_id"
        " WHERE r.state IN ('queued', 'deferred') AND m.hold = 0 AND m.delivering = 0"
    ).fetchone()
    return row[0] if row else None


def retry_domain(conn: sqlite3.Connection, domain: str) -> int:
    """Make the domain's queued and deferred recipients due now; return how many messages."""
    count = conn.execute(
        "SELECT COUNT(DISTINCT message_id) FROM recipient WHERE domain = ?"
        " AND state IN ('queued', 'deferred')", (domain,)
    ).fetchone()[0]
    conn.execute(
        "UPDATE recipient SET state = 'queued', next_attempt = 0"
        " WHERE domain = ? AND state IN ('queued', 'deferred')", (domain,)
    )
    return count


def held_domains(conn: sqlite3.Connection) -> list[str]:
    """Return every recipient domain that has held mail, hosted or not."""
    return [row[0] for row in conn.execute("SELECT DISTINCT domain FROM recipient WHERE state = 'held'")]


def claim_expired_held(conn: sqlite3.Connection, domain: str, cutoff: float) -> list[Job]:
    """Claim held recipients of ``domain`` in messages that arrived before ``cutoff``."""
    rows = conn.execute(
        f"SELECT {_JOB_COLUMNS} FROM recipient r JOIN message m ON m.id = r.message_id"
        " WHERE r.domain = ? AND r.state = 'held' AND m.arrived < ? AND m.hold = 0"
        " AND m.delivering = 0 ORDER BY m.id, r.id LIMIT 1000",
        (domain, cutoff),
    ).fetchall()
    jobs = _jobs_from_rows(rows)
    _mark_delivering(conn, jobs)
    return jobs
