"""The SMTP listener: aiosmtpd's session loop with Mailkeep's commands.

aiosmtpd reads command lines, dispatches ``smtp_VERB`` methods and runs the
STARTTLS handshake; it also throws away anything a client pipelined after
STARTTLS before the handshake (RFC 3207 section 4). The methods here replace
its HELO, EHLO, MAIL, RCPT, DATA, RSET, NOOP, VRFY and QUIT so that every
reply carries an enhanced status code, recipients are checked against the
hosted domains, and the 250 after DATA is sent only once the message is
committed to disk.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import logging
import functools
import re
import time
import traceback
from email.utils import formatdate
from typing import Any

from aiosmtpd.smtp import SMTP, TLSSetupException, syntax

from ..events import next_session
from ..store.queue import NewMessage, enqueue, new_queue_id
from . import replies as R
from . import etrn
from .address import ParameterError, PathError, parse_path, relay_trick, unquote_local
from .auth import Login, check_cram, check_password, cram_challenge, decode_base64_text
from .auth import decode_plain, record_failure
from .context import Context
from .pop3 import log_mailbox_deliveries, mailbox_recipient
from .tls import describe

log = logging.getLogger("mailkeep.smtpd")

_RECEIVED = re.compile(rb"^received:", re.IGNORECASE | re.MULTILINE)
_MESSAGE_ID = re.compile(rb"^message-id:[ \t]*(.*?)\r\n", re.IGNORECASE | re.MULTILINE)
_LINE_ENDS = re.compile(rb"\r\n|\r|\n")
_SIZE_VALUE = re.compile(r"[0-9]{1,20}")  # RFC 1870: 1*20DIGIT, ASCII digits only
MAX_BAD_COMMANDS = 20

# aiosmtpd's own replies, given enhanced status codes.
_REWRITES = (
    (b"500 Error: bad syntax", b"500 5.5.2 Syntax error"),
    (b"500 Error: command", R.UNKNOWN_COMMAND.encode()),
    (b"500 Command line too long", R.LINE_TOO_LONG.encode()),
    (b"500 Error: strict ASCII mode", b"500 5.5.2 Non-ASCII command"),
    (b"502 5.5.1 Too many unrecognized", b"421 4.7.0 Too many unrecognized commands, closing"),
    (b"502 EXPN not implemented", b"502 5.5.1 EXPN not implemented"),
    (b"250 Supported commands:", b"214 2.0.0 Commands:"),
    (b"501 Supported commands:", b"501 5.5.4 Unknown command; commands:"),
    (b"250 Syntax:", b"214 2.0.0 Syntax:"),
    (b"501 Syntax: STARTTLS", b"501 5.5.4 Syntax: STARTTLS takes no arguments"),
    (b"454 TLS not available", R.TLS_NOT_AVAILABLE.encode()),
    (b"220 Ready to start TLS", R.TLS_READY.encode()),
    (b"554 Command refused due to lack of security", b"554 5.7.0 TLS handshake failed"),
    (b"500 Error: command \"AUTH\"", R.UNKNOWN_COMMAND.encode()),
)


class _Handler:
    """The aiosmtpd handler: only its exception hook is used."""

    def __init__(self, context: Context):
        self.context = context

    async def handle_exception(self, error: Exception) -> str:
        if isinstance(error, TLSSetupException):
            log.info("TLS handshake failed: %s", type(error.__cause__ or error).__name__)
            return R.TLS_FAILED
        # Only the exception's type and the frames go to the log: its message can carry what
        # the client sent, a password included.
        frames = "".join(traceback.format_tb(error.__traceback__))
        log.error("unexpected %s in an SMTP session\n%s", type(error).__name__, frames.rstrip())
        return R.LOCAL_ERROR


def normalize_line_ends(data: bytes) -> tuple[bytes, bool]:
    """Turn every bare CR and bare LF into CRLF.

    Returns:
        The data and whether anything was changed. A bare line end must not
        reach a customer server, where it could end the message early
        (SMTP smuggling).
    """
    crlf = data.count(b"\r\n")
    if data.count(b"\n") == crlf and data.count(b"\r") == crlf:
        return data, False
    return _LINE_ENDS.sub(b"\r\n", data), True


OFF_LOOP_SIZE = 1024 * 1024
"""Messages larger than this are normalized and scanned in a worker thread."""
MAX_HEADER_SCAN = 256 * 1024
"""Bytes at the start of a message searched for Received and Message-ID headers."""


def _prepare(data: bytes) -> tuple[bytes, bool, bytes, bool]:
    """Normalize line ends; return the data, whether it changed, its header section
    (at most MAX_HEADER_SCAN bytes) and whether it has 8-bit bytes."""
    data, changed = normalize_line_ends(data)
    end = data.find(b"\r\n\r\n", 0, MAX_HEADER_SCAN)
    head = data[:MAX_HEADER_SCAN] if end < 0 else data[: end + 2]
    return data, changed, head, not data.isascii()


def unstuff(data: bytes) -> bytes:
    """Remove the transparency dot from each line that starts with one (RFC 5321 4.5.2)."""
    if data.startswith(b"."):
        data = data[1:]
    return data.replace(b"\r\n.", b"\r\n")


def valid_helo(name: str | None) -> bool:
    """Check an EHLO or HELO argument: one word of printable characters, valid UTF-8.

    RFC 5321 expects a domain or an address literal, but many clients send
    less. What matters is that nothing in it can break the Received header
    or the log: control characters, bare CR, spaces or undecodable bytes.
    """
    if not name or len(name) > 255:
        return False
    try:
        name.encode()
    except UnicodeEncodeError:
        return False
    return all(char.isprintable() and not char.isspace() for char in name)


class SMTPSession(SMTP):
    """One SMTP connection.

    Args:
        context: the running server's shared state.
        service: ``smtpd`` for the MX listeners.
    """

    def __init__(self, context: Context, service: str = "smtpd"):
        settings = context.settings
        super().__init__(
            _Handler(context),
            data_size_limit=settings.limits.max_message_size,
            enable_SMTPUTF8=True,
            decode_data=False,
            hostname=settings.hostname,
            ident="ESMTP Mailkeep",
            tls_context=context.tls,
            timeout=settings.limits.command_timeout,
            auth_require_tls=True,
            loop=asyncio.get_running_loop(),
        )
        # aiosmtpd keeps these limits on the class; each session gets its own.
        self.command_size_limits = collections.defaultdict(lambda: 1024)
        self.context = context
        self.service = service
        self.number = 0
        self.client_ip = ""
        self.client_name = ""
        self.counted = False
        self.busy = False
        self.bare_line_ends = False
        self.stats: collections.Counter[str] = collections.Counter()
        self.failed: collections.Counter[str] = collections.Counter()
        self.bad_commands = 0
        self.opened = time.time()
        self.bytes_in = 0
        self.state = "connected"
        self.account = ""
        self.login: Login | None = None
        self._last_code = 0
        self._sender: str | None = None
        self._smtputf8 = False
        self._recipients: list[tuple[str, str, str]] = []
        self._wrap_methods()

    # -- connection and accounting --------------------------------------------------

    def _wrap_methods(self) -> None:
        for name, method in list(self._smtp_methods.items()):
            self._smtp_methods[name] = self._counted(name.lower(), method)

    def _counted(self, name: str, method: Any) -> Any:
        @functools.wraps(method)
        async def run(arg: str | None) -> None:
            self._last_code = 0
            await method(arg)
            self.stats[name] += 1
            if self._last_code >= 400:
                self.failed[name] += 1
        return run

    def emit(self, text: str, kind: str = "", level: int = logging.INFO, **data: Any) -> None:
        self.context.bus.emit(self.service, self.number, text, kind, level, **data)

    @property
    def client(self) -> str:
        return f"{self.client_name}[{self.client_ip}]"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.transport is not None:  # the TLS layer after STARTTLS
            # RFC 3207 section 4.2: forget everything learned before TLS, the login included.
            self.login = None
            self.account = ""
            self._sender = None
            self._recipients = []
            super().connection_made(transport)
            return
        peer = transport.get_extra_info("peername") or ("", 0)
        self.client_ip = str(peer[0])
        self.client_name = "unknown"
        self.number = next_session()
        refusal = None
        if self.context.stopping:
            refusal = R.SHUTTING_DOWN
        else:
            over = self.context.limiter.acquire(self.client_ip)
            if over == "total":
                refusal = R.GREETING_BUSY
            elif over == "client":
                refusal = R.GREETING_BUSY_CLIENT
        if refusal:
            self.emit(f"refused connection from {self.client}: {refusal[4:].format(host=self.hostname)}",
                      "refused",
                      logging.WARNING)
            transport.write(refusal.format(host=self.hostname).encode() + b"\r\n")
            transport.close()
            self.transport = None
            return
        self.counted = True
        self.context.sessions[self.number] = self
        self.emit(f"connect from {self.client}", "connect", protocol="smtp",
                  client=self.client_ip)
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        if not self.counted:
            return
        self._release()
        if self.session is not None and self._timeout_handle is not None:
            super().connection_lost(error)

    def _release(self) -> None:
        """Give back the session's connection slot and log its disconnect line, once."""
        if not self.counted:
            return
        self.counted = False
        self.context.limiter.release(self.client_ip)
        self.context.sessions.pop(self.number, None)
        parts = []
        total = ok_total = 0
        for name, count in self.stats.items():
            bad = self.failed[name]
            parts.append(f"{name}={count - bad}" if not bad else f"{name}={count - bad}/{count}")
            total += count
            ok_total += count - bad
        parts.append(f"commands={ok_total}" if ok_total == total else f"commands={ok_total}/{total}")
        if self.bare_line_ends:
            parts.append("notes=bare_lf")
        self.emit(f"disconnect from {self.client} {' '.join(parts)}", "disconnect")

    def _timeout_cb(self) -> None:
        handshaking = self._original_transport is not None and self.session.ssl is None
        if self._writer is not None and self.transport is not None and not handshaking:
            self.emit(f"timeout after {self.state.upper()} from {self.client}", "timeout")
            self._writer.write(R.TIMEOUT.format(host=self.hostname).encode() + b"\r\n")
        if handshaking:
            # A TLS layer whose handshake never finished does not report the loss of the
            # connection to us, so close the socket underneath and give the slot back here.
            self.emit(f"timeout during the TLS handshake from {self.client}", "timeout")
            self._original_transport.close()
            self._release()
            if self._handler_coroutine is not None:
                self._handler_coroutine.cancel()
            return
        super()._timeout_cb()

    async def push(self, status: str | bytes) -> None:
        data = status.encode() if isinstance(status, str) else status
        for prefix, replacement in _REWRITES:
            if data.startswith(prefix):
                if prefix in (b"500 Error: command", b"500 Error: bad syntax"):
                    self.bad_commands += 1
                data = replacement if not prefix.endswith(b":") else replacement + data[len(prefix):]
                break
        try:
            self._last_code = int(data[:3])
        except ValueError:
            pass
        await super().push(data)
        if self.bad_commands > MAX_BAD_COMMANDS and self.transport is not None:
            await super().push(R.TOO_MANY_ERRORS.format(host=self.hostname))
            self.transport.close()

    async def close_idle(self) -> bool:
        """Say goodbye and close if the session is between commands; return whether it closed."""
        if self.busy or self.transport is None:
            return False
        try:
            await super().push(R.SHUTTING_DOWN.format(host=self.hostname))
        except (ConnectionError, RuntimeError):
            pass
        if self.transport is not None:
            self.transport.close()
        return True

    # -- greeting ------------------------------------------------------------------

    @property
    def plaintext_allowed(self) -> bool:
        """Whether PLAIN and LOGIN may be used now: over TLS, or where the config allows it."""
        return bool(self._tls_protocol) or self.context.settings.auth.allow_plaintext

    def auth_mechanisms(self) -> list[str]:
        # CRAM-MD5 never sends the secret, so it is offered before TLS too (RFC 2645 needs it).
        return ["CRAM-MD5", "PLAIN", "LOGIN"] if self.plaintext_allowed else ["CRAM-MD5"]

    def ehlo_keywords(self) -> list[str]:
        """Return the EHLO keywords after the greeting line."""
        keywords = ["PIPELINING", f"SIZE {self.data_size_limit}", "ETRN", "ATRN"]
        if self.tls_context and not self._tls_protocol:
            keywords.append("STARTTLS")
        mechanisms = self.auth_mechanisms()
        if mechanisms:
            keywords.append("AUTH " + " ".join(mechanisms))
        keywords += ["ENHANCEDSTATUSCODES", "8BITMIME", "SMTPUTF8"]
        return keywords

    @syntax("EHLO hostname")
    async def smtp_EHLO(self, hostname: str | None) -> None:
        if not valid_helo(hostname):
            await self.push(R.SYNTAX_HELO.format(verb="EHLO"))
            return
        self._reset_transaction()
        self.session.host_name = hostname
        self.session.extended_smtp = True
        self.state = "ehlo"
        lines = [self.hostname, *self.ehlo_keywords()]
        reply = "\r\n".join(f"250-{line}" for line in lines[:-1]) + f"\r\n250 {lines[-1]}"
        await self.push(reply)

    @syntax("HELO hostname")
    async def smtp_HELO(self, hostname: str | None) -> None:
        if not valid_helo(hostname):
            await self.push(R.SYNTAX_HELO.format(verb="HELO"))
            return
        self._reset_transaction()
        self.session.host_name = hostname
        self.session.extended_smtp = False
        self.state = "helo"
        await self.push(f"250 {self.hostname}")

    @syntax("STARTTLS", when="tls_context")
    async def smtp_STARTTLS(self, arg: str | None) -> None:
        if self._tls_protocol is not None:
            await self.push(R.TLS_ALREADY)
            return
        await super().smtp_STARTTLS(arg)

    @syntax("NOOP [ignored]")
    async def smtp_NOOP(self, arg: str | None) -> None:
        await self.push(R.OK)

    @syntax("RSET")
    async def smtp_RSET(self, arg: str | None) -> None:
        if arg:
            await self.push(R.NO_ARGS.format(verb="RSET"))
            return
        self._reset_transaction()
        await self.push(R.RESET_OK)

    @syntax("VRFY <address>")
    async def smtp_VRFY(self, arg: str | None) -> None:
        if not arg:
            await self.push(R.SYNTAX_VRFY)
            return
        await self.push(R.VRFY)

    @syntax("QUIT")
    async def smtp_QUIT(self, arg: str | None) -> None:
        if arg:
            await self.push(R.NO_ARGS.format(verb="QUIT"))
            return
        await self.push(R.BYE)
        self._handler_coroutine.cancel()
        self.transport.close()

    def _reset_transaction(self) -> None:
        self._sender = None
        self._recipients = []
        self._set_rset_state()

    # -- mail transaction -----------------------------------------------------------

    @syntax("MAIL FROM: <address>", extended=" [SP <mail-parameters>]")
    async def smtp_MAIL(self, arg: str | None) -> None:
        if not self.session.host_name:
            await self.push(R.NEED_HELO)
            return
        if self._sender is not None:
            await self.push(R.NESTED_MAIL)
            return
        if not arg or not arg[:5].upper() == "FROM:":
            await self.push(R.SYNTAX_MAIL)
            return
        try:
            path = parse_path(arg[5:], allow_null=True)
        except ParameterError as exc:
            await self.push(R.BAD_PARAMETER.format(reason=exc))
            return
        except PathError as exc:
            await self.push(R.BAD_SENDER.format(reason=exc))
            return
        if path.params and not self.session.extended_smtp:
            await self.push(R.SYNTAX_MAIL)
            return
        reply = self._check_mail_params(path.params)
        if reply is None and not path.address.isascii() and "SMTPUTF8" not in path.params:
            reply = R.NEED_SMTPUTF8
        if reply:
            await self.push(reply)
            return
        self._smtputf8 = "SMTPUTF8" in path.params
        self._sender = path.address
        self.state = "mail"
        await self.push(R.SENDER_OK)

    def _check_mail_params(self, params: dict[str, str | None]) -> str | None:
        for name, value in params.items():
            if name == "SIZE":
                if value is None or not _SIZE_VALUE.fullmatch(value):
                    return R.SIZE_BAD
                if int(value) > self.data_size_limit:
                    return R.SIZE_EXCEEDED.format(limit=self.data_size_limit)
            elif name == "BODY":
                if (value or "").upper() not in ("7BIT", "8BITMIME"):
                    return R.BAD_BODY
            elif name == "SMTPUTF8":
                if value is not None:
                    return R.SMTPUTF8_ARG
            else:
                return R.UNKNOWN_PARAM.format(name=name)
        return None

    @syntax("RCPT TO: <address>")
    async def smtp_RCPT(self, arg: str | None) -> None:
        if not self.session.host_name:
            await self.push(R.NEED_HELO)
            return
        if self._sender is None:
            await self.push(R.NEED_MAIL)
            return
        if not arg or not arg[:3].upper() == "TO:":
            await self.push(R.SYNTAX_RCPT)
            return
        try:
            path = parse_path(arg[3:], allow_bare_postmaster=True)
        except ParameterError as exc:
            await self.push(R.BAD_PARAMETER.format(reason=exc))
            return
        except PathError as exc:
            await self.push(R.BAD_RECIPIENT.format(reason=exc))
            return
        if not path.address.isascii() and not self._smtputf8:
            await self.push(R.NEED_SMTPUTF8)
            return
        if path.params:
            await self.push(R.UNKNOWN_PARAM.format(name=next(iter(path.params))))
            return
        if len(self._recipients) >= self.context.settings.limits.max_recipients:
            await self.push(R.TOO_MANY_RECIPIENTS)
            return
        reply, recipient = await self._route_recipient(path)
        if recipient is None:
            self.emit(
                f"NOQUEUE: reject: RCPT from {self.client}: {reply}; from=<{self._sender}> "
                f"to=<{path.address}> proto={'ESMTP' if self.session.extended_smtp else 'SMTP'} "
                f"helo=<{self.session.host_name}>", "reject",
            )
            await self.push(reply)
            return
        self._recipients.append(recipient)
        self.state = "rcpt"
        await self.push(R.RECIPIENT_OK)

    async def _route_recipient(self, path: Any) -> tuple[str, tuple[str, str, str] | None]:
        """Return the reply and, when accepted, (address, domain, state) for the queue."""
        if not path.domain:  # bare <postmaster>, RFC 5321 section 4.5.1
            postmaster = self.context.settings.postmaster
            if postmaster:
                domain = postmaster.rpartition("@")[2].lower()
                route = await self.context.routes.lookup(domain)
                state = "queued" if route is None or route.mode == "smtp" else "held"
                return R.RECIPIENT_OK, (postmaster, domain, state)
            return R.RECIPIENT_OK, ("postmaster", "", "held")
        trick = relay_trick(path)
        if trick:
            return R.RELAY_TRICK.format(address=path.address, reason=trick), None
        route = await self.context.routes.lookup(path.domain)
        if route is None:
            return R.RELAY_DENIED.format(address=path.address), None
        local = unquote_local(path.local).lower()
        if route.recipients and local not in route.recipients and local != "postmaster":
            return R.UNKNOWN_USER.format(address=path.address), None
        if route.mode == "pop3":
            return await mailbox_recipient(self.context, path.local, route)
        address = f"{path.local}@{route.domain}"
        state = "queued" if route.mode == "smtp" else "held"
        return R.RECIPIENT_OK, (address, route.domain, state)

    @syntax("DATA")
    async def smtp_DATA(self, arg: str | None) -> None:
        if not self.session.host_name:
            await self.push(R.NEED_HELO)
            return
        if self._sender is None:
            await self.push(R.NEED_MAIL)
            return
        if not self._recipients:
            await self.push(R.NEED_RCPT)
            return
        if arg:
            await self.push(R.NO_ARGS.format(verb="DATA"))
            return
        self.busy = True
        self.state = "data"
        try:
            await self.push(R.START_DATA)
            self._reset_timeout(self.context.settings.limits.data_timeout)
            data = await self._read_data()
            self._reset_timeout()
            if data is None:
                await self.push(R.SIZE_EXCEEDED.format(limit=self.data_size_limit))
            else:
                await self.push(await self._accept(data))
        finally:
            self.busy = False
            self._reset_transaction()
            self.state = "data-done"

    async def _read_data(self) -> bytes | None:
        """Read the message up to the final dot; return it unstuffed, or None when too large."""
        reader = self._reader
        limit = self.data_size_limit
        # The CRLF that ended the DATA line belongs to the end marker of an empty message.
        reader._buffer[0:0] = b"\r\n"
        saved = reader._limit
        # Room for dot-stuffing: a message of "." lines doubles on the wire.
        reader._limit = 2 * limit + 4096
        try:
            raw = await reader.readuntil(b"\r\n.\r\n")
        except asyncio.LimitOverrunError:
            await self._discard_data()
            return None
        finally:
            reader._limit = saved
        self.bytes_in += len(raw)
        content = unstuff(raw[2:-3])
        if len(content) > limit:
            return None
        return content

    async def _discard_data(self) -> None:
        """Read and drop message data up to the end marker, keeping what follows it."""
        reader = self._reader
        tail = b""
        while True:
            chunk = tail + bytes(reader._buffer)
            reader._buffer.clear()
            end = chunk.find(b"\r\n.\r\n")
            if end >= 0:
                reader._buffer[0:0] = chunk[end + 5:]
                return
            tail = chunk[-4:]
            more = await reader.read(65536)
            if not more:
                raise ConnectionResetError("connection closed during DATA")
            reader._buffer[0:0] = more

    def _received_header(self, queue_id: str) -> bytes:
        tls = describe(self.transport.get_extra_info("ssl_object")) if self._tls_protocol else ""
        proto = "ESMTP" if self.session.extended_smtp else "SMTP"
        if tls:
            proto += "S"
        lines = [f"Received: from {self.session.host_name} ({self.client_name} [{self.client_ip}])"]
        if tls:
            lines.append(f"\t(using {tls})")
        lines.append(f"\tby {self.hostname} (Mailkeep) with {proto} id {queue_id}")
        stamp = formatdate(localtime=True)
        if len(self._recipients) == 1:
            lines.append(f"\tfor <{self._recipients[0][0]}>; {stamp}")
        else:
            lines[-1] += ";"
            lines.append(f"\t{stamp}")
        return ("\r\n".join(lines) + "\r\n").encode("utf-8", "surrogateescape")

    async def _accept(self, data: bytes) -> str:
        if len(data) > OFF_LOOP_SIZE:  # tens of milliseconds per 10 MB: not on the loop
            data, changed, head, eight_bit = await asyncio.to_thread(_prepare, data)
        else:
            data, changed, head, eight_bit = _prepare(data)
        if changed:
            self.bare_line_ends = True
        if len(_RECEIVED.findall(head)) >= self.context.settings.limits.max_received_headers:
            self.emit(f"NOQUEUE: reject: DATA from {self.client}: {R.MAIL_LOOP}", "reject")
            return R.MAIL_LOOP
        queue_id = new_queue_id()
        stored = self._received_header(queue_id) + data
        message = NewMessage(
            queue_id=queue_id, sender=self._sender or "", data=stored,
            recipients=[r for r in self._recipients if r[2] != "pop3"], client=self.client,
            helo=self.session.host_name or "", body_8bit=eight_bit,
            mailboxes=[(r[3], r[0]) for r in self._recipients if r[2] == "pop3"],
        )
        try:
            await self.context.db.write(enqueue, message)
        except Exception as exc:
            self.emit(f"storing a message from {self.client} failed: {exc}", "error",
                      logging.ERROR)
            return R.STORE_FAILED
        self._log_queued(message, head)
        log_mailbox_deliveries(self.context, self.number, queue_id, message.mailboxes,
                               time.time() - message.arrived)
        if self.context.scheduler is not None:
            self.context.scheduler.wake()
        return R.QUEUED.format(queue_id=queue_id)

    def _log_queued(self, message: NewMessage, head: bytes) -> None:
        qid = message.queue_id
        self.emit(f"{qid}: client={self.client}", "client")
        match = _MESSAGE_ID.search(head)
        if match:
            self.emit(f"{qid}: message-id={match.group(1).decode('utf-8', 'replace')}", "message-id")
        self.context.bus.emit(
            "qmgr", self.number,
            f"{qid}: from=<{message.sender}>, size={len(message.data)}, "
            f"nrcpt={len(message.recipients) + len(message.mailboxes)} (queue active)",
            "queued", queue_id=qid, size=len(message.data),
            domains=sorted({r[1] for r in message.recipients}),
        )

    # -- ETRN (RFC 1985) -------------------------------------------------------------

    @syntax("ETRN domain | @domain | #queue | account;password")
    async def smtp_ETRN(self, arg: str | None) -> None:
        if not self.session.host_name:
            await self.push(etrn.NEED_HELO)
            return
        if self._sender is not None:
            await self.push(etrn.IN_TRANSACTION)
            return
        try:
            request = etrn.parse(arg)
        except etrn.ETRNSyntaxError:
            await self.push(etrn.SYNTAX_ARGS)
            return
        reply = await self._etrn(request)
        self.emit(f"ETRN {request.shown} from {self.client}"
                  f"{f' sasl_username={self.login.name}' if self.login else ''}: {reply}", "etrn")
        await self.push(reply)

    async def _etrn(self, request: etrn.Request) -> str:
        from .trigger import trigger

        if self.context.stopping:
            return etrn.UNABLE.format(node=request.node)
        login = self.login
        if request.form == "account":
            login = await self._etrn_login(request)
            if login is None:
                return self._etrn_refusal
            routes = [r for r in self.context.routes.routes.values()
                      if r.account_id == login.account_id and r.mode in ("etrn", "odmr")]
        else:
            routes = await self._etrn_routes(request)
            if not routes:
                return etrn.NOT_ALLOWED.format(node=request.node, reason=etrn.REASON_NOT_HOSTED)
        requester = self.client_ip if login else None
        count = 0
        started = False
        refusal = ""
        for route in routes:
            if login and route.account_id != login.account_id:
                refusal = refusal or etrn.REASON_NOT_OWNER
                continue
            if route.mode == "pop3":
                refusal = refusal or etrn.REASON_POP3
                continue
            try:
                count += await trigger(self.context, route, requester, self.number)
                started = True
            except LookupError:
                refusal = refusal or etrn.REASON_NO_HOST
            except Exception as exc:
                self.emit(f"ETRN {request.shown} failed: {exc}", "error", logging.ERROR)
                return etrn.UNABLE.format(node=request.node)
        if not started and refusal:
            return etrn.NOT_ALLOWED.format(node=request.node, reason=refusal)
        return etrn.count_reply(request.node, count)

    async def _etrn_routes(self, request: etrn.Request) -> list:
        routes = self.context.routes
        if request.form == "subdomains":
            await routes.lookup(request.node)
            return [r for name, r in sorted(routes.routes.items())
                    if name == request.node or name.endswith("." + request.node)]
        route = await routes.lookup(request.node)
        return [route] if route else []

    async def _etrn_login(self, request: etrn.Request) -> Login | None:
        locked = self.context.logins.locked(self.client_ip)
        if locked:
            self._etrn_refusal = etrn.NOT_ALLOWED.format(
                node=request.node, reason=etrn.REASON_LOCKED.format(wait=etrn.wait_text(locked)))
            return None
        login = await check_password(self.context, request.node, request.password)
        if login is None:
            await record_failure(self.context, self.client_ip)
            self._etrn_refusal = etrn.NOT_ALLOWED.format(node=request.node, reason=etrn.REASON_AUTH)
            return None
        self.context.logins.succeeded(self.client_ip)
        return login

    # -- AUTH (RFC 4954) ---------------------------------------------------------------

    async def _read_auth_line(self) -> str | None:
        try:
            raw = await asyncio.wait_for(self._reader.readline(), self.context.settings.limits.command_timeout)
        except (asyncio.TimeoutError, ConnectionError, asyncio.LimitOverrunError, ValueError):
            return None
        if not raw:
            return None
        return raw.decode("utf-8", "replace").rstrip("\r\n")

    async def _challenge(self, text: str) -> str | None:
        """Send a 334 challenge and return the client's response; None when it cancelled."""
        await self.push(f"334 {text}")
        line = await self._read_auth_line()
        if line is None or line == "*":
            return None
        return line

    @syntax("AUTH <mechanism>")
    async def smtp_AUTH(self, arg: str | None) -> None:
        if not self.session.host_name or not self.session.extended_smtp:
            await self.push(R.AUTH_NEED_EHLO)
            return
        if self.login is not None:
            await self.push(R.AUTH_ALREADY)
            return
        if self._sender is not None:
            await self.push(R.AUTH_IN_TRANSACTION)
            return
        mechanism, _, initial = (arg or "").partition(" ")
        mechanism = mechanism.upper()
        if mechanism not in ("CRAM-MD5", "PLAIN", "LOGIN"):
            await self.push(R.AUTH_UNKNOWN_MECHANISM)
            return
        if mechanism != "CRAM-MD5" and not self.plaintext_allowed:
            await self.push(R.AUTH_NEED_TLS)
            return
        locked = self.context.logins.locked(self.client_ip)
        if locked:
            await self.push(R.AUTH_LOCKED)
            return
        if mechanism == "CRAM-MD5":
            if initial.strip():
                await self.push(R.AUTH_NO_INITIAL)
                return
            login = await self._auth_cram()
            if login is False:
                return
        else:
            credentials = await self._auth_credentials(mechanism, initial.strip())
            if credentials is None:
                return
            login = await check_password(self.context, *credentials)
        if login is None:
            await record_failure(self.context, self.client_ip)
            self.emit(f"{self.client}: SASL {mechanism} authentication failed",
                      "auth-failed", logging.WARNING)
            await self.push(R.AUTH_FAILED)
            return
        self.context.logins.succeeded(self.client_ip)
        self.login = login
        self.account = login.name
        self.emit(f"client={self.client}, sasl_method={mechanism}, sasl_username={login.name}",
                  "auth", account=login.name)
        await self.push(R.AUTH_OK)

    async def _auth_cram(self) -> Login | None | bool:
        """Run the CRAM-MD5 exchange; False when the client cancelled or sent bad data."""
        challenge = cram_challenge(self.hostname)
        response = await self._challenge(base64.b64encode(challenge.encode()).decode())
        if response is None:
            await self.push(R.AUTH_CANCELLED)
            return False
        decoded = decode_base64_text(response)
        if decoded is None:
            await self.push(R.AUTH_BAD_ENCODING)
            return False
        return await check_cram(self.context, challenge, decoded)

    @syntax("ATRN [domain[,domain...]]")
    async def smtp_ATRN(self, arg: str | None) -> None:
        from .odmr import atrn  # odmr builds on this module

        await atrn(self, arg)

    async def _auth_credentials(self, mechanism: str, initial: str) -> tuple[str, str] | None:
        if mechanism == "PLAIN":
            response = initial if initial and initial != "=" else await self._challenge("")
            if response is None:
                await self.push(R.AUTH_CANCELLED)
                return None
            if decode_base64_text(response) is None:
                await self.push(R.AUTH_BAD_ENCODING)
                return None
            decoded = decode_plain(response)
            if decoded is None:
                await self.push(R.AUTH_BAD_PLAIN)
                return None
            authzid, authcid, password = decoded
            if authzid and authzid != authcid:
                # RFC 4616 section 2: acting for another identity is not allowed here, so the
                # login fails like a wrong password.
                return authcid, "\0not-a-password"
            return authcid, password
        if initial:
            name = decode_base64_text(initial)
        else:
            response = await self._challenge("VXNlcm5hbWU6")
            name = decode_base64_text(response) if response is not None else None
            if response is None:
                await self.push(R.AUTH_CANCELLED)
                return None
        if name is None:
            await self.push(R.AUTH_BAD_ENCODING)
            return None
        response = await self._challenge("UGFzc3dvcmQ6")
        if response is None:
            await self.push(R.AUTH_CANCELLED)
            return None
        password = decode_base64_text(response)
        if password is None:
            await self.push(R.AUTH_BAD_ENCODING)
            return None
        return name, password
