"""ODMR (RFC 2645): the customer connects, authenticates, sends ATRN,
and Mailkeep delivers the held mail back over the same connection.

One Mailkeep server with an ODMR listener runs for the whole module, with a
domain per test. fetchmail in ODMR mode relays the reversed session to an
aiosmtpd sink. The other tests use :class:`Customer`, a socket client that
plays the customer's SMTP server after the 250 to ATRN. It can reject a
recipient or drop the connection at a chosen moment.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import io
import json
import re
import shutil
import socket
import struct
import subprocess
import sys
import time
import uuid
from base64 import b64decode, b64encode
from dataclasses import dataclass, field
from typing import Iterator

import pytest

from helpers import LOOPBACK, Mailkeep, RawSMTP, Reply, Sink, send_message, wait_until
from mailkeep import cli
from mailkeep.server.delivery import LOAD_BATCH

pytestmark = pytest.mark.timeout(60)

CRAM_SECRET = "Cram-Secret-2645"
"""acme's CRAM-MD5 secret."""


def require(program: str, package: str) -> str:
    """Return the path of a test peer, or fail with the command that installs it."""
    path = shutil.which(program)
    if path is None:
        pytest.fail(f"{program} is not installed; install it with `apt-get install {package}`")
    return path


def admin(mailkeep: Mailkeep, *args: str, stdin: str = "") -> str:
    """Run a ``mailkeep`` admin command in this process and return its standard output.

    The fixture makes many accounts and domains, and a subprocess for each
    takes about half a second. The commands under test run as subprocesses.
    """
    saved = sys.stdin
    sys.stdin = io.StringIO(stdin)
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            status = cli.main(["--config", str(mailkeep.config_path), *args])
    finally:
        sys.stdin = saved
    assert status == 0, f"`mailkeep {' '.join(args)}` exited {status}: {err.getvalue()}"
    return out.getvalue()


# -- the module's server -------------------------------------------------------------------


@dataclass
class Site:
    """The running server, with its ODMR listener, and the customer's MTA."""

    mailkeep: Mailkeep
    odmr_port: int
    sink: Sink
    """The customer's MTA behind fetchmail, and the server of ``senders.test`` (mode smtp)."""

    @property
    def smtp_port(self) -> int:
        return self.mailkeep.smtp_port

    def queued_for(self, domain: str) -> list[dict]:
        """Return ``queue list --json`` for the messages with a recipient in ``domain``."""
        out = admin(self.mailkeep, "queue", "list", "--json", "--domain", domain)
        return [json.loads(line) for line in out.splitlines() if line.strip()]


ACME_DOMAINS = ("fetch.test", "mine.test", "empty.test", "drop.test", "inflight.test",
                "batch.test", "hangup.test", "partial.test", "reject.test", "tls.test",
                "busy.test", "smtpside.test")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    mailkeep = Mailkeep(tmp_path_factory.mktemp("odmr"),
                        auth={"failure_delay": 0.05, "max_failures": 20},
                        delivery={"reply_timeout": "10s"})
    site = Site(mailkeep, mailkeep.add_listener("odmr"), Sink())
    accounts = {"acme": CRAM_SECRET, "other": "Other-Secret-1", "multi": "Multi-Secret-2",
                "gen": ""}
    for name, secret in accounts.items():
        admin(mailkeep, "account", "add", name, "--password-stdin", stdin=f"{name}-Pw-4954\n")
        if secret:
            admin(mailkeep, "account", "secret", name, "--secret-stdin", stdin=secret + "\n")
    domains = [(name, "acme", "odmr") for name in ACME_DOMAINS] + [
        ("theirs.test", "other", "odmr"), ("m1.test", "multi", "odmr"),
        ("m2.test", "multi", "etrn"),
    ]
    for name, account, mode in domains:
        admin(mailkeep, "domain", "add", name, "--account", account, "--mode", mode)
    admin(mailkeep, "domain", "add", "senders.test", "--account", "other", "--mode", "smtp",
          "--host", LOOPBACK, "--port", str(site.sink.port))
    try:
        site.sink.start()
        mailkeep.start()
        yield site
    finally:
        mailkeep.stop()
        site.sink.stop()


# -- the customer's side -------------------------------------------------------------------


