"""The SMTP client that delivers queued mail over a connected stream.

Push delivery and ETRN-triggered delivery open the stream themselves; ODMR
hands over the customer's own connection after the roles are reversed. The
client does not care which: it reads the greeting, says EHLO, upgrades to TLS
when offered and asked to, and sends messages with per-recipient results.
"""

from __future__ import annotations

import asyncio
import re
import ssl
from dataclasses import dataclass, field

_ENHANCED = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})\b")
MAX_REPLY_LINES = 100


class SMTPClientError(Exception):
    """The session failed: the connection dropped, timed out or the peer spoke nonsense.

    Attributes:
        reply: a one-line reason for logs and the queue's last error.
        code: the reply code that ended the session, or 0 for a network failure.
    """

    def __init__(self, reply: str, code: int = 0):
        super().__init__(reply)
        self.reply = reply
        self.code = code


@dataclass
class Reply:
    """One SMTP reply: its code and text lines."""

    code: int
    lines: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        """The reply on one line, as logs show it: ``250 2.0.0 Ok``."""
        return f"{self.code} " + " ".join(self.lines).strip()

    @property
    def enhanced(self) -> str:
        """The enhanced status code (RFC 3463), or one derived from the reply code."""
        first = self.lines[0] if self.lines else ""
        match = _ENHANCED.match(first)
        if match and match.group(1) == str(self.code)[0]:
            return match.group(0)
        return f"{str(self.code)[0]}.0.0"

    @property
    def ok(self) -> bool:
        """A positive completion (2xx): the only reply that accepts MAIL, RCPT or a message."""
        return 200 <= self.code < 300

    @property
    def temporary(self) -> bool:
        return 400 <= self.code < 500


def stuff(data: bytes) -> bytes:
    """Prepare message content for DATA: CRLF at the end, a dot before each line
    that starts with one, and the final ``.`` line (RFC 5321 section 4.5.2)."""
    if data and not data.endswith(b"\r\n"):
        data += b"\r\n"
    data = data.replace(b"\r\n.", b"\r\n..")
    if data.startswith(b"."):
        data = b"." + data
    return data + b".\r\n"


@dataclass
class SendResult:
    """What the server said to one message.

    Attributes:
        recipients: the reply to each recipient's RCPT, or, for recipients it
            accepted, the reply to DATA.
    """

    recipients: dict[str, Reply]


