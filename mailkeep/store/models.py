"""Tables of the Mailkeep store.

A message is stored once, with one ``Recipient`` row per envelope recipient.
A recipient row is deleted when the customer's server accepted it or when a
delivery status notification went back for it; the message row goes when
its last recipient does.
"""

from __future__ import annotations

from typing import Optional

from sqlalchemy import Column, Index, LargeBinary
from sqlmodel import Field, SQLModel

MODES = ("smtp", "etrn", "odmr", "pop3")
"""Delivery modes a domain can have."""

HELD_MODES = ("etrn", "odmr")
"""Modes whose mail waits for a trigger instead of being pushed."""


class Account(SQLModel, table=True):
    """A customer: owns domains, logs in for ETRN, ODMR and AUTH."""

    id: Optional[int] = Field(default=None, primary_key=True)
    name: str = Field(unique=True, index=True)
    password_hash: str = ""
    """argon2id hash of the login password."""
    shared_secret: str = ""
    """CRAM-MD5 secret, kept readable because the protocol needs it."""
    enabled: bool = True
    created: float = 0.0


class Domain(SQLModel, table=True):
    """A hosted domain and how its mail is handed on."""

    id: Optional[int] = Field(default=None, primary_key=True)
    name: str = Field(unique=True, index=True)
    account_id: int = Field(foreign_key="account.id", index=True)
    mode: str = "smtp"
    host: str = ""
    port: int = 25
    retention_days: int = 30
    """How long held mail (modes etrn, odmr, pop3) is kept."""
    recipients: str = Field(default="", sa_column_kwargs={"server_default": ""})
    """Recipient policy: local parts accepted at RCPT, comma-separated; empty accepts
    every local part. ``postmaster`` is always accepted (RFC 5321 section 4.5.1)."""
    created: float = 0.0


class Message(SQLModel, table=True):
    """One accepted message: envelope sender, content and origin."""

    # AUTOINCREMENT: a deleted message's id is never handed out again, so a delivery
    # result that arrives after an administrator's delete cannot hit a newer message.
    __table_args__ = {"sqlite_autoincrement": True}

    id: Optional[int] = Field(default=None, primary_key=True)
    queue_id: str = Field(unique=True)
    sender: str = ""
    """Envelope sender; empty for the null sender ``<>``."""
    size: int = 0
    arrived: float = Field(default=0.0, index=True)
    client: str = ""
    """Client as ``name[address]``."""
    helo: str = ""
    hold: bool = False
    """Put on hold by the administrator: no delivery until released."""
    delivering: bool = False
    """A delivery connection is carrying it now."""
    is_bounce: bool = False
    """A delivery status notification we made: never bounced again."""
    body_8bit: bool = False
    data: bytes = Field(default=b"", sa_column=Column(LargeBinary, nullable=False))


class Recipient(SQLModel, table=True):
    """One envelope recipient of a message that is still to be delivered."""

    __table_args__ = {"sqlite_autoincrement": True}  # ids are never reused, as for Message

    id: Optional[int] = Field(default=None, primary_key=True)
    message_id: int = Field(foreign_key="message.id", index=True)
    address: str
    domain: str = Field(index=True)
    state: str = "queued"
    """``queued`` (due now), ``deferred`` (retry at next_attempt) or
    ``held`` (waits for ETRN, ODMR or a flush)."""
    next_attempt: float = Field(default=0.0, index=True)
    attempts: int = 0
    last_error: str = ""


class Attempt(SQLModel, table=True):
    """A failed delivery attempt, kept for ``queue show`` until the message goes."""

    id: Optional[int] = Field(default=None, primary_key=True)
    message_id: int = Field(foreign_key="message.id", index=True)
    address: str
    at: float
    relay: str = ""
    status: str = ""
    reply: str = ""


class Mailbox(SQLModel, table=True):
    """A POP3 mailbox of a domain in mode ``pop3``; its address is also its login name.

    The address ``@domain`` names the domain's catch-all mailbox, which takes
    mail for every address of the domain without a mailbox of its own.
    """

    id: Optional[int] = Field(default=None, primary_key=True)
    address: str = Field(unique=True, index=True)
    """Lower-case ``local@domain``, or ``@domain`` for the catch-all."""
    domain: str = Field(index=True)
    account_id: int = Field(foreign_key="account.id", index=True)
    password_hash: str = ""
    """argon2id hash of the password for USER/PASS and AUTH PLAIN."""
    apop_secret: str = ""
    """APOP and CRAM-MD5 secret, kept readable because both protocols need it;
    empty means the mailbox cannot log in with either."""
    max_messages: int = 0
    """Quota in messages; 0 means no limit."""
    max_bytes: int = 0
    """Quota in bytes; 0 means no limit."""
    messages: int = 0
    """Messages in the mailbox now, kept with every change."""
    bytes: int = 0
    """Their total size as retrieved, kept with every change."""
    next_uid: int = 1
    """The UID the next message gets; it only grows, so a UID is never reused."""
    uid_validity: str = ""
    """Random text made when the mailbox is made, part of every UIDL value, so a
    mailbox removed and added again never repeats an earlier UIDL."""
    created: float = 0.0


class AccountQuota(SQLModel, table=True):
    """Limits over all POP3 mailboxes of one account; 0 means no limit."""

    __tablename__ = "account_quota"

    account_id: int = Field(foreign_key="account.id", primary_key=True)
    max_messages: int = 0
    max_bytes: int = 0


class MailboxEntry(SQLModel, table=True):
    """One message in one mailbox: the message is stored once, in ``message``."""

    __tablename__ = "mailbox_entry"
    __table_args__ = (
        Index("ix_mailbox_entry_uid", "mailbox_id", "uid", unique=True),
        # Covers the listing a POP3 login reads, so that it never visits the table rows.
        Index("ix_mailbox_entry_listing", "mailbox_id", "uid", "size", "arrived"),
    )

    id: Optional[int] = Field(default=None, primary_key=True)
    mailbox_id: int = Field(foreign_key="mailbox.id")
    uid: int
    message_id: int = Field(foreign_key="message.id", index=True)
    recipient: str
    """The envelope recipient the message was stored for (Delivered-To)."""
    size: int
    """Exact size as RETR sends it: the added header lines, CRLF line ends."""
    arrived: float = Field(default=0.0, index=True)
