"""POP3 mailboxes and their entries: administration, delivery into them, and
the reads and writes a POP3 session makes.

A message is stored once in ``message``. Each mailbox that contains it has a
``mailbox_entry`` row with its own UID, the recipient it was stored for and
its size as retrieved. The mailbox row keeps a message and byte count, so a
quota check at RCPT reads one row, and ``next_uid``, which only grows, so a
UID is never handed out twice even after SQLite reuses a deleted row's id.

Every function takes an open sqlite3 connection and runs in the caller's
transaction: the writer's group commit, a reader thread, or one CLI command.
"""

from __future__ import annotations

import secrets
import sqlite3
import time
from array import array
from dataclasses import dataclass

from .accounts import Conflict, NotFound, normalize_domain

CATCH_ALL_PREFIX = "@"


# -- addresses ----------------------------------------------------------------------


def parse_mailbox_address(text: str) -> tuple[str, str]:
    """Split a mailbox address into the stored form and its domain.

    ``Bob@Example.ORG`` becomes ``bob@example.org``; ``@example.org`` names the
    domain's catch-all mailbox.

    Raises:
        Conflict: the text is not ``local@domain`` or ``@domain``.
    """
    local, at, domain = text.strip().rpartition("@")
    domain = normalize_domain(domain)
    bad = not at or not domain or "." not in domain or any(
        c.isspace() or c in '@<>()[],;:"\\' for c in local + domain)
    if bad or len(local) > 64:
        raise Conflict(f"invalid mailbox address {text!r}: give local@domain, or @domain for "
                       "the domain's catch-all mailbox")
    return f"{local.lower()}@{domain}", domain


# -- the message as POP3 hands it out --------------------------------------------------


def retrieved_form(sender: str, recipient: str, data: bytes) -> bytes:
    """Return a stored message as RETR sends it, before byte-stuffing.

    POP3 has no envelope, so the envelope goes into header lines on top:
    Return-Path for the sender, Delivered-To and X-Original-To for the
    recipient the copy was stored for (what multidrop clients sort by). Line
    ends are CRLF and the last line ends with CRLF, so the size counted here
    is the exact octet count that LIST and RETR report.
    """
    head = (f"Return-Path: <{sender}>\r\nDelivered-To: {recipient}\r\n"
            f"X-Original-To: {recipient}\r\n").encode("utf-8", "surrogateescape")
    crlf = data.count(b"\r\n")
    if data.count(b"\n") != crlf or data.count(b"\r") != crlf:
        # The SMTP server stores CRLF only, but mail written by other paths may not.
        data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")
    if data and not data.endswith(b"\r\n"):
        data += b"\r\n"
    return head + data


# -- delivery -----------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """The mailbox that takes mail for one recipient address."""

    mailbox_id: int
    address: str
    """The mailbox's address: the recipient's own, or ``@domain`` for the catch-all."""
    full: bool
    """The mailbox or its account has reached a quota."""


def find_target(conn: sqlite3.Connection, local: str, domain: str) -> Target | None:
    """Return the mailbox for ``local@domain``: its own, else the domain's catch-all, else None."""
    own = f"{local.lower()}@{domain}"
    rows = conn.execute(
        "SELECT id, address, account_id, messages, bytes, max_messages, max_bytes FROM mailbox"
        " WHERE address IN (?, ?)", (own, CATCH_ALL_PREFIX + domain),
    ).fetchall()
    if not rows:
        return None
    row = min(rows, key=lambda r: r[1] != own)
    mailbox_id, address, account_id, count, size, max_count, max_size = row
    full = bool(max_count and count >= max_count) or bool(max_size and size >= max_size)
    return Target(mailbox_id, address, full or _account_full(conn, account_id))


def _account_full(conn: sqlite3.Connection, account_id: int) -> bool:
    limits = conn.execute("SELECT max_messages, max_bytes FROM account_quota WHERE account_id = ?",
                          (account_id,)).fetchone()
    if not limits or not (limits[0] or limits[1]):
        return False
    count, size = conn.execute(
        "SELECT COALESCE(SUM(messages), 0), COALESCE(SUM(bytes), 0) FROM mailbox"
        " WHERE account_id = ?", (account_id,)).fetchone()
    return bool(limits[0] and count >= limits[0]) or bool(limits[1] and size >= limits[1])


