"""ETRN (RFC 1985): held mail is delivered when the customer requests it.

One Mailkeep server runs for the whole module, with a domain per test, so
that no test sees another's mail. Customer servers are aiosmtpd sinks on
loopback. The clients are real ones: fetchmail in ETRN mode, swaks for the
mail that gets held, ``mailkeep etrn``, and smtplib where a source address
must be chosen (the authenticated form delivers to the address the request
came from). Failed logins count per client address, so each test that fails
a login uses an address of its own in 127.0.0.0/8.
"""

from __future__ import annotations

import contextlib
import io
import re
import shutil
import smtplib
import ssl
import subprocess
import sys
import time
import uuid
from base64 import b64encode
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pytest
from aiosmtpd.controller import Controller

from helpers import LOOPBACK, Mailkeep, RawSMTP, Sink, SinkMessage, free_port, wait_until
from mailkeep import cli

pytestmark = pytest.mark.timeout(60)

DYNAMIC = "127.0.0.2"
"""The address of a customer server on a dynamic address, different from every static host."""
FAILURE_DELAY = 0.2
"""``[auth] failure_delay`` of the module's server, in seconds."""
LOCKOUT = 2.0
"""``[auth] lockout`` of the module's server, in seconds."""


def require(program: str, package: str) -> str:
    """Return the path of a test peer, or fail with the command that installs it."""
    path = shutil.which(program)
    if path is None:
        pytest.fail(f"{program} is not installed; install it with `apt-get install {package}`")
    return path


# -- sinks bound to a chosen loopback address ----------------------------------------------


class _Recorder:
    def __init__(self, sink: Sink):
        self.sink = sink

    async def handle_DATA(self, server, session, envelope):
        sender = "" if envelope.mail_from == "<>" else envelope.mail_from
        self.sink.record(
            SinkMessage(sender, list(envelope.rcpt_tos), envelope.original_content,
                        session.peer[0]))
        return "250 2.0.0 Ok: stored"


@dataclass(eq=False)
class BoundSink(Sink):
    """A sink like :class:`helpers.Sink` that listens on ``host`` instead of 127.0.0.1.

    It accepts every recipient and message: ``rcpt_replies`` and ``data_reply`` are ignored.
    """

    host: str = LOOPBACK

    def start(self) -> "BoundSink":
        assert self._controller is None, "the sink is already running"
        self._controller = Controller(_Recorder(self), hostname=self.host, port=self.port,
                                      decode_data=False, ident="bound test sink")
        self._controller.start()
        return self


# -- the module's server -------------------------------------------------------------------


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


@dataclass
class Site:
    """The running server and the customer servers it delivers to."""

    mailkeep: Mailkeep
    sink: Sink
    """127.0.0.1: the configured host of most domains, and the requester's address of ``dial``."""
    dynamic: BoundSink
    """127.0.0.2, on the port of the domains that have no host."""
    decoy: BoundSink
    """127.0.0.1 on the same port as ``dynamic``: mail here went to the wrong address."""
    push_sink: Sink
    """The server of ``push.test`` (mode smtp), down until a test starts it."""
    flaky_sink: Sink
    """The server of ``flaky.test``, down until a test starts it."""
    passwords: dict[str, str] = field(default_factory=dict)

    @property
    def port(self) -> int:
        return self.mailkeep.smtp_port