class SMTPClient:
    """An SMTP client session over an already connected stream.

    Args:
        reader: the stream to read replies from.
        writer: the stream to write commands to.
        timeout: seconds to wait for each reply.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 timeout: float = 300.0):
        self.reader = reader
        self.writer = writer
        self.timeout = timeout
        self.extensions: dict[str, str] = {}
        self.peer_name = ""
        self.tls = False
        self.messages_sent = 0

    async def read_reply(self) -> Reply:
        """Read one possibly multi-line reply.

        Raises:
            SMTPClientError: the connection closed or timed out, or a line is not a reply.
        """
        lines: list[str] = []
        code = 0
        while True:
            try:
                raw = await asyncio.wait_for(self.reader.readline(), self.timeout)
            except asyncio.TimeoutError:
                raise SMTPClientError("timed out waiting for the server's reply") from None
            except (OSError, asyncio.LimitOverrunError, ValueError) as exc:  # ssl.SSLError too
                raise SMTPClientError(f"lost connection: {exc}") from None
            if not raw:
                raise SMTPClientError("lost connection while waiting for a reply")
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            digits = line[:3]
            if (len(line) < 3 or not (digits.isascii() and digits.isdigit())
                    or (len(line) > 3 and line[3] not in " -")):
                raise SMTPClientError(f"invalid reply line {line[:80]!r}")
            if code and int(line[:3]) != code:
                raise SMTPClientError("reply code changed within a multi-line reply")
            code = int(line[:3])
            lines.append(line[4:])
            if len(line) == 3 or line[3] == " ":
                return Reply(code, lines)
            if len(lines) > MAX_REPLY_LINES:
                raise SMTPClientError("reply longer than 100 lines")

    async def command(self, line: str) -> Reply:
        """Send one command line and read its reply."""
        await self._write(line.encode("utf-8", "surrogateescape") + b"\r\n")
        return await self.read_reply()

    async def _write(self, data: bytes) -> None:
        try:
            self.writer.write(data)
            await asyncio.wait_for(self.writer.drain(), self.timeout)
        except asyncio.TimeoutError:
            raise SMTPClientError("timed out sending to the server") from None
        except (OSError, RuntimeError) as exc:  # ssl.SSLError is an OSError
            raise SMTPClientError(f"lost connection: {exc}") from None

    async def greeting(self) -> Reply:
        """Read the 220 greeting.

        Raises:
            SMTPClientError: the server did not greet with 220.
        """
        reply = await self.read_reply()
        if reply.code != 220:
            raise SMTPClientError(f"greeting: {reply.text}", reply.code)
        self.peer_name = (reply.lines[0].split() or [""])[0]
        return reply

    async def hello(self, name: str) -> None:
        """Say EHLO, falling back to HELO, and record the server's extensions."""
        reply = await self.command(f"EHLO {name}")
        if reply.code == 250:
            self.extensions = {}
            for line in reply.lines[1:]:
                keyword, _, value = line.partition(" ")
                self.extensions[keyword.upper()] = value
            return
        reply = await self.command(f"HELO {name}")
        if reply.code != 250:
            raise SMTPClientError(f"HELO: {reply.text}", reply.code)
        self.extensions = {}

    async def starttls(self, context: ssl.SSLContext, server_hostname: str | None) -> bool:
        """Upgrade to TLS when the server offers it; return whether the session is now encrypted.

        Raises:
            SMTPClientError: the handshake failed after the server agreed.
        """
        if self.tls or "STARTTLS" not in self.extensions:
            return self.tls
        reply = await self.command("STARTTLS")
        if reply.code != 220:
            return False
        try:
            await asyncio.wait_for(
                self.writer.start_tls(context, server_hostname=server_hostname or None),
                self.timeout,
            )
        except (ssl.SSLError, ConnectionError, asyncio.TimeoutError, OSError) as exc:
            raise SMTPClientError(f"TLS handshake failed: {exc}") from None
        self.tls = True
        return True

    async def send(self, sender: str, recipients: list[str], data: bytes,
                   body_8bit: bool = False, smtputf8: bool = False) -> SendResult:
        """Send one message and return each recipient's result.

        Raises:
            SMTPClientError: the connection failed; no recipient may be taken as delivered.
        """
        options = ""
        if "SIZE" in self.extensions:
            options += f" SIZE={len(data)}"
        if body_8bit and "8BITMIME" in self.extensions:
            options += " BODY=8BITMIME"
        if smtputf8 and "SMTPUTF8" in self.extensions:
            options += " SMTPUTF8"
        commands = [f"MAIL FROM:<{sender}>{options}"] + [f"RCPT TO:<{r}>" for r in recipients]
        if "PIPELINING" in self.extensions:
            results = await self._envelope_pipelined(commands)
        else:
            results = await self._envelope_sequential(commands)
        mail_reply, rcpt_replies, data_reply = results
        outcome: dict[str, Reply] = {}
        if not mail_reply.ok:
            for rcpt in recipients:
                outcome[rcpt] = mail_reply
            await self._reset()
            return SendResult(outcome)
        accepted = []
        for rcpt, reply in zip(recipients, rcpt_replies):
            outcome[rcpt] = reply
            if reply.ok:
                accepted.append(rcpt)
        if data_reply is None or data_reply.code != 354:
            if data_reply is not None and data_reply.code < 400:
                # Only 354 opens the message (RFC 5321 section 4.3.2), so any other positive
                # reply must not count as delivery: nothing was sent.
                data_reply = Reply(451, [f"4.5.0 unexpected reply to DATA: {data_reply.text}"])
            if accepted:  # DATA refused although recipients were accepted
                for rcpt in accepted:
                    outcome[rcpt] = data_reply or Reply(451, ["4.0.0 DATA not accepted"])
            await self._reset()
            return SendResult(outcome)
        await self._write(stuff(data))
        final = await self.read_reply()
        if not accepted:
            await self._reset()
        for rcpt in accepted:
            outcome[rcpt] = final
        self.messages_sent += 1
        return SendResult(outcome)

    async def _envelope_pipelined(self, commands: list[str]) -> tuple[Reply, list[Reply], Reply | None]:
        # RFC 2920: MAIL, every RCPT and DATA go out together; replies come back in order.
        batch = "".join(f"{c}\r\n" for c in commands + ["DATA"])
        await self._write(batch.encode("utf-8", "surrogateescape"))
        mail_reply = await self.read_reply()
        rcpt_replies = [await self.read_reply() for _ in commands[1:]]
        data_reply = await self.read_reply()
        if data_reply.code == 354 and (not mail_reply.ok or not any(r.ok for r in rcpt_replies)):
            # The server opened DATA with nobody to deliver to: close it empty.
            await self._write(b".\r\n")
            await self.read_reply()
            data_reply = Reply(554, ["5.5.1 no valid recipients"])
        return mail_reply, rcpt_replies, data_reply

    async def _envelope_sequential(self, commands: list[str]) -> tuple[Reply, list[Reply], Reply | None]:
        mail_reply = await self.command(commands[0])
        if not mail_reply.ok:
            return mail_reply, [], None
        rcpt_replies = [await self.command(c) for c in commands[1:]]
        if not any(r.ok for r in rcpt_replies):
            return mail_reply, rcpt_replies, None
        return mail_reply, rcpt_replies, await self.command("DATA")

    async def _reset(self) -> None:
        reply = await self.command("RSET")
        if not reply.ok:
            raise SMTPClientError(f"RSET: {reply.text}", reply.code)

    async def quit(self) -> None:
        """Say QUIT and close the stream; errors on the way out are ignored."""
        try:
            await asyncio.wait_for(self.command("QUIT"), 10)
        except (SMTPClientError, asyncio.TimeoutError):
            pass
        self.close()

    def close(self) -> None:
        try:
            self.writer.close()
        except (ConnectionError, RuntimeError):
            pass