def add_entries(conn: sqlite3.Connection, message_id: int, sender: str, data: bytes,
                arrived: float, targets: list[tuple[int, str]]) -> list[int]:
    """Put a stored message into mailboxes, one entry per (mailbox id, recipient).

    Returns:
        The UID each entry got, in the order of ``targets``.
    """
    uids = []
    for mailbox_id, recipient in dict.fromkeys(targets):
        size = len(retrieved_form(sender, recipient, data))
        row = conn.execute(
            "UPDATE mailbox SET next_uid = next_uid + 1, messages = messages + 1,"
            " bytes = bytes + ? WHERE id = ? RETURNING next_uid - 1", (size, mailbox_id),
        ).fetchone()
        if row is None:
            raise LookupError(f"mailbox {mailbox_id} no longer exists")
        conn.execute(
            "INSERT INTO mailbox_entry (mailbox_id, uid, message_id, recipient, size, arrived)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (mailbox_id, row[0], message_id, recipient, size, arrived),
        )
        uids.append(row[0])
    return uids


def file_held(conn: sqlite3.Connection, limit: int = 1000) -> list[tuple[str, str, str]]:
    """Move held recipients of ``pop3`` domains into the mailbox that now takes them.

    Mail waits in the queue for such a domain when it arrived before its
    mailbox existed or before the domain changed to mode ``pop3``, and for
    delivery status notifications to senders in the domain.

    Returns:
        (queue id, recipient, mailbox address) for each recipient filed.
    """
    rows = conn.execute(
        "SELECT r.id, r.address, r.domain, m.id, m.queue_id, m.sender, m.arrived FROM recipient r"
        " JOIN domain d ON d.name = r.domain JOIN message m ON m.id = r.message_id"
        " WHERE d.mode = 'pop3' AND r.state = 'held' AND m.hold = 0 AND m.delivering = 0"
        " LIMIT ?", (limit,),
    ).fetchall()
    filed = []
    for rid, address, domain, mid, qid, sender, arrived in rows:
        target = find_target(conn, address.rpartition("@")[0], domain)
        if target is None:
            continue
        data = conn.execute("SELECT data FROM message WHERE id = ?", (mid,)).fetchone()[0]
        add_entries(conn, mid, sender, bytes(data), arrived, [(target.mailbox_id, address)])
        conn.execute("DELETE FROM recipient WHERE id = ?", (rid,))
        filed.append((qid, address, target.address))
    return filed


# -- what a POP3 session reads and writes ---------------------------------------------------


@dataclass(frozen=True)
class LoginRecord:
    """The fields of a mailbox that a login checks and opens."""

    mailbox_id: int
    address: str
    password_hash: str
    apop_secret: str
    uid_validity: str
    retention_days: int
    """The domain's retention; 0 when the domain is no longer hosted."""
    enabled: bool
    """False when the owning account is disabled."""


def find_login(conn: sqlite3.Connection, login: str) -> LoginRecord | None:
    """Return the mailbox whose address is ``login`` (any case), or None."""
    row = conn.execute(
        "SELECT b.id, b.address, b.password_hash, b.apop_secret, b.uid_validity,"
        " COALESCE(d.retention_days, 0), COALESCE(a.enabled, 0) FROM mailbox b"
        " LEFT JOIN domain d ON d.name = b.domain LEFT JOIN account a ON a.id = b.account_id"
        " WHERE b.address = ?", (login.strip().lower(),),
    ).fetchone()
    if row is None:
        return None
    return LoginRecord(row[0], row[1], row[2], row[3], row[4], row[5], bool(row[6]))


@dataclass
class Listing:
    """A mailbox's messages at login, in UID order, as compact arrays.

    A mailbox of 100,000 messages costs about 2.4 MB here, not a Python
    object per message.
    """

    entry_ids: array
    uids: array
    sizes: array

    def __len__(self) -> int:
        return len(self.entry_ids)