def token() -> str:
    return uuid.uuid4().hex[:16]


def hold(site: Site, recipients: list[str], mark: str, sender: str = "ann@sender.example",
         body: str = "held for ODMR\r\n") -> str:
    """Send one message into the held queue and return its queue id."""
    return send_message(site.smtp_port, sender, recipients, f"Subject: {mark}\r\n\r\n{body}")


@dataclass
class Delivered:
    """One message as the customer's server received it on the reversed connection."""

    mail: str
    """The MAIL command line."""
    sender: str
    recipients: list[str]
    stuffed: bytes
    """The DATA bytes up to the final dot, transparency dots included."""

    @property
    def content(self) -> bytes:
        return re.sub(rb"(?m)^\.", b"", self.stuffed)


@dataclass
class Drained:
    """What one reversed session carried."""

    messages: list[Delivered] = field(default_factory=list)
    quit: bool = False
    """Mailkeep ended with QUIT."""
    closed: bool = False
    """Mailkeep closed the connection after our 221."""

    def with_token(self, mark: str) -> list[Delivered]:
        return [m for m in self.messages if mark.encode() in m.stuffed]


class Customer:
    """The customer's server: opens an ODMR session, then plays SMTP server on it.

    Args:
        port: Mailkeep's ODMR or SMTP port on 127.0.0.1.
    """

    def __init__(self, port: int):
        self.raw = RawSMTP(port)

    def __enter__(self) -> "Customer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.raw.close()

    def command(self, line: str) -> Reply:
        return self.raw.command(line)

    def ehlo(self) -> Reply:
        return self.command("EHLO customer.example")

    def cram(self, account: str, secret: str) -> Reply:
        """Run AUTH CRAM-MD5 (RFC 2195) and return the final reply."""
        challenge = self.command("AUTH CRAM-MD5")
        assert challenge.code == 334, challenge.text
        digest = hmac.new(secret.encode(), b64decode(challenge.lines[0]), hashlib.md5)
        return self.command(b64encode(f"{account} {digest.hexdigest()}".encode()).decode())

    def login(self, account: str = "acme", secret: str = CRAM_SECRET) -> None:
        assert self.ehlo().code == 250
        reply = self.cram(account, secret)
        assert reply.code == 235, reply.text

    def atrn(self, domains: str = "") -> Reply:
        return self.command(f"ATRN {domains}".strip())

    # -- after the turnaround ---------------------------------------------------------------

    def _fill(self) -> None:
        chunk = self.raw.sock.recv(65536)
        if not chunk:
            raise ConnectionError("Mailkeep closed the connection")
        self.raw.buffer += chunk

    def _line(self) -> str:
        while b"\r\n" not in self.raw.buffer:
            self._fill()
        line, _, self.raw.buffer = self.raw.buffer.partition(b"\r\n")
        return line.decode("utf-8", "replace")

    def _data(self) -> bytes:
        # The data starts at a line start, so its end is the first CRLF "." CRLF.
        while (end := self.raw.buffer.find(b"\r\n.\r\n")) < 0:
            self._fill()
        stuffed, self.raw.buffer = self.raw.buffer[:end + 2], self.raw.buffer[end + 5:]
        return stuffed

    def _send(self, reply: str) -> None:
        self.raw.send(reply + "\r\n")

    def _closed_by_peer(self, timeout: float = 5.0) -> bool:
        self.raw.sock.settimeout(timeout)
        try:
            return self.raw.sock.recv(1) == b""
        except OSError:
            return False

    def serve(self, rcpt_replies: dict[str, str] | None = None, drop_after: int = 0,
              drop_in_data: int = 0) -> Drained:
        """Greet with 220 and take what Mailkeep sends, until QUIT or a chosen drop.

        Args:
            rcpt_replies: reply to RCPT per lower-case address instead of 250.
            drop_after: close the connection after the 250 to this message (1-based).
            drop_in_data: close the connection after reading this message's
                data, before replying to it.
        """
        replies = {k.lower(): v for k, v in (rcpt_replies or {}).items()}
        drained = Drained()
        self.raw.sock.settimeout(15)
        self._send("220 customer.example ESMTP ready")
        mail, sender, recipients = "", "", []
        while True:
            try:
                line = self._line()
            except ConnectionError:
                return drained
            verb, _, arg = line.partition(" ")
            verb = verb.upper()
            if verb == "EHLO":
                self._send("250-customer.example\r\n250-PIPELINING\r\n250-8BITMIME\r\n"
                           "250 SIZE 104857600")
            elif verb == "MAIL":
                mail, sender, recipients = line, re.search(r"<(.*?)>", arg).group(1), []
                self._send("250 2.1.0 OK")
            elif verb == "RCPT":
                address = re.search(r"<(.*?)>", arg).group(1)
                reply = replies.get(address.lower(), "250 2.1.5 OK")
                if reply.startswith("250"):
                    recipients.append(address)
                self._send(reply)
            elif verb == "DATA" and not recipients:
                self._send("554 5.5.1 No valid recipients")
            elif verb == "DATA":
                self._send("354 Go ahead")
                stuffed = self._data()
                if drop_in_data == len(drained.messages) + 1:
                    self.raw.close()
                    return drained
                drained.messages.append(Delivered(mail, sender, recipients, stuffed))
                self._send("250 2.0.0 Stored")
                if drop_after == len(drained.messages):
                    self.raw.close()
                    return drained
            elif verb in ("RSET", "NOOP"):
                self._send("250 2.0.0 OK")
            elif verb == "QUIT":
                drained.quit = True
                self._send("221 2.0.0 Bye")
                drained.closed = self._closed_by_peer()
                return drained
            else:
                self._send("502 5.5.1 Not implemented")


