"""Checking account logins: argon2 passwords and per-address throttling.

Hashing runs in a worker thread, because argon2 takes tens of milliseconds
of CPU by design and must not stall the event loop. An unknown account costs
the same hashing work as a wrong password, so timing does not tell them apart.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from ..store.accounts import find_account
from .context import Context

_hasher = PasswordHasher()
_DUMMY_HASH = _hasher.hash("mailkeep-no-such-account")


@dataclass
class Login:
    """A successful login."""

    account_id: int
    name: str


def _verify(stored: str, password: str) -> bool:
    try:
        return _hasher.verify(stored or _DUMMY_HASH, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


async def check_password(context: Context, name: str, password: str) -> Login | None:
    """Return the login when ``password`` is the account's, else None.

    Unknown, disabled and password-less accounts fail exactly like a wrong
    password.
    """
    found = await context.db.read(find_account, name)
    stored = found[1] if found else ""
    ok = await asyncio.to_thread(_verify, stored, password)
    if not found or not stored or not ok or not found[3]:
        return None
    return Login(found[0], name)


async def throttled(context: Context, address: str) -> float:
    """Return how many seconds ``address`` stays refused after repeated failures, 0 if none."""
    return context.logins.locked(address)


async def record_failure(context: Context, address: str) -> None:
    """Count a failed login and wait out the growing delay before the caller replies."""
    delay = context.logins.failed(address)
    if delay > 0:
        await asyncio.sleep(delay)


def decode_plain(response: str) -> tuple[str, str, str] | None:
    """Decode an AUTH PLAIN response (RFC 4616) into (authzid, authcid, password)."""
    try:
        raw = base64.b64decode(response.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    parts = raw.split("\0")
    if len(parts) != 3 or not parts[1]:
        return None
    return parts[0], parts[1], parts[2]


def decode_base64_text(response: str) -> str | None:
    """Decode one base64 line of an AUTH exchange; None when it is not valid base64 UTF-8."""
    try:
        return base64.b64decode(response.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