def listing(conn: sqlite3.Connection, mailbox_id: int, cutoff: float = 0.0) -> Listing:
    """Return the mailbox's entries that arrived at or after ``cutoff``.

    The query reads only the covering index ``ix_mailbox_entry_listing``.
    """
    ids, uids, sizes = array("q"), array("q"), array("q")
    for entry_id, uid, size in conn.execute(
        "SELECT id, uid, size FROM mailbox_entry INDEXED BY ix_mailbox_entry_listing"
        " WHERE mailbox_id = ? AND arrived >= ? ORDER BY uid", (mailbox_id, cutoff),
    ):
        ids.append(entry_id)
        uids.append(uid)
        sizes.append(size)
    return Listing(ids, uids, sizes)


def load_messages(conn: sqlite3.Connection, entry_ids: list[int]) -> dict[int, bytes]:
    """Return each entry's message in its retrieved form; entries gone since are left out."""
    result: dict[int, bytes] = {}
    for start in range(0, len(entry_ids), 500):
        chunk = entry_ids[start:start + 500]
        marks = ",".join("?" * len(chunk))
        for entry_id, recipient, sender, data in conn.execute(
            "SELECT e.id, e.recipient, m.sender, m.data FROM mailbox_entry e"
            f" JOIN message m ON m.id = e.message_id WHERE e.id IN ({marks})", chunk,
        ):
            result[entry_id] = retrieved_form(sender, recipient, bytes(data))
    return result


def delete_entries(conn: sqlite3.Connection, mailbox_id: int,
                   entry_ids: list[int]) -> tuple[int, int]:
    """Delete entries of one mailbox, and each message no mailbox or recipient needs any more.

    Returns:
        How many entries were deleted and their total size.
    """
    found: list[tuple[int, int, int]] = []
    for start in range(0, len(entry_ids), 500):
        chunk = entry_ids[start:start + 500]
        marks = ",".join("?" * len(chunk))
        found += conn.execute(
            f"SELECT id, message_id, size FROM mailbox_entry WHERE id IN ({marks})"
            " AND mailbox_id = ?", (*chunk, mailbox_id),
        ).fetchall()
    if not found:
        return 0, 0
    conn.executemany("DELETE FROM mailbox_entry WHERE id = ?", [(row[0],) for row in found])
    total = sum(row[2] for row in found)
    conn.execute("UPDATE mailbox SET messages = MAX(messages - ?, 0), bytes = MAX(bytes - ?, 0)"
                 " WHERE id = ?", (len(found), total, mailbox_id))
    drop_unused_messages(conn, {row[1] for row in found})
    return len(found), total


def drop_unused_messages(conn: sqlite3.Connection, message_ids: set[int]) -> int:
    """Delete the given messages that no mailbox entry and no recipient refers to."""
    gone = 0
    for mid in message_ids:
        if conn.execute("SELECT 1 FROM mailbox_entry WHERE message_id = ? LIMIT 1",
                        (mid,)).fetchone():
            continue
        if conn.execute("SELECT 1 FROM recipient WHERE message_id = ? LIMIT 1", (mid,)).fetchone():
            continue
        conn.execute("DELETE FROM attempt WHERE message_id = ?", (mid,))
        conn.execute("DELETE FROM message WHERE id = ?", (mid,))
        gone += 1
    return gone


def expire(conn: sqlite3.Connection, domain: str, cutoff: float,
           skip: frozenset[int] = frozenset(), limit: int = 5000) -> list[tuple[str, int]]:
    """Delete entries of the domain's mailboxes that arrived before ``cutoff``.

    The search walks the index on arrival time, so it reads only old
    entries, however large the mailboxes are.

    Args:
        skip: mailbox ids to leave alone, such as those a session has open.
        limit: entries deleted at most in one call.

    Returns:
        (mailbox address, entries deleted) for each mailbox that lost some.
    """
    rows = conn.execute(
        "SELECT e.id, e.mailbox_id, b.address FROM mailbox_entry e"
        " INDEXED BY ix_mailbox_entry_arrived JOIN mailbox b ON b.id = e.mailbox_id"
        " WHERE e.arrived < ? AND b.domain = ? LIMIT ?", (cutoff, domain, limit),
    ).fetchall()
    found: dict[tuple[int, str], list[int]] = {}
    for entry_id, mailbox_id, address in rows:
        if mailbox_id not in skip:
            found.setdefault((mailbox_id, address), []).append(entry_id)
    result = []
    for (mailbox_id, address), ids in found.items():
        count, _ = delete_entries(conn, mailbox_id, ids)
        result.append((address, count))
    return result


