"""POP3 (RFC 1939) with STLS (RFC 2595), CAPA (RFC 2449), AUTH (RFC 5034) and APOP.

How it works
------------
:class:`Pop3Session` is the protocol with no I/O at all. The connection code
feeds it one command line at a time and gets back a list of actions:
:class:`Send` bytes, :class:`StartTLS`, :class:`Close`, or a request for
work it cannot do itself: :class:`Login` (check credentials and open the
mailbox), :class:`Load` (read message bodies) and :class:`Update` (delete
the messages marked with DELE). The connection code performs each request
and hands the result back (:meth:`Pop3Session.login_result`,
:meth:`~Pop3Session.loaded`, :meth:`~Pop3Session.updated`), which yields
the next actions. Lines are handled strictly one after the other, so
pipelined commands (RFC 2449 PIPELINING) get their replies in order.

The states follow RFC 1939 section 3::

    AUTHORIZATION --login ok--> TRANSACTION --QUIT--> UPDATE --commit--> closed
          |  ^                        |
          |  +-- login failed         +-- dropped connection, timeout: closed,
          +-- QUIT: closed                nothing deleted

A login reads the mailbox's listing once, from a covering index: message
numbers, UIDs and sizes live in three arrays for the whole session. Bodies
are read only for RETR and TOP, a few messages ahead of the one asked for,
since clients fetch in order. DELE only marks; the entries go in one
transaction after QUIT (RFC 1939 section 6), so a dropped connection deletes
nothing.

:class:`Pop3Connection` joins a session to an asyncio stream, and
:class:`Pop3Service` holds what the connections share: which mailboxes are
open (one session per mailbox, ``[IN-USE]``), the greeting timestamps and
the background task that files held mail and expires old mail.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import logging
import os
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Union

from ..events import next_session
from ..store import mailboxes as store
from ..store.accounts import Route
from ..store.mailboxes import Listing, LoginRecord
from . import pop3_replies as R
from .auth import _verify as verify_password_hash  # argon2 with a dummy hash for unknown names
from .auth import record_failure
from .context import Context
from .delivery import format_seconds

log = logging.getLogger("mailkeep.pop3d")

SERVICE = "pop3d"
IDLE_TIMEOUT = 600.0
"""Seconds a client may stay silent. RFC 1939 section 3 requires at least 10 minutes."""
HANDSHAKE_TIMEOUT = 60.0
MAX_LINE = 8192
"""Maximum length of a command line. RFC 2449 allows 255 octets, SASL responses more."""
MAX_ERRORS = 20
"""Failed commands after which the connection is closed."""
MAX_LOGIN_FAILURES = 3
"""Failed logins in one session after which it is closed."""
READ_AHEAD_BYTES = 1 << 20
READ_AHEAD_COUNT = 64
"""A RETR or TOP reads the requested message and up to this many following ones,
within READ_AHEAD_BYTES, in one store read."""
SWEEP_INTERVAL = 60.0
"""Seconds between runs that file held mail into mailboxes and expire old mail."""
DAY = 86400.0


# -- actions the session returns -----------------------------------------------------------


@dataclass
class Send:
    """Write these bytes to the client."""

    data: bytes


@dataclass
class StartTLS:
    """Drop input read so far, then run the TLS handshake (after ``+OK`` to STLS)."""


@dataclass
class Close:
    """Close the connection. ``reason`` goes to the log."""

    reason: str


@dataclass
class Login:
    """Check credentials and open the mailbox, then call :meth:`Pop3Session.login_result`.

    Attributes:
        method: ``USER`` (USER/PASS), ``PLAIN``, ``LOGIN``, ``APOP`` or ``CRAM-MD5``.
        user: the login name, which is the mailbox's address.
        secret: the password, or the hex digest for APOP and CRAM-MD5.
        challenge: the text the digest was made over (APOP timestamp, CRAM-MD5 challenge).
    """

    method: str
    user: str
    secret: str = field(repr=False)
    challenge: str = ""


@dataclass
class Load:
    """Read these entries' messages, then call :meth:`Pop3Session.loaded`."""

    entry_ids: list[int]


@dataclass
class Update:
    """Delete these entries in one transaction, then call :meth:`Pop3Session.updated`."""

    entry_ids: list[int]


Action = Union[Send, StartTLS, Close, Login, Load, Update]


@dataclass
class LoginOutcome:
    """What the connection found for a :class:`Login`.

    Attributes:
        refusal: the ``-ERR`` reply when the login failed, else empty.
        address: the mailbox's address.
        listing: its messages at login.
        uid_validity: the mailbox's UIDL prefix.
        expire_days: the domain's retention, for CAPA's EXPIRE.
    """

    refusal: str = ""
    address: str = ""
    listing: Listing | None = None
    uid_validity: str = ""
    expire_days: int = 0


# -- pure helpers --------------------------------------------------------------------------


def apop_digest(timestamp: str, secret: str) -> str:
    """Return the APOP digest: MD5 over the greeting's timestamp and the secret (RFC 1939 s. 7)."""
    return hashlib.md5((timestamp + secret).encode("utf-8")).hexdigest()