def drain(site: Site, domains: str, account: str = "acme", secret: str = CRAM_SECRET,
          **behaviour) -> Drained:
    """Log in on the ODMR port, send ATRN for ``domains`` and take the mail.

    A session whose customer has just hung up may still be recording its
    results, and ATRN for its domains gets 451 until it is done, so a 451 is
    retried for a few seconds.
    """
    deadline = time.monotonic() + 5
    while True:
        with Customer(site.odmr_port) as customer:
            customer.login(account, secret)
            reply = customer.atrn(domains)
            if reply.code == 451 and time.monotonic() < deadline:
                time.sleep(0.05)
                continue
            assert reply.code == 250, reply.text
            return customer.serve(**behaviour)


def wait_empty(site: Site, domain: str) -> None:
    """Wait until no message for ``domain`` is queued: results are committed after QUIT."""
    wait_until(lambda: site.queued_for(domain) == [],
               message=f"the queue to have no message for {domain}")


def auth_plain(name: str, password: str) -> str:
    return b64encode(f"\0{name}\0{password}".encode()).decode()


# -- fetchmail -----------------------------------------------------------------------------


def big_body(size: int) -> str:
    line = "0123456789 abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ 0123456789\r\n"
    return line * (size // len(line) + 1)


class TestFetchmail:
    @pytest.mark.timeout(90)
    def test_odmr_mode__drains_byte_for_byte(self, site, tmp_path):
        dots = ".leading dot\r\n..two dots\r\n.\r\nafter a lone dot\r\n. space\r\n"
        bodies = {token(): body for body in ("first\r\n", dots, big_body(10 * 1024 * 1024),
                                             "last\r\n")}
        sent = {}
        for mark, body in bodies.items():
            content = f"Subject: {mark}\r\n\r\n{body}".encode()
            sent[mark] = (hold(site, ["user@fetch.test"], mark, body=body), content)
        log_start = site.mailkeep.log_mark()
        rc = tmp_path / "fetchmailrc"
        rc.write_text(f"poll {LOOPBACK} proto ODMR service {site.odmr_port}\n"
                      f'  user "acme" password "{CRAM_SECRET}"\n'
                      f"  fetchdomains fetch.test\n"
                      f"  smtphost {LOOPBACK}/{site.sink.port}\n")
        rc.chmod(0o600)  # fetchmail refuses an rc file that others can read

        result = subprocess.run(
            [require("fetchmail", "fetchmail"), "-f", str(rc), "--nosyslog", "-N",
             "--pidfile", str(tmp_path / "fetchmail.pid")],
            capture_output=True, text=True, timeout=60,
            env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path),
                 "FETCHMAILHOME": str(tmp_path)})

        assert result.returncode == 0, result.stdout + result.stderr
        for key, (queue_id, content) in sent.items():
            [got] = site.sink.wait_for(1, lambda m: key.encode() in m.data[:4096])
            assert got.rcpt_tos == ["user@fetch.test"]
            assert got.data.endswith(content), f"{key}: content changed on the way"
            added = got.data[:len(got.data) - len(content)]
            assert re.fullmatch(rb"Received: from client\.example \(unknown \[127\.0\.0\.1\]\)\r\n"
                                rb"\tby mx\.mailkeep\.test \(Mailkeep\) with ESMTP id "
                                + queue_id.encode() + rb"\r\n\tfor <user@fetch\.test>; .+\r\n",
                                added), added
        wait_empty(site, "fetch.test")
        log = site.mailkeep.log_since(log_start)
        assert re.search(r"to=<user@fetch\.test>, relay=odmr:acme\[127\.0\.0\.1\], .*status=sent",
                         log)
        assert CRAM_SECRET not in log