def _layout(site_port: int, dynamic_port: int, push_port: int, flaky_port: int) -> dict:
    """Return the module's accounts: name to (password, [(domain, mode, host, port)])."""
    static = ("etrn", LOOPBACK, site_port)
    return {
        "ops": ("ops-Pw-4410", [
            ("fm.test", *static), ("empty.test", *static), ("count.test", *static),
            ("parent.test", *static), ("sub.parent.test", *static), ("queue.test", *static),
            ("multi1.test", *static), ("multi2.test", *static), ("client.test", *static),
            ("foreign.test", *static), ("nohost.test", "etrn", "", site_port),
            ("pop.test", "pop3", "", 25), ("push.test", "smtp", LOOPBACK, push_port),
            ("flaky.test", "etrn", LOOPBACK, flaky_port),
        ]),
        "acme": ("Acme-Pw-8812", [("dyn.test", "etrn", "", dynamic_port),
                                  ("static.test", *static)]),
        "dial": ("Dial-Pw-3307", [("dial.test", "etrn", "", site_port)]),
        "secure": ("Secure-Pw-5519", [("secure.test", "etrn", "", dynamic_port)]),
        "lock": ("Lock-Pw-6620", [("lock.test", "etrn", "", site_port)]),
    }


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    mailkeep = Mailkeep(
        tmp_path_factory.mktemp("etrn"),
        auth={"failure_delay": FAILURE_DELAY, "max_failures": 3, "lockout": LOCKOUT},
        # Pushed mail is retried an hour later, so only ETRN can bring it sooner.
        queue={"retry_min": "1h", "retry_max": "1h"},
        delivery={"connect_timeout": "2s", "reply_timeout": "10s"},
    )
    dynamic_port = free_port(DYNAMIC)
    site = Site(mailkeep, Sink(), BoundSink(port=dynamic_port, host=DYNAMIC),
                BoundSink(port=dynamic_port), Sink(), Sink())
    for name, (password, domains) in _layout(site.sink.port, dynamic_port, site.push_sink.port,
                                             site.flaky_sink.port).items():
        admin(mailkeep, "account", "add", name, "--password-stdin", stdin=password + "\n")
        site.passwords[name] = password
        for domain, mode, host, port in domains:
            extra = ["--host", host] if host else []
            admin(mailkeep, "domain", "add", domain, "--account", name, "--mode", mode,
                  "--port", str(port), *extra)
    started: list[Sink] = []
    try:
        for sink in (site.sink, site.dynamic, site.decoy):
            started.append(sink.start())
        mailkeep.start()
        yield site
    finally:
        mailkeep.stop()
        for sink in (*started, site.push_sink, site.flaky_sink):
            sink.stop()


# -- clients -------------------------------------------------------------------------------


def token() -> str:
    return uuid.uuid4().hex[:16]


def swaks(site: Site, recipient: str, mark: str) -> str:
    """Send one message with swaks and return its queue id."""
    result = subprocess.run(
        [require("swaks", "swaks"), "--server", f"{LOOPBACK}:{site.port}", "--helo",
         "client.example", "--from", "ann@sender.example", "--to", recipient,
         "--header", f"Subject: {mark}", "--body", f"held until ETRN {mark}"],
        capture_output=True, text=True, timeout=30,
    )
    assert result.returncode == 0, f"swaks failed:\n{result.stdout}{result.stderr}"
    match = re.search(r"queued as (\w+)", result.stdout)
    assert match, f"no queue id in swaks's output:\n{result.stdout}"
    return match.group(1)


@contextlib.contextmanager
def session(site: Site, source: str = LOOPBACK) -> Iterator[smtplib.SMTP]:
    """Open an SMTP session from ``source`` to the server and send EHLO."""
    client = smtplib.SMTP(LOOPBACK, site.port, local_hostname="client.example", timeout=15,
                          source_address=(source, 0))
    try:
        client.ehlo()
        yield client
    finally:
        client.close()


def etrn(client: smtplib.SMTP, argument: str | None = None) -> tuple[int, str]:
    code, text = client.docmd("ETRN", argument or "")
    return code, text.decode()


def received(sink: Sink, mark: str, count: int = 1, timeout: float = 10.0) -> list[SinkMessage]:
    return sink.wait_for(count, lambda m: mark.encode() in m.data, timeout=timeout)


def fetchmail(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """Run fetchmail once, in the foreground, with an empty rc file and its own pid file."""
    rc = tmp_path / "fetchmailrc"
    rc.write_text("")
    rc.chmod(0o600)  # fetchmail refuses an rc file that others can read
    return subprocess.run(
        [require("fetchmail", "fetchmail"), "-f", str(rc), "--nosyslog", "-N",
         "--pidfile", str(tmp_path / "fetchmail.pid"), *args],
        capture_output=True, text=True, timeout=30,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "FETCHMAILHOME": str(tmp_path)},
    )


def mailkeep_etrn(site: Site, *args: str, stdin: str | None = None,
                  server: str | None = None) -> subprocess.CompletedProcess:
    return site.mailkeep.cli("etrn", "--server", server or f"{LOOPBACK}:{site.port}",
                             "--helo", "client.example", *args, input=stdin)


def queue_show(site: Site, queue_id: str) -> str:
    return admin(site.mailkeep, "queue", "show", queue_id)


