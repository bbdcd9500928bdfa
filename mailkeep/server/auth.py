"""Checking account logins: argon2 passwords and per-address throttling.

Hashing runs in a worker thread, because argon2 takes tens of milliseconds
of CPU by design and must not stall the event loop. An unknown account costs
the same hashing work as a wrong password, so timing does not tell them apart.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import secrets
import time
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
        secret = password.encode()
    except UnicodeEncodeError:  # not UTF-8 on the wire: it cannot match any stored password
        secret = b"\0"
    try:
        return _hasher.verify(stored or _DUMMY_HASH, secret)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


async def check_password(context: Context, name: str, password: str) -> Login | None:
    """Return the login when ``password`` is the account's, else None.

    Unknown, disabled and password-less accounts fail exactly like a wrong
    password.
    """
    found = await context.db.read(find_account, name) if _encodable(name) else None
    stored = found[1] if found else ""
    ok = await asyncio.to_thread(_verify, stored, password)
    if not found or not stored or not ok or not found[3]:
        return None
    return Login(found[0], name)


def _encodable(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def cram_challenge(hostname: str) -> str:
    """Make a CRAM-MD5 challenge (RFC 2195): a unique msg-id-like string."""
    return f"<{secrets.randbelow(10**12)}.{time.time_ns()}@{hostname}>"


async def check_cram(context: Context, challenge: str, response: str) -> Login | None:
    """Check a CRAM-MD5 response ``"name hexdigest"`` against the account's shared secret.

    The digest is HMAC-MD5 of the challenge keyed with the secret, compared in
    constant time. An account without a secret cannot log in this way.
    """
    name, _, digest = response.strip().rpartition(" ")
    if not name or not digest or not _encodable(name) or not digest.isascii():
        return None
    found = await context.db.read(find_account, name)
    secret = found[2] if found else ""
    expected = hmac.new((secret or "-").encode(), challenge.encode(), hashlib.md5).hexdigest()
    if not hmac.compare_digest(expected.encode(), digest.lower().encode()):
        return None
    if not found or not secret or not found[3]:
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