# -- logging in ----------------------------------------------------------------------------


class TestAuth:
    def test_ehlo__offers_atrn_and_cram_md5(self, site):
        with Customer(site.odmr_port) as customer:
            reply = customer.ehlo()
        assert reply.code == 250
        assert "ATRN" in reply.lines
        assert "AUTH CRAM-MD5" in reply.lines, "PLAIN and LOGIN only after STARTTLS"

    def test_wrong_secret__535_and_warning(self, site):
        log_start = site.mailkeep.log_mark()
        with Customer(site.odmr_port) as customer:
            customer.ehlo()
            assert customer.cram("acme", "not-the-secret").code == 535
            assert customer.cram("nobody", CRAM_SECRET).code == 535

        site.mailkeep.wait_for_log(r"mailkeep/odmrd\[\d+\]: warning: unknown\[127\.0\.0\.1\]: "
                                   r"SASL CRAM-MD5 authentication failed$",
                                   since=log_start)
        assert "not-the-secret" not in site.mailkeep.log_since(log_start)

    def test_atrn_before_auth__530(self, site):
        with Customer(site.odmr_port) as customer:
            customer.ehlo()
            assert customer.atrn("mine.test").code == 530

    def test_auth_plain_before_starttls__538(self, site):
        with Customer(site.odmr_port) as customer:
            customer.ehlo()
            reply = customer.command("AUTH PLAIN " + auth_plain("acme", "acme-Pw-4954"))
        assert reply.code == 538

    def test_starttls_then_auth_plain__atrn_delivers(self, site):
        mark = token()
        hold(site, ["user@tls.test"], mark)

        with Customer(site.odmr_port) as customer:
            customer.ehlo()
            assert customer.command("STARTTLS").code == 220
            customer.raw.starttls()
            assert "AUTH CRAM-MD5 PLAIN LOGIN" in customer.ehlo().lines
            reply = customer.command("AUTH PLAIN " + auth_plain("acme", "acme-Pw-4954"))
            assert reply.code == 235, reply.text
            assert customer.atrn("tls.test").code == 250
            drained = customer.serve()

        assert [m.recipients for m in drained.with_token(mark)] == [["user@tls.test"]]


class TestAccountSecret:
    def test_generated_secret__printed_once_and_works(self, site):
        result = site.mailkeep.cli("account", "secret", "gen")

        assert result.returncode == 0, result.stderr
        [secret] = result.stdout.splitlines()
        assert len(secret) >= 16
        assert "only once" in result.stderr
        assert secret not in site.mailkeep.cli_ok("account", "list")
        with Customer(site.odmr_port) as customer:
            customer.ehlo()
            assert customer.cram("gen", secret).code == 235

        again = site.mailkeep.cli_ok("account", "secret", "gen").strip()
        assert again != secret
        with Customer(site.odmr_port) as customer:
            customer.ehlo()
            assert customer.cram("gen", secret).code == 535, "the old secret still works"

    def test_secret_stdin__sets_the_given_secret(self, site):
        result = site.mailkeep.cli("account", "secret", "gen", "--secret-stdin",
                                   input="Given-Secret-77\n")

        assert result.returncode == 0, result.stderr
        assert result.stdout == ""
        with Customer(site.odmr_port) as customer:
            customer.ehlo()
            assert customer.cram("gen", "Given-Secret-77").code == 235
        assert "Given-Secret-77" not in site.mailkeep.log_text()