# -- administration (``mailkeep mailbox``) -------------------------------------------


@dataclass
class MailboxInfo:
    """A mailbox as ``mailkeep mailbox list`` shows it."""

    address: str
    account: str
    messages: int
    bytes: int
    max_messages: int
    max_bytes: int
    has_apop: bool
    domain_mode: str


def _account_id(conn: sqlite3.Connection, name: str) -> int:
    row = conn.execute("SELECT id FROM account WHERE name = ?", (name,)).fetchone()
    if row is None:
        raise NotFound(f"account {name!r} not found; `mailkeep account list` shows the accounts")
    return row[0]


def _mailbox_id(conn: sqlite3.Connection, text: str) -> tuple[int, str]:
    address, _ = parse_mailbox_address(text)
    row = conn.execute("SELECT id FROM mailbox WHERE address = ?", (address,)).fetchone()
    if row is None:
        raise NotFound(f"mailbox {address!r} not found; "
                       "`mailkeep mailbox list` shows the mailboxes")
    return row[0], address


def add_mailbox(conn: sqlite3.Connection, text: str, account: str, password_hash: str,
                max_messages: int = 0, max_bytes: int = 0) -> tuple[str, str]:
    """Create a mailbox for an address, or the catch-all for ``@domain``.

    Returns:
        The stored address and the domain's mode, so the caller can warn when
        the domain does not collect mail by POP3 yet.

    Raises:
        NotFound: the account or the domain does not exist.
        Conflict: the address is invalid or taken, or the domain belongs to another account.
    """
    address, domain = parse_mailbox_address(text)
    account_id = _account_id(conn, account)
    row = conn.execute("SELECT account_id, mode FROM domain WHERE name = ?", (domain,)).fetchone()
    if row is None:
        raise NotFound(f"domain {domain!r} not found; add it with `mailkeep domain add {domain} "
                       f"--account {account} --mode pop3`")
    if row[0] != account_id:
        raise Conflict(f"domain {domain!r} belongs to another account, not to {account!r}")
    if conn.execute("SELECT 1 FROM mailbox WHERE address = ?", (address,)).fetchone():
        raise Conflict(f"mailbox {address!r} already exists; change its password with "
                       f"`mailkeep mailbox passwd {address}`")
    conn.execute(
        "INSERT INTO mailbox (address, domain, account_id, password_hash, apop_secret,"
        " max_messages, max_bytes, messages, bytes, next_uid, uid_validity, created)"
        " VALUES (?, ?, ?, ?, '', ?, ?, 0, 0, 1, ?, ?)",
        (address, domain, account_id, password_hash, max_messages, max_bytes,
         secrets.token_hex(4), time.time()),
    )
    return address, row[1]


def set_password(conn: sqlite3.Connection, text: str, password_hash: str) -> str:
    """Replace a mailbox's password hash; return its address."""
    mailbox_id, address = _mailbox_id(conn, text)
    conn.execute("UPDATE mailbox SET password_hash = ? WHERE id = ?", (password_hash, mailbox_id))
    return address


def set_apop_secret(conn: sqlite3.Connection, text: str, secret: str) -> str:
    """Set (or with ``""`` remove) a mailbox's APOP and CRAM-MD5 secret; return its address."""
    mailbox_id, address = _mailbox_id(conn, text)
    conn.execute("UPDATE mailbox SET apop_secret = ? WHERE id = ?", (secret, mailbox_id))
    return address