def cram_md5_digest(challenge: str, secret: str) -> str:
    """Return the CRAM-MD5 digest: HMAC-MD5 of the challenge keyed by the secret (RFC 2195)."""
    return hmac.new(secret.encode("utf-8"), challenge.encode("utf-8"), hashlib.md5).hexdigest()


def stuff(data: bytes) -> bytes:
    """Byte-stuff a multi-line body and add the terminating line (RFC 1939 section 3).

    ``data`` ends with CRLF (see :func:`store.retrieved_form`).
    """
    if data.startswith(b"."):
        data = b"." + data
    return data.replace(b"\r\n.", b"\r\n..") + b".\r\n"


def top_of(data: bytes, lines: int) -> bytes:
    """Return the header, the empty line and the first ``lines`` body lines (RFC 1939 TOP).

    Asking for more lines than the body has returns the whole message, which
    is how fetchmail downloads.
    """
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return data
    position = end + 4
    for _ in range(lines):
        found = data.find(b"\r\n", position)
        if found < 0:
            return data
        position = found + 2
    return data[:position]


def _multiline(first: str, lines: list[str]) -> bytes:
    body = "".join(f"{line}\r\n" for line in lines)
    return f"{first}\r\n{body}.\r\n".encode()


def _decode_b64(text: str) -> str | None:
    try:
        return base64.b64decode(text.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None


# -- the protocol state machine -------------------------------------------------------------


class Pop3Session:
    """One POP3 dialogue, from greeting to QUIT, without I/O.

    Args:
        timestamp: the APOP timestamp for the greeting, ``<pid.nanotime@host>``.
        tls_available: STLS can be offered (a TLS context exists and the
            connection is not TLS yet).
        tls_active: the connection is already encrypted (POP3S).
        allow_plaintext: USER/PASS, AUTH PLAIN and LOGIN are allowed without TLS.
        expire_days: the shortest retention of any ``pop3`` domain, for CAPA
            before login (``EXPIRE n USER``: each mailbox may differ).
        new_challenge: makes a fresh CRAM-MD5 challenge.
    """

    def __init__(self, timestamp: str, *, tls_available: bool, tls_active: bool = False,
                 allow_plaintext: bool = False, expire_days: int = 30,
                 new_challenge: Callable[[], str] | None = None):
        self.timestamp = timestamp
        self.tls_available = tls_available and not tls_active
        self.tls_active = tls_active
        self.allow_plaintext = allow_plaintext
        self.expire_days = expire_days
        self.new_challenge = new_challenge or (lambda: timestamp)
        self.state = "authorization"
        self.user: str | None = None
        self.address = ""
        self._sasl: list[str] | None = None
        self.listing: Listing | None = None
        self.uid_validity = ""
        self.deleted = bytearray()
        self.deleted_count = 0
        self.deleted_size = 0
        self.total_size = 0
        self._cache: dict[int, bytes] = {}
        self._pending: tuple[str, int, int] | None = None
        self.errors = 0
        self.login_failures = 0
        self.stats = {"top": 0, "top_bytes": 0, "retr": 0, "retr_bytes": 0}

    # -- entry points ------------------------------------------------------------------

    def greeting(self) -> bytes:
        return (R.GREETING.format(timestamp=self.timestamp) + "\r\n").encode()

    def receive(self, line: bytes) -> list[Action]:
        """Handle one line from the client, without its line end."""
        text = line.decode("utf-8", "surrogateescape").rstrip("\r\n")
        if self._sasl is not None:
            return self._sasl_step(text)
        verb, _, arg = text.partition(" ")
        handler = self._COMMANDS.get(verb.upper())
        if handler is None:
            return self._error(R.UNKNOWN_COMMAND)
        states = _STATES.get(verb.upper(), ("transaction",))
        if self.state not in states:
            return self._error(R.NOT_NOW)
        return handler(self, arg.strip(" ") if verb.upper() not in ("PASS",) else arg)

    def line_too_long(self) -> list[Action]:
        """Answer a line longer than :data:`MAX_LINE`, which was dropped unread."""
        self._sasl = None
        return self._error(R.LINE_TOO_LONG)

    def tls_started(self) -> list[Action]:
        """The handshake after STLS succeeded: forget what was said before it (RFC 2595 s. 4)."""
        self.tls_active = True
        self.tls_available = False
        self.user = None
        return []

    def login_result(self, outcome: LoginOutcome) -> list[Action]:
        """Finish a :class:`Login`: enter TRANSACTION, or refuse."""
        self.user = None
        if outcome.refusal:
            self.login_failures += 1
            actions = self._error(outcome.refusal)
            if self.login_failures >= MAX_LOGIN_FAILURES and not any(
                    isinstance(a, Close) for a in actions):
                actions.append(Close("too many failed logins"))
            return actions
        assert outcome.listing is not None
        self.state = "transaction"
        self.address = outcome.address
        self.listing = outcome.listing
        self.uid_validity = outcome.uid_validity
        self.expire_days = outcome.expire_days
        self.deleted = bytearray(len(outcome.listing))
        self.total_size = sum(outcome.listing.sizes)
        return [self._line(R.LOGGED_IN)]

    def loaded(self, messages: dict[int, bytes]) -> list[Action]:
        """Finish a :class:`Load`: answer the RETR or TOP that asked for it."""
        assert self.listing is not None and self._pending is not None
        verb, index, lines = self._pending
        self._pending = None
        ids = self.listing.entry_ids
        for position in range(index, min(index + READ_AHEAD_COUNT, len(ids))):
            data = messages.get(ids[position])
            if data is not None:
                self._cache[position] = data
        return self._answer(verb, index, lines)

    def updated(self, ok: bool) -> list[Action]:
        """Finish the :class:`Update` after QUIT."""
        self.state = "closed"
        return [self._line(R.BYE if ok else R.UPDATE_FAILED), Close("logout")]

    # -- replies ------------------------------------------------------------------------

    @staticmethod
    def _line(text: str) -> Send:
        return Send(text.encode("utf-8", "surrogateescape") + b"\r\n")

    def _error(self, text: str) -> list[Action]:
        self.errors += 1
        if self.errors > MAX_ERRORS:
            return [self._line(text), self._line(R.TOO_MANY_ERRORS), Close("too many errors")]
        return [self._line(text)]

    @property
    def plaintext_allowed(self) -> bool:
        return self.tls_active or self.allow_plaintext

    def mechanisms(self) -> list[str]:
        """SASL mechanisms accepted now: CRAM-MD5 always, PLAIN and LOGIN once they are safe."""
        return ["PLAIN", "LOGIN", "CRAM-MD5"] if self.plaintext_allowed else ["CRAM-MD5"]

    def advertised(self) -> list[str]:
        """SASL mechanisms for CAPA.

        Inside TLS, CRAM-MD5 protects nothing more and needs an APOP secret
        that many mailboxes lack, and clients such as fetchmail try it first
        when listed, failing a login (and feeding the throttle) each time.
        So it is listed only without TLS; it is still accepted inside TLS.
        """
        if self.tls_active:
            return ["PLAIN", "LOGIN"]
        return self.mechanisms()

    def capabilities(self) -> list[str]:
        """The CAPA list (RFC 2449 section 6) for the current state."""
        caps = ["TOP", "UIDL", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING"]
        if self.state == "authorization":
            caps.append(f"EXPIRE {self.expire_days} USER")
            if self.plaintext_allowed:
                caps.append("USER")
            caps.append("SASL " + " ".join(self.advertised()))
            if self.tls_available:
                caps.append("STLS")
        else:
            caps.append(f"EXPIRE {self.expire_days}" if self.expire_days else "EXPIRE NEVER")
        caps.append("IMPLEMENTATION Mailkeep")
        return caps

    # -- AUTHORIZATION state ------------------------------------------------------------

    def _capa(self, arg: str) -> list[Action]:
        return [Send(_multiline(R.CAPA, self.capabilities()))]

    def _stls(self, arg: str) -> list[Action]:
        if self.tls_active:
            return self._error(R.TLS_ACTIVE)
        if not self.tls_available:
            return self._error(R.TLS_UNAVAILABLE)
        return [self._line(R.STLS_GO), StartTLS()]

    def _user(self, arg: str) -> list[Action]:
        if not self.plaintext_allowed:
            return self._error(R.NEED_TLS)
        if not arg or len(arg) > 255:
            return self._error(R.SYNTAX.format(usage="USER name"))
        self.user = arg
        return [self._line(R.USER_OK)]

    def _pass(self, arg: str) -> list[Action]:
        if self.user is None:
            return self._error(R.NEED_USER)
        user, self.user = self.user, None
        return [Login("USER", user, arg)]

    def _apop(self, arg: str) -> list[Action]:
        name, _, digest = arg.rpartition(" ")
        digest = digest.lower()
        if not name or len(digest) != 32 or any(c not in "0123456789abcdef" for c in digest):
            return self._error(R.SYNTAX.format(usage="APOP name digest"))
        return [Login("APOP", name.strip(), digest, self.timestamp)]

    def _auth(self, arg: str) -> list[Action]:
        if not arg:
            # An old draft's form that Outlook still sends: list the mechanisms.
            return [Send(_multiline(R.AUTH_LIST, self.advertised()))]
        mechanism, _, initial = arg.partition(" ")
        mechanism = mechanism.upper()
        if mechanism not in ("PLAIN", "LOGIN", "CRAM-MD5"):
            return self._error(R.AUTH_UNKNOWN_MECHANISM)
        if mechanism not in self.mechanisms():
            return self._error(R.NEED_TLS)
        initial = initial.strip()
        if mechanism == "CRAM-MD5":
            if initial:
                return self._error(R.SYNTAX.format(usage="AUTH CRAM-MD5 (no initial response)"))
            challenge = self.new_challenge()
            self._sasl = [mechanism, challenge]
            return [Send(b"+ " + base64.b64encode(challenge.encode()) + b"\r\n")]
        self._sasl = [mechanism]
        if initial:
            return self._sasl_step("" if initial == "=" else initial)
        if mechanism == "LOGIN":
            return [Send(b"+ VXNlcm5hbWU6\r\n")]
        return [Send(b"+ \r\n")]

    def _sasl_step(self, response: str) -> list[Action]:
        assert self._sasl is not None
        exchange = self._sasl
        if response.strip() == "*":
            self._sasl = None
            return self._error(R.AUTH_CANCELLED)
        decoded = _decode_b64(response) if response else ""
        if decoded is None:
            self._sasl = None
            return self._error(R.AUTH_BAD_ENCODING)
        mechanism = exchange[0]
        if mechanism == "LOGIN" and len(exchange) == 1:
            exchange.append(decoded)
            return [Send(b"+ UGFzc3dvcmQ6\r\n")]
        self._sasl = None
        if mechanism == "LOGIN":
            return [Login("LOGIN", exchange[1], decoded)]
        if mechanism == "CRAM-MD5":
            name, _, digest = decoded.rpartition(" ")
            return [Login("CRAM-MD5", name, digest.lower(), exchange[1])]
        parts = decoded.split("\0")
        if len(parts) != 3 or not parts[1] or parts[0] not in ("", parts[1]):
            # Acting for another user (an authzid) is not offered.
            self.login_failures += 1
            return self._error(R.AUTH_FAILED)
        return [Login("PLAIN", parts[1], parts[2])]

    def _quit(self, arg: str) -> list[Action]:
        if self.state == "transaction" and self.deleted_count:
            self.state = "update"
            ids = self.listing.entry_ids
            return [Update([ids[i] for i, mark in enumerate(self.deleted) if mark])]
        self.state = "closed"
        return [self._line(R.BYE), Close("logout")]

    # -- TRANSACTION state --------------------------------------------------------------

    def _number(self, text: str) -> int | str:
        """Return the 0-based index of a message number, or the reply that refuses it."""
        assert self.listing is not None
        if not text.isdigit() or not text.isascii() or len(text) > 12:
            return R.NO_SUCH_MESSAGE  # more digits than any mailbox has messages
        index = int(text) - 1
        if not 0 <= index < len(self.listing):
            return R.NO_SUCH_MESSAGE
        if self.deleted[index]:
            return R.ALREADY_DELETED.format(number=index + 1)
        return index

    def _stat(self, arg: str) -> list[Action]:
        count = len(self.listing) - self.deleted_count
        return [self._line(R.STAT.format(count=count, size=self.total_size - self.deleted_size))]

    def _list(self, arg: str) -> list[Action]:
        sizes = self.listing.sizes
        if arg:
            index = self._number(arg)
            if isinstance(index, str):
                return self._error(index)
            return [self._line(R.LIST_ONE.format(number=index + 1, size=sizes[index]))]
        deleted = self.deleted
        lines = [f"{i + 1} {sizes[i]}" for i in range(len(sizes)) if not deleted[i]]
        first = R.LIST_ALL.format(count=len(lines), size=self.total_size - self.deleted_size)
        return [Send(_multiline(first, lines))]

    def _uid(self, index: int) -> str:
        return f"{self.uid_validity}.{self.listing.uids[index]}"

    def _uidl(self, arg: str) -> list[Action]:
        if arg:
            index = self._number(arg)
            if isinstance(index, str):
                return self._error(index)
            return [self._line(R.UIDL_ONE.format(number=index + 1, uid=self._uid(index)))]
        deleted, uids, prefix = self.deleted, self.listing.uids, self.uid_validity
        lines = [f"{i + 1} {prefix}.{uids[i]}" for i in range(len(uids)) if not deleted[i]]
        return [Send(_multiline(R.UIDL_ALL, lines))]

    def _retr(self, arg: str) -> list[Action]:
        index = self._number(arg)
        if isinstance(index, str):
            return self._error(index)
        return self._fetch("retr", index, -1)

    def _top(self, arg: str) -> list[Action]:
        number, _, count = arg.partition(" ")
        count = count.strip()
        if not count.isdigit() or not count.isascii():
            return self._error(R.SYNTAX.format(usage="TOP msg n"))
        index = self._number(number)
        if isinstance(index, str):
            return self._error(index)
        # A count with more digits than any message has lines requests the whole message.
        return self._fetch("top", index, int(count) if len(count) <= 12 else 10**12)

    def _fetch(self, verb: str, index: int, lines: int) -> list[Action]:
        if index in self._cache:
            return self._answer(verb, index, lines)
        self._cache.clear()
        ids, sizes = self.listing.entry_ids, self.listing.sizes
        wanted, budget = [ids[index]], sizes[index]
        for position in range(index + 1, min(index + READ_AHEAD_COUNT, len(ids))):
            if budget + sizes[position] > READ_AHEAD_BYTES:
                break
            if not self.deleted[position]:
                wanted.append(ids[position])
                budget += sizes[position]
        self._pending = (verb, index, lines)
        return [Load(wanted)]

    def _answer(self, verb: str, index: int, lines: int) -> list[Action]:
        data = self._cache.pop(index, None)
        if data is None:
            return self._error(R.MESSAGE_GONE.format(number=index + 1))
        if verb == "retr":
            self.stats["retr"] += 1
            self.stats["retr_bytes"] += len(data)
            head = R.RETR.format(size=len(data))
        else:
            data = top_of(data, lines)
            self.stats["top"] += 1
            self.stats["top_bytes"] += len(data)
            head = R.TOP
        return [Send(head.encode() + b"\r\n" + stuff(data))]

    def _dele(self, arg: str) -> list[Action]:
        index = self._number(arg)
        if isinstance(index, str):
            return self._error(index)
        self.deleted[index] = 1
        self.deleted_count += 1
        self.deleted_size += self.listing.sizes[index]
        self._cache.pop(index, None)
        return [self._line(R.DELETED.format(number=index + 1))]

    def _noop(self, arg: str) -> list[Action]:
        return [self._line(R.OK)]

    def _rset(self, arg: str) -> list[Action]:
        self.deleted = bytearray(len(self.listing))
        self.deleted_count = self.deleted_size = 0
        return [self._line(R.RESET.format(count=len(self.listing), size=self.total_size))]

    _COMMANDS: dict[str, Callable[["Pop3Session", str], list[Action]]] = {
        "CAPA": _capa, "STLS": _stls, "USER": _user, "PASS": _pass, "APOP": _apop,
        "AUTH": _auth, "QUIT": _quit, "STAT": _stat, "LIST": _list, "UIDL": _uidl,
        "RETR": _retr, "TOP": _top, "DELE": _dele, "NOOP": _noop, "RSET": _rset,
    }


_STATES = {
    "CAPA": ("authorization", "transaction"),
    "QUIT": ("authorization", "transaction"),
    "STLS": ("authorization",),
    "USER": ("authorization",),
    "PASS": ("authorization",),
    "APOP": ("authorization",),
    "AUTH": ("authorization",),
}
"""States in which a command is valid; every other command is valid in TRANSACTION only."""


# -- credential checks ----------------------------------------------------------------------

_DUMMY_SECRET = secrets.token_hex(16)


def _check_digest(record: LoginRecord | None, login: Login) -> bool:
    # A missing mailbox or secret still costs one digest and one comparison,
    # so the reply's timing does not tell an unknown name from a wrong digest.
    secret = record.apop_secret if record and record.apop_secret else _DUMMY_SECRET
    if login.method == "APOP":
        expected = apop_digest(login.challenge, secret)
    else:
        expected = cram_md5_digest(login.challenge, secret)
    ok = hmac.compare_digest(expected.encode(), login.secret.encode("utf-8", "replace"))
    return ok and record is not None and bool(record.apop_secret)


async def check_login(login: Login, record: LoginRecord | None) -> str:
    """Check credentials against a mailbox; return why they fail, or ``""`` when they pass.

    Passwords are verified with argon2 in a worker thread; an unknown name
    is hashed against a dummy, as :mod:`.auth` does for accounts.
    """
    if login.method in ("APOP", "CRAM-MD5"):
        ok = _check_digest(record, login)
        if record is not None and not record.apop_secret:
            return "no APOP secret set"
    else:
        stored = record.password_hash if record else ""
        ok = await asyncio.to_thread(verify_password_hash, stored, login.secret)
    if record is None:
        return "unknown user"
    if not ok:
        return "wrong digest" if login.method in ("APOP", "CRAM-MD5") else "wrong password"
    if not record.enabled:
        return "account disabled"
    return ""


def _shown_user(name: str) -> str:
    """A login name made safe for one log line."""
    cleaned = "".join(c if c.isprintable() and c not in "<>" else "?" for c in name)
    return cleaned[:100]


# -- the connection -----------------------------------------------------------------------


class Pop3Connection:
    """Joins one :class:`Pop3Session` to an asyncio stream.

    Args:
        service: the shared state of the POP3 listeners.
        reader, writer: the accepted connection.
        implicit_tls: the connection came to a POP3S listener and is encrypted.
    """

    def __init__(self, service: "Pop3Service", reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter, implicit_tls: bool):
        self.pop3 = service
        self.context = service.context
        self.reader = reader
        self.writer = writer
        self.implicit_tls = implicit_tls
        self.service = SERVICE
        self.number = next_session()
        peer = writer.get_extra_info("peername") or ("", 0)
        local = writer.get_extra_info("sockname") or ("", 0)
        self.client_ip = str(peer[0])
        self.local_ip = str(local[0])
        self.opened = time.time()
        self.bytes_in = 0
        self.busy = False
        self.closed = False
        self.mailbox_id: int | None = None
        self.session: Pop3Session | None = None
        self.listed = (0, 0)
        self.deleted = 0

    # Read by the console and by shutdown.
    @property
    def account(self) -> str:
        return self.session.address if self.session else ""

    @property
    def state(self) -> str:
        return self.session.state if self.session else "connect"

    @property
    def transport(self) -> asyncio.BaseTransport | None:
        return None if self.closed else self.writer.transport

    def emit(self, text: str, kind: str = "", level: int = logging.INFO, **data: Any) -> None:
        self.context.bus.emit(SERVICE, self.number, text, kind, level, **data)

    def _where(self) -> str:
        tls = ", TLS" if self.session and self.session.tls_active else ""
        return f"rip={self.client_ip}, lip={self.local_ip}{tls}"

    async def run(self) -> None:
        """Serve the connection until QUIT, a drop, a timeout or shutdown."""
        limiter = self.context.limiter
        refusal = R.SHUTTING_DOWN if self.context.stopping else (
            R.BUSY if limiter.acquire(self.client_ip) else "")
        if refusal:
            self.emit(f"refused connection from unknown[{self.client_ip}]: {refusal}",
                      "refused", logging.WARNING)
            await self._refuse(refusal)
            return
        self.context.sessions[self.number] = self
        reason = "Connection closed"
        try:
            reason = await self._serve()
        except Exception as exc:  # our fault: log it, keep serving others
            log.exception("POP3 session failed",
                          extra={"service": SERVICE, "session": self.number})
            reason = f"Internal error ({type(exc).__name__})"
        finally:
            self.context.sessions.pop(self.number, None)
            limiter.release(self.client_ip)
            if self.mailbox_id is not None:
                self.pop3.open_mailboxes.discard(self.mailbox_id)
            self._log_disconnect(reason)
            await self._close()

    async def _refuse(self, reply: str) -> None:
        self.writer.write(reply.encode() + b"\r\n")
        await self._close()

    async def _serve(self) -> str:
        tls = self.context.tls
        # On a POP3S listener the event loop has finished the handshake already.
        self.session = Pop3Session(
            self.pop3.timestamp(), tls_available=tls is not None and not self.implicit_tls,
            tls_active=self.implicit_tls,
            allow_plaintext=self.context.settings.auth.allow_plaintext,
            expire_days=self.pop3.expire_days(), new_challenge=self.pop3.timestamp,
        )
        self.emit(f"connect from unknown[{self.client_ip}]", "connect", protocol="pop3",
                  client=self.client_ip)
        self.writer.write(self.session.greeting())
        try:
            return await self._loop()
        except (ConnectionError, asyncio.IncompleteReadError):
            return "Connection closed"
        except TimeoutError:
            self._write_quietly(R.IDLE_TIMEOUT)
            return "Disconnected for inactivity"

    async def _loop(self) -> str:
        session = self.session
        while True:
            line, too_long = await self._read_line()
            actions = session.line_too_long() if too_long else session.receive(line)
            closed = await self._perform(actions)
            if closed is not None:
                return closed

    async def _read_line(self) -> tuple[bytes, bool]:
        too_long = False
        async with asyncio.timeout(IDLE_TIMEOUT):
            while True:
                try:
                    line = await self.reader.readuntil(b"\n")
                except asyncio.LimitOverrunError as exc:
                    await self.reader.readexactly(exc.consumed)
                    too_long = True
                    continue
                self.bytes_in += len(line)
                return line, too_long

    async def _perform(self, actions: list[Action]) -> str | None:
        """Carry out actions in order; return the log reason when the connection must close."""
        queue = list(actions)
        while queue:
            action = queue.pop(0)
            if isinstance(action, Send):
                self.writer.write(action.data)
                if self.writer.transport.get_write_buffer_size() > 1 << 18:
                    await self.writer.drain()
                continue
            if isinstance(action, Close):
                await self.writer.drain()
                return self._close_reason(action.reason)
            self.busy = True
            try:
                queue[0:0] = await self._request(action)
            finally:
                self.busy = False
            if isinstance(action, StartTLS) and self.closed:
                return "TLS handshake failed"
        return None

    async def _request(self, action: Action) -> list[Action]:
        session = self.session
        if isinstance(action, StartTLS):
            await self.writer.drain()
            # Commands pipelined after STLS were sent in the clear: drop them (RFC 2595 section 4).
            self.reader._buffer.clear()  # noqa: SLF001 - StreamReader has no public way
            if not await self._handshake():
                self.closed = True
                return []
            return session.tls_started()
        if isinstance(action, Login):
            return session.login_result(await self._login(action))
        if isinstance(action, Load):
            try:
                found = await self.context.db.read(store.load_messages, action.entry_ids)
            except Exception as exc:
                self.emit(f"reading messages of <{session.address}> failed: {exc}",
                          "error", logging.ERROR)
                found = {}
            return session.loaded(found)
        if isinstance(action, Update):
            return session.updated(await self._update(action))
        raise TypeError(f"unknown action {action!r}")

    async def _handshake(self) -> bool:
        try:
            await asyncio.wait_for(self.writer.start_tls(self.context.tls), HANDSHAKE_TIMEOUT)
        except (OSError, asyncio.TimeoutError, ConnectionError) as exc:
            self.emit(f"TLS handshake with unknown[{self.client_ip}] failed: {exc}", "tls-failed")
            return False
        return True

    def _close_reason(self, reason: str) -> str:
        return {"logout": "Logged out", "too many errors": "Too many errors",
                "too many failed logins": "Too many failed logins"}.get(reason, reason)

    # -- login ------------------------------------------------------------------------

    async def _login(self, login: Login) -> LoginOutcome:
        user = _shown_user(login.user)
        method = "PLAIN" if login.method == "USER" else login.method
        context = self.context
        if context.logins.locked(self.client_ip):
            self.emit(f"Login refused: user=<{user}>, method={method}, {self._where()}, "
                      "reason=too many failed logins from this address", "auth-failed",
                      logging.WARNING)
            return LoginOutcome(R.LOCKED_OUT)
        try:
            record = await context.db.read(store.find_login, login.user)
        except UnicodeEncodeError:  # bytes that are not UTF-8: no mailbox has this name
            record = None
        except Exception as exc:
            self.emit(f"looking up user=<{user}> failed: {exc}", "error", logging.ERROR)
            return LoginOutcome(R.TEMP_FAILURE)
        reason = await check_login(login, record)
        if reason:
            await record_failure(context, self.client_ip)
            self.emit(f"Authentication failed: user=<{user}>, method={method}, "
                      f"{self._where()}, reason={reason}", "auth-failed", logging.WARNING)
            return LoginOutcome(R.AUTH_FAILED)
        context.logins.succeeded(self.client_ip)
        return await self._open(record, method)

    async def _open(self, record: LoginRecord, method: str) -> LoginOutcome:
        if record.mailbox_id in self.pop3.open_mailboxes:
            self.emit(f"Login refused: user=<{record.address}>, method={method}, "
                      f"{self._where()}, reason=mailbox in use", "in-use")
            return LoginOutcome(R.IN_USE)
        self.pop3.open_mailboxes.add(record.mailbox_id)
        self.mailbox_id = record.mailbox_id
        cutoff = time.time() - record.retention_days * DAY if record.retention_days else 0.0
        try:
            listing = await self.context.db.read(store.listing, record.mailbox_id, cutoff)
        except Exception as exc:
            self.pop3.open_mailboxes.discard(record.mailbox_id)
            self.mailbox_id = None
            self.emit(f"listing <{record.address}> failed: {exc}", "error", logging.ERROR)
            return LoginOutcome(R.TEMP_FAILURE)
        self.listed = (len(listing), sum(listing.sizes))
        self.emit(f"Login: user=<{record.address}>, method={method}, {self._where()}", "login",
                  account=record.address, method=method)
        return LoginOutcome(address=record.address, listing=listing,
                            uid_validity=record.uid_validity, expire_days=record.retention_days)

    # -- update -----------------------------------------------------------------------

    async def _update(self, update: Update) -> bool:
        session = self.session
        try:
            count, size = await self.context.db.write(store.delete_entries, self.mailbox_id,
                                                      update.entry_ids)
        except Exception as exc:
            self.emit(f"deleting {len(update.entry_ids)} message(s) of "
                      f"<{session.address}> failed: {exc}", "error", logging.ERROR)
            return False
        self.deleted = count
        self.emit(f"Deleted: user=<{session.address}>, {count} message(s), {size} bytes", "dele",
                  account=session.address, count=count)
        return True

    # -- closing ------------------------------------------------------------------------

    def _log_disconnect(self, reason: str) -> None:
        session = self.session
        if session is None or session.state == "authorization" or not session.address:
            self.emit(f"Disconnected: {reason} (no login): {self._where()}", "disconnect")
            return
        stats = session.stats
        self.emit(
            f"Disconnected: {reason} user=<{session.address}> "
            f"top={stats['top']}/{stats['top_bytes']}, "
            f"retr={stats['retr']}/{stats['retr_bytes']}, "
            f"del={self.deleted}/{self.listed[0]}, size={self.listed[1]}", "disconnect",
            account=session.address,
        )

    def _write_quietly(self, reply: str) -> None:
        if not self.closed and not self.writer.is_closing():
            self.writer.write(reply.encode() + b"\r\n")

    async def _close(self) -> None:
        self.closed = True
        try:
            self.writer.close()
            await asyncio.wait_for(self.writer.wait_closed(), 5)
        except (OSError, ConnectionError, asyncio.TimeoutError):
            pass

    async def close_idle(self) -> bool:
        """Say goodbye and close when between commands (at shutdown); return whether it closed.

        Messages marked with DELE stay: only QUIT deletes.
        """
        if self.busy or self.closed:
            return False
        self._write_quietly(R.SHUTTING_DOWN)
        self.writer.transport.close()
        return True


# -- what the listeners share ------------------------------------------------------------------


class Pop3Service:
    """The POP3 and POP3S listeners' shared state and background work.

    Args:
        context: the running server's shared state.
    """

    def __init__(self, context: Context):
        self.context = context
        self.open_mailboxes: set[int] = set()
        """Mailboxes with a session in TRANSACTION. One process serves the store, so
        a set in memory is the lock; several hosts on one database would need a
        lock row instead."""
        self._last_stamp = 0

    def timestamp(self) -> str:
        """Return a new APOP timestamp ``<pid.nanotime@hostname>``, unique in this process."""
        stamp = max(time.time_ns(), self._last_stamp + 1)
        self._last_stamp = stamp
        return f"<{os.getpid()}.{stamp}@{self.context.settings.hostname}>"

    def expire_days(self) -> int:
        """The shortest retention of any ``pop3`` domain (30 days when there is none)."""
        days = [r.retention_days for r in self.context.routes.routes.values() if r.mode == "pop3"]
        return min(days) if days else 30

    def factory(self, implicit_tls: bool) -> Callable[[], asyncio.Protocol]:
        """Return a protocol factory for ``loop.create_server``.

        Args:
            implicit_tls: for a POP3S listener, which the caller creates with
                ``ssl=`` so that the handshake runs before the first byte
                reaches the protocol.
        """
        loop = asyncio.get_running_loop()

        def connected(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> Any:
            return Pop3Connection(self, reader, writer, implicit_tls).run()

        def make() -> asyncio.Protocol:
            reader = asyncio.StreamReader(limit=MAX_LINE, loop=loop)
            return asyncio.StreamReaderProtocol(reader, connected, loop=loop)

        return make

    async def sweep(self) -> None:
        """File held mail into mailboxes and expire old mail, now and every
        :data:`SWEEP_INTERVAL`."""
        while True:
            try:
                await self.sweep_once()
            except Exception:
                log.exception("the POP3 mailbox sweep failed",
                              extra={"service": SERVICE, "session": 0})
            await asyncio.sleep(SWEEP_INTERVAL)

    async def sweep_once(self) -> None:
        """File held mail and expire old mail once."""
        db, bus = self.context.db, self.context.bus
        if not any(r.mode == "pop3" for r in self.context.routes.routes.values()):
            return  # spares an idle server a commit every minute
        for qid, address, mailbox in await db.write(store.file_held):
            bus.emit("local", 0, f"{qid}: to=<{address}>, relay=mailbox, dsn=2.0.0, status=sent "
                                 f"(delivered to mailbox {mailbox})", "sent", queue_id=qid)
        now = time.time()
        for route in list(self.context.routes.routes.values()):
            if route.mode != "pop3":
                continue
            cutoff = now - route.retention_days * DAY
            busy = frozenset(self.open_mailboxes)
            gone = await db.write(store.expire, route.domain, cutoff, busy)
            for address, count in gone:
                bus.emit(SERVICE, 0, f"Expired: user=<{address}>, {count} message(s) older than "
                                     f"{route.retention_days} days", "expired", account=address)


# -- delivery into mailboxes (called by the SMTP server at RCPT) ---------------------------------


async def mailbox_recipient(context: Context, local: str,
                            route: Route) -> tuple[str, tuple | None]:
    """Route an RCPT for a domain in mode ``pop3``.

    Returns:
        The reply and, when accepted, the recipient as the SMTP session keeps
        it: ``(address, domain, "pop3", mailbox id)``, or ``(address, domain,
        "held")`` for a postmaster with no mailbox to take it, which waits in
        the queue until one exists.
    """
    address = f"{local}@{route.domain}"
    try:
        target = await context.db.read(store.find_target, local, route.domain)
    except Exception:
        log.exception("mailbox lookup failed", extra={"service": "smtpd", "session": 0})
        return R.SMTP_LOOKUP_FAILED.format(address=address), None
    postmaster = local.lower() == "postmaster"  # always accepted, RFC 5321 section 4.5.1
    if target is None:
        if postmaster:
            return "250 2.1.5 Recipient OK", (address, route.domain, "held")
        return R.SMTP_UNKNOWN_USER.format(address=address), None
    if target.full and not postmaster:
        return R.SMTP_MAILBOX_FULL.format(address=address), None
    return "250 2.1.5 Recipient OK", (address, route.domain, "pop3", target.mailbox_id)


def log_mailbox_deliveries(context: Context, session: int, queue_id: str,
                           mailboxes: list[tuple[int, str]], delay: float) -> None:
    """Log one line per mailbox copy, in the shape pflogsumm counts as delivered."""
    for _mailbox_id, address in dict.fromkeys(mailboxes):
        context.bus.emit("local", session,
                         f"{queue_id}: to=<{address}>, relay=mailbox, "
                         f"delay={format_seconds(delay)}, dsn=2.0.0, "
                         "status=sent (delivered to mailbox)", "sent",
                         queue_id=queue_id, domain=address.rpartition("@")[2])