# -- ATRN ----------------------------------------------------------------------------------


class TestATRN:
    def test_foreign_domain__450_and_nothing_delivered(self, site):
        mine, theirs = token(), token()
        hold(site, ["user@mine.test"], mine)
        hold(site, ["user@theirs.test"], theirs)

        with Customer(site.odmr_port) as customer:
            customer.login()
            reply = customer.atrn("mine.test,theirs.test")
            quit_reply = customer.command("QUIT")

        assert reply.code == 450
        assert "theirs.test" in reply.text
        assert quit_reply.code == 221, "the connection was not reversed"
        for domain in ("mine.test", "theirs.test"):
            assert [m["queue_name"] for m in site.queued_for(domain)] == ["odmr"]

    def test_no_mail_pending__453(self, site):
        with Customer(site.odmr_port) as customer:
            customer.login()
            assert customer.atrn("empty.test").code == 453

    def test_no_argument__drains_all_held_domains(self, site):
        first, second = token(), token()
        hold(site, ["user@m1.test"], first)
        hold(site, ["user@m2.test"], second)  # mode etrn: ATRN drains it too

        drained = drain(site, "", account="multi", secret="Multi-Secret-2")

        assert [m.recipients for m in drained.with_token(first)] == [["user@m1.test"]]
        assert [m.recipients for m in drained.with_token(second)] == [["user@m2.test"]]
        assert drained.quit and drained.closed, "RFC 2645 5.3: QUIT, then Mailkeep closes"
        wait_empty(site, "m1.test")
        wait_empty(site, "m2.test")

    def test_mail_transaction_on_the_odmr_port__502(self, site):
        with Customer(site.odmr_port) as customer:
            customer.login()
            assert customer.command("MAIL FROM:<ann@sender.example>").code == 502
            assert customer.command("RCPT TO:<user@mine.test>").code == 502
            assert customer.command("DATA").code == 502

    def test_second_session_same_domain__451(self, site):
        mark = token()
        hold(site, ["user@busy.test"], mark)

        with Customer(site.odmr_port) as first, Customer(site.odmr_port) as second:
            first.login()
            assert first.atrn("busy.test").code == 250
            # The first session has not greeted yet, so its delivery has not started.
            second.login()
            busy = second.atrn("busy.test")
            drained = first.serve()

        assert busy.code == 451, busy.text
        assert [m.recipients for m in drained.with_token(mark)] == [["user@busy.test"]]

    def test_smtp_listener__delivers_and_logs_relay(self, site):
        mark = token()
        queue_id = hold(site, ["user@smtpside.test"], mark)

        with Customer(site.smtp_port) as customer:
            assert "ATRN" in customer.ehlo().lines
            assert customer.cram("acme", CRAM_SECRET).code == 235
            assert customer.atrn("smtpside.test").code == 250
            drained = customer.serve()

        assert [m.recipients for m in drained.with_token(mark)] == [["user@smtpside.test"]]
        assert drained.quit and drained.closed, "RFC 2645 5.3: QUIT, then Mailkeep closes"
        sent = site.mailkeep.wait_for_log(rf"mailkeep/smtp\[(\d+)\]: {queue_id}: "
                                          rf"to=<user@smtpside\.test>, "
                                          rf"relay=odmr:acme\[127\.0\.0\.1\], .*status=sent")
        # The session's own line counts the ATRN, though the session ended inside it.
        site.mailkeep.wait_for_log(rf"mailkeep/smtpd\[{sent.group(1)}\]: disconnect from "
                                   rf"unknown\[127\.0\.0\.1\] ehlo=1 auth=1 atrn=1 commands=3$")


# -- the reversed session ------------------------------------------------------------------