def set_quota(conn: sqlite3.Connection, text: str, max_messages: int | None,
              max_bytes: int | None) -> tuple[str, int, int]:
    """Change a mailbox's quota (None keeps a value); return the address and the quota."""
    mailbox_id, address = _mailbox_id(conn, text)
    if max_messages is not None:
        conn.execute("UPDATE mailbox SET max_messages = ? WHERE id = ?",
                     (max_messages, mailbox_id))
    if max_bytes is not None:
        conn.execute("UPDATE mailbox SET max_bytes = ? WHERE id = ?", (max_bytes, mailbox_id))
    row = conn.execute("SELECT max_messages, max_bytes FROM mailbox WHERE id = ?",
                       (mailbox_id,)).fetchone()
    return address, row[0], row[1]


def set_account_quota(conn: sqlite3.Connection, account: str, max_messages: int | None,
                      max_bytes: int | None) -> tuple[int, int]:
    """Change the quota over all mailboxes of an account (None keeps a value); return it."""
    account_id = _account_id(conn, account)
    conn.execute("INSERT OR IGNORE INTO account_quota (account_id, max_messages, max_bytes)"
                 " VALUES (?, 0, 0)", (account_id,))
    if max_messages is not None:
        conn.execute("UPDATE account_quota SET max_messages = ? WHERE account_id = ?",
                     (max_messages, account_id))
    if max_bytes is not None:
        conn.execute("UPDATE account_quota SET max_bytes = ? WHERE account_id = ?",
                     (max_bytes, account_id))
    return conn.execute("SELECT max_messages, max_bytes FROM account_quota WHERE account_id = ?",
                        (account_id,)).fetchone()


def account_usage(conn: sqlite3.Connection, account: str) -> tuple[int, int, int, int]:
    """Return (messages, bytes, max messages, max bytes) over an account's mailboxes."""
    account_id = _account_id(conn, account)
    count, size = conn.execute(
        "SELECT COALESCE(SUM(messages), 0), COALESCE(SUM(bytes), 0) FROM mailbox"
        " WHERE account_id = ?", (account_id,)).fetchone()
    limits = conn.execute("SELECT max_messages, max_bytes FROM account_quota WHERE account_id = ?",
                          (account_id,)).fetchone() or (0, 0)
    return count, size, limits[0], limits[1]


def remove_mailbox(conn: sqlite3.Connection, text: str, force: bool = False) -> tuple[str, int]:
    """Remove a mailbox; with ``force`` also the mail in it.

    Returns:
        The address and the number of messages removed with it.

    Raises:
        Conflict: the mailbox holds mail and ``force`` is false.
    """
    mailbox_id, address = _mailbox_id(conn, text)
    rows = conn.execute("SELECT id FROM mailbox_entry WHERE mailbox_id = ?",
                        (mailbox_id,)).fetchall()
    if rows and not force:
        raise Conflict(f"mailbox {address!r} holds {len(rows)} message(s); let its owner collect "
                       "them, or pass --force to remove the mailbox with its mail")
    count, _ = delete_entries(conn, mailbox_id, [row[0] for row in rows]) if rows else (0, 0)
    conn.execute("DELETE FROM mailbox WHERE id = ?", (mailbox_id,))
    return address, count


def list_mailboxes(conn: sqlite3.Connection, account: str | None = None,
                   domain: str | None = None) -> list[MailboxInfo]:
    """Return mailboxes ordered by domain and address, optionally of one account or domain."""
    where, args = [], []
    if account is not None:
        where.append("b.account_id = ?")
        args.append(_account_id(conn, account))
    if domain is not None:
        where.append("b.domain = ?")
        args.append(normalize_domain(domain))
    sql = ("SELECT b.address, COALESCE(a.name, '?'), b.messages, b.bytes, b.max_messages,"
           " b.max_bytes, b.apop_secret != '', COALESCE(d.mode, '-') FROM mailbox b"
           " LEFT JOIN account a ON a.id = b.account_id LEFT JOIN domain d ON d.name = b.domain")
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY b.domain, b.address"
    return [MailboxInfo(r[0], r[1], r[2], r[3], r[4], r[5], bool(r[6]), r[7])
            for r in conn.execute(sql, args)]