def recorded_attempt(site: Site, queue_id: str) -> str:
    """Return ``queue show`` of the message once it lists an attempt, else an empty string."""
    shown = queue_show(site, queue_id)
    return shown if "attempts=1" in shown else ""


# -- fetchmail -----------------------------------------------------------------------------


class TestFetchmail:
    def test_plain_domain__delivered_to_configured_host(self, site, tmp_path):
        marks = [token(), token()]
        ids = [swaks(site, "user@fm.test", mark) for mark in marks]
        held = {m["queue_id"]: m["queue_name"] for m in site.mailkeep.queue_json()}
        assert [held.get(qid) for qid in ids] == ["etrn", "etrn"]

        result = fetchmail(tmp_path, "--protocol", "ETRN", "--port", str(site.port),
                           "--fetchdomains", "fm.test", LOOPBACK)

        assert result.returncode == 0, result.stdout + result.stderr
        assert "Pending messages for fm.test started" in result.stdout
        for mark in marks:
            [message] = received(site.sink, mark)
            assert message.rcpt_tos == ["user@fm.test"]

    def test_nothing_waiting__reports_no_messages(self, site, tmp_path):
        result = fetchmail(tmp_path, "--protocol", "ETRN", "--port", str(site.port),
                           "--fetchdomains", "empty.test", LOOPBACK)

        # Observed with fetchmail 6.4.37: it reports the 251 but exits 0, not 1 ("no mail").
        assert "No messages waiting for empty.test" in result.stdout
        assert result.returncode == 0, result.stdout + result.stderr

    def test_unknown_domain__exits_3(self, site, tmp_path):
        result = fetchmail(tmp_path, "--protocol", "ETRN", "--port", str(site.port),
                           "--fetchdomains", "not-hosted.example", LOOPBACK)

        assert result.returncode == 3, result.stdout + result.stderr  # PS_AUTHFAIL, from 459
        assert "not allowed" in result.stderr

    def test_account_form__delivered_to_requester(self, site, tmp_path):
        mark = token()
        swaks(site, "user@dial.test", mark)

        result = fetchmail(tmp_path, "--protocol", "ETRN", "--port", str(site.port),
                           "--fetchdomains", f"dial;{site.passwords['dial']}", LOOPBACK)

        assert result.returncode == 0, result.stdout + result.stderr
        [message] = received(site.sink, mark)
        assert message.rcpt_tos == ["user@dial.test"]
        assert site.passwords["dial"] not in site.mailkeep.log_text()


# -- mailkeep etrn, the small client -------------------------------------------------------


class TestMailkeepEtrnClient:
    def test_domain__prints_the_reply_and_exits_0(self, site):
        mark = token()
        swaks(site, "user@client.test", mark)

        result = mailkeep_etrn(site, "client.test")

        assert result.returncode == 0, result.stderr
        assert re.fullmatch(r"253 2\.0\.0 OK, 1 pending messages for node client\.test started\n",
                            result.stdout)
        received(site.sink, mark)

    def test_account_password_stdin__delivers(self, site):
        mark = token()
        swaks(site, "user@dial.test", mark)

        result = mailkeep_etrn(site, "--account", "dial", "--password-stdin",
                               stdin=site.passwords["dial"] + "\n")

        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("253 ")
        received(site.sink, mark)

    def test_wrong_password__459_and_exit_4(self, site):
        result = mailkeep_etrn(site, "--account", "dial", "--password-stdin",
                               stdin="not-the-password\n")

        assert result.returncode == 4, result.stdout + result.stderr
        assert result.stdout.startswith("459 ")

    def test_syntax_error__501_and_exit_5(self, site):
        result = mailkeep_etrn(site, "no_such!domain")

        assert result.returncode == 5, result.stdout + result.stderr
        assert result.stdout.startswith("501 ")

    def test_server_unreachable__exit_1_with_the_reason(self, site):
        result = mailkeep_etrn(site, "client.test", server=f"{LOOPBACK}:{free_port()}")

        assert result.returncode == 1
        assert result.stdout == ""
        assert "refused" in result.stderr.lower()


# -- replies (RFC 1985 section 5) ----------------------------------------------------------