class TestReversedSession:
    def test_drop_after_second_of_five__rest_held(self, site):
        marks = [token() for _ in range(5)]
        for mark in marks:
            hold(site, ["user@drop.test"], mark)

        log_start = site.mailkeep.log_mark()
        first = drain(site, "drop.test", drop_after=2)
        assert [len(first.with_token(m)) for m in marks] == [1, 1, 0, 0, 0]
        wait_until(lambda: all(m["state"] == "held" for m in site.queued_for("drop.test")),
                   message="the undelivered messages to be held again")
        left = {m["queue_id"] for m in site.queued_for("drop.test")}
        second = drain(site, "drop.test")

        assert len(left) in (3, 4)
        assert [len(second.with_token(m)) for m in marks[2:]] == [1, 1, 1]
        assert len(second.with_token(marks[0])) == 0
        assert len(second.with_token(marks[1])) <= 1
        wait_empty(site, "drop.test")
        log = site.mailkeep.log_since(log_start)
        assert "ended early: lost connection" in log
        assert "error:" not in log, "a customer's hang-up is not Mailkeep's fault"

    def test_drop_during_data__message_redelivered(self, site):
        marks = [token() for _ in range(3)]
        for mark in marks:
            hold(site, ["user@inflight.test"], mark)

        first = drain(site, "inflight.test", drop_in_data=2)
        wait_until(lambda: all(m["state"] == "held" for m in site.queued_for("inflight.test")),
                   message="the undelivered messages to be held again")
        second = drain(site, "inflight.test")

        assert [len(first.with_token(m)) for m in marks] == [1, 0, 0]
        assert [len(second.with_token(m)) for m in marks] == [0, 1, 1]

    def test_drop_after_full_batch__rest_held(self, site):
        # Between two batches Mailkeep waits for the store, not for the customer,
        # and the hang-up must not leave the rest marked as in delivery.
        marks = [token() for _ in range(LOAD_BATCH + 3)]
        for mark in marks:
            hold(site, ["user@batch.test"], mark)

        first = drain(site, "batch.test", drop_after=LOAD_BATCH)
        wait_until(lambda: all(m["state"] == "held" for m in site.queued_for("batch.test")),
                   message="the undelivered messages to be held again")
        second = drain(site, "batch.test")

        assert len(first.messages) == LOAD_BATCH
        assert [len(second.with_token(m)) for m in marks[LOAD_BATCH:]] == [1, 1, 1]
        wait_empty(site, "batch.test")

    def test_hang_up_after_atrn__mail_held(self, site):
        mark = token()
        hold(site, ["user@hangup.test"], mark)
        with Customer(site.odmr_port) as customer:
            customer.login()
            customer.raw.send("ATRN hangup.test\r\n")
            # With SO_LINGER 0 the close sends a reset, so the server sees it before replying.
            customer.raw.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                         struct.pack("ii", 1, 0))

        wait_until(lambda: [m["state"] for m in site.queued_for("hangup.test")] == ["held"],
                   message="the message to be held again")
        drained = drain(site, "hangup.test")
        assert [m.recipients for m in drained.with_token(mark)] == [["user@hangup.test"]]

    def test_4xx_for_one_recipient__only_it_held(self, site):
        mark = token()
        queue_id = hold(site, ["ok@partial.test", "busy@partial.test"], mark)

        drained = drain(site, "partial.test",
                        rcpt_replies={"busy@partial.test": "450 4.2.1 Mailbox busy"})

        assert [m.recipients for m in drained.with_token(mark)] == [["ok@partial.test"]]
        [message] = wait_until(lambda: [m for m in site.queued_for("partial.test")
                                        if m["state"] == "held"],
                               message="the refused recipient to be held again")
        assert message["queue_id"] == queue_id
        [recipient] = message["recipients"]
        assert recipient["address"] == "busy@partial.test"
        assert recipient["delay_reason"].startswith("450 4.2.1 Mailbox busy")

    def test_5xx_for_recipient__dsn_to_sender(self, site):
        mark = token()
        queue_id = hold(site, ["gone@reject.test"], mark, sender="ann@senders.test")

        drained = drain(site, "reject.test",
                        rcpt_replies={"gone@reject.test": "550 5.1.1 No such user"})

        assert drained.with_token(mark) == []
        [notice] = site.sink.wait_for(1, lambda m: queue_id.encode() in m.data
                                      and m.mail_from == "")
        assert notice.rcpt_tos == ["ann@senders.test"]
        assert b"gone@reject.test" in notice.data
        assert b"550 5.1.1 No such user" in notice.data
        wait_empty(site, "reject.test")
