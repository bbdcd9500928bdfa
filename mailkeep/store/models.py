"""Tables of the Mailkeep store.

A message is stored once, with one ``Recipient`` row per envelope recipient.
A recipient row is deleted when the customer's server accepted it or when a
delivery status notification went back for it; the message row goes when
its last recipient does.
"""

from __future__ import annotations

from typing import Optional

from sqlalchemy import Column, LargeBinary
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
    created: float = 0.0


class Message(SQLModel, table=True):
    """One accepted message: envelope sender, content and origin."""

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