class TestReplies:
    def test_ehlo__offers_etrn(self, site):
        with session(site) as client:
            assert client.has_extn("etrn")

    def test_pending_mail__253_with_the_number_of_messages(self, site):
        marks = [token() for _ in range(3)]
        for mark in marks:
            swaks(site, "user@count.test", mark)

        with session(site) as client:
            code, text = etrn(client, "count.test")

        assert (code, text) == (253, "2.0.0 OK, 3 pending messages for node count.test started")
        for mark in marks:
            received(site.sink, mark)

    def test_nothing_pending__251(self, site):
        with session(site) as client:
            assert etrn(client, "empty.test")[0] == 251

    def test_unknown_domain__459(self, site):
        with session(site) as client:
            code, text = etrn(client, "not-hosted.example")
        assert code == 459
        assert "not-hosted.example" in text

    def test_pop3_domain__459(self, site):
        with session(site) as client:
            assert etrn(client, "pop.test")[0] == 459

    def test_missing_argument__501(self, site):
        with session(site) as client:
            assert etrn(client)[0] == 501

    def test_malformed_argument__501(self, site):
        with session(site) as client:
            assert etrn(client, "two words")[0] == 501
            assert etrn(client, "acme;")[0] == 501

    def test_before_ehlo__503(self, site):
        with RawSMTP(site.port) as raw:
            assert raw.command("ETRN count.test").code == 503

    def test_inside_mail_transaction__503(self, site):
        with session(site) as client:
            assert client.mail("ann@sender.example")[0] == 250
            assert etrn(client, "empty.test")[0] == 503
            assert client.rset()[0] == 250
            assert etrn(client, "empty.test")[0] == 251

    def test_at_domain__covers_subdomains(self, site):
        top, sub = token(), token()
        swaks(site, "user@parent.test", top)
        swaks(site, "user@sub.parent.test", sub)

        with session(site) as client:
            plain = etrn(client, "parent.test")
            received(site.sink, top)
            subdomains = etrn(client, "@parent.test")

        assert plain[0] == 253
        assert "1 pending" in plain[1]
        assert subdomains[0] == 253
        assert "1 pending" in subdomains[1]
        [message] = received(site.sink, sub)
        assert message.rcpt_tos == ["user@sub.parent.test"]

    def test_hash_queue__delivers_that_domains_queue(self, site):
        mark = token()
        swaks(site, "user@queue.test", mark)

        with session(site) as client:
            code, _ = etrn(client, "#queue.test")

        assert code == 253
        received(site.sink, mark)

    def test_several_in_one_session__all_delivered(self, site):
        first, second = token(), token()
        swaks(site, "user@multi1.test", first)
        swaks(site, "user@multi2.test", second)

        with session(site) as client:
            codes = [etrn(client, name)[0] for name in ("multi1.test", "multi2.test",
                                                         "multi1.test")]

        assert codes == [253, 253, 251]
        received(site.sink, first)
        received(site.sink, second)

    def test_domain_without_host__459_names_account_form(self, site):
        swaks(site, "user@nohost.test", token())

        with session(site) as client:
            code, text = etrn(client, "nohost.test")

        assert code == 459
        assert "account;password" in text


# -- what a trigger delivers ---------------------------------------------------------------


class TestDelivery:
    def test_account_form__delivered_to_source_address(self, site):
        mark, static = token(), token()
        swaks(site, "user@dyn.test", mark)
        swaks(site, "user@static.test", static)

        with session(site, source=DYNAMIC) as client:
            code, text = etrn(client, f"acme;{site.passwords['acme']}")

        assert code == 253
        assert "2 pending" in text
        [message] = received(site.dynamic, mark)
        assert message.rcpt_tos == ["user@dyn.test"]
        assert not site.decoy.with_token(mark), "delivered to 127.0.0.1, not the requester"
        # A domain with a host of its own still goes there, not to the requester.
        [message] = received(site.sink, static)
        assert message.rcpt_tos == ["user@static.test"]

    def test_smtp_mode_domain__deferred_mail_retried_at_once(self, site):
        mark = token()
        queue_id = swaks(site, "user@push.test", mark)
        site.mailkeep.wait_for_log(rf"{queue_id}: to=<user@push\.test>, .*status=deferred")
        # The log line comes before the commit, and the ETRN must find the mail deferred.
        wait_until(lambda: "state:     deferred" in queue_show(site, queue_id),
                   message="the deferral to be recorded")
        site.push_sink.start()

        with session(site) as client:
            code, _ = etrn(client, "push.test")

        assert code == 253
        # The next retry is an hour away, so only the ETRN can deliver it now.
        received(site.push_sink, mark, timeout=5)

    def test_failed_delivery__held_until_next_trigger(self, site):
        mark = token()
        queue_id = swaks(site, "user@flaky.test", mark)

        with session(site) as client:
            assert etrn(client, "flaky.test")[0] == 253
        site.mailkeep.wait_for_log(rf"{queue_id}: to=<user@flaky\.test>, .*status=held "
                                   rf"\(connect to ")
        shown = wait_until(lambda: recorded_attempt(site, queue_id),
                           message="the failed attempt to be recorded")
        assert re.search(r"^state:\s+held$", shown, re.MULTILINE), shown
        assert re.search(rf"last error: connect to .*:{site.flaky_sink.port}: ", shown), shown
        assert re.search(r"^attempts:\n  .* <user@flaky\.test> relay=\S+ status=held \(connect",
                         shown, re.MULTILINE), shown

        site.flaky_sink.start()
        with session(site) as client:
            assert etrn(client, "flaky.test")[0] == 253
        received(site.flaky_sink, mark)


# -- logins --------------------------------------------------------------------------------


def timed_etrn(site: Site, source: str, argument: str) -> tuple[int, str, float]:
    with session(site, source=source) as client:
        started = time.monotonic()
        code, text = etrn(client, argument)
        return code, text, time.monotonic() - started


class TestLogins:
    def test_wrong_password_unknown_account__same_459(self, site):
        wrong = timed_etrn(site, "127.0.0.3", "acme;Wrong-Pw-1193")
        unknown = timed_etrn(site, "127.0.0.3", "nobody;Wrong-Pw-1193")

        assert wrong[0] == unknown[0] == 459
        # The reply repeats the node it was given and otherwise reads the same.
        assert wrong[1].replace("acme", "NAME") == unknown[1].replace("nobody", "NAME")

    def test_repeated_failures__slowed_then_locked_out(self, site):
        source, password = "127.0.0.9", site.passwords["lock"]
        log_start = site.mailkeep.log_mark()
        attempts = [timed_etrn(site, source, f"lock;Bad-Pw-{n}77") for n in range(3)]
        locked = timed_etrn(site, source, f"lock;{password}")
        elsewhere = timed_etrn(site, "127.0.0.10", f"lock;{password}")

        assert [a[0] for a in attempts] == [459, 459, 459]
        assert attempts[0][2] >= FAILURE_DELAY
        assert attempts[1][2] >= 2 * FAILURE_DELAY
        assert locked[0] == 459
        assert "too many failed logins" in locked[1]
        assert locked[2] < FAILURE_DELAY, "a refused address is answered without a check"
        assert elsewhere[0] == 251, "the lockout is per client address"

        time.sleep(LOCKOUT)
        assert timed_etrn(site, source, f"lock;{password}")[0] == 251
        log = site.mailkeep.log_since(log_start)
        assert "account=lock;password=<hidden>" in log
        for secret in [password] + [f"Bad-Pw-{n}77" for n in range(3)]:
            assert secret not in log


def auth_plain(name: str, password: str) -> str:
    return b64encode(f"\0{name}\0{password}".encode()).decode()


class TestAuthenticatedEtrn:
    def test_auth_plain_over_tls__delivered_to_client(self, site):
        mark = token()
        swaks(site, "user@secure.test", mark)

        with session(site, source=DYNAMIC) as client:
            client.starttls(context=ssl._create_unverified_context())
            client.ehlo()
            code, _ = client.docmd("AUTH", "PLAIN " + auth_plain("secure",
                                                                 site.passwords["secure"]))
            assert code == 235
            own = etrn(client, "secure.test")
            foreign = etrn(client, "foreign.test")

        assert own[0] == 253
        assert foreign[0] == 459
        assert "does not belong" in foreign[1]
        [message] = received(site.dynamic, mark)
        assert message.rcpt_tos == ["user@secure.test"]
        assert not site.decoy.with_token(mark)

    def test_auth_plain_before_starttls__538(self, site):
        with session(site, source="127.0.0.4") as client:
            code, _ = client.docmd("AUTH", "PLAIN " + auth_plain("secure",
                                                                 site.passwords["secure"]))
        assert code == 538
