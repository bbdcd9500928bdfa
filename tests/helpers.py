"""Real peers for the integration tests: a Mailkeep process, an SMTP sink and a raw SMTP client.

Everything listens and connects on 127.0.0.1 only, on ports that the kernel
reported free a moment earlier. ``conftest.py`` wraps these classes in
fixtures. Tests import the classes from here when the fixtures are not
enough, for example for a second sink, a raw client or a module-scoped server.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import signal
import smtplib
import socket
import ssl
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, TypeVar

from aiosmtpd.controller import Controller

T = TypeVar("T")

LOOPBACK = "127.0.0.1"
HOSTNAME = "mx.mailkeep.test"
"""The ``hostname`` every test config uses: Mailkeep's greeting and Received headers name it."""


def free_port(host: str = LOOPBACK) -> int:
    """Return a TCP port that nothing listens on at the moment of the call."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def wait_until(predicate: Callable[[], T], timeout: float = 10.0, interval: float = 0.05,
               message: str = "condition") -> T:
    """Call ``predicate`` until it returns a true value, and return that value.

    Raises:
        AssertionError: ``timeout`` seconds passed first; the text names ``message``.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {message}")
        time.sleep(interval)


# -- Mailkeep: config, CLI and server process -----------------------------------------


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    raise TypeError(f"cannot write {value!r} to the test config")


def to_toml(settings: dict[str, Any]) -> str:
    """Serialize top-level keys and one level of tables, which is all Mailkeep's config has."""
    lines = [f"{key} = {_toml_value(value)}" for key, value in settings.items()
             if not isinstance(value, dict)]
    for table, values in settings.items():
        if isinstance(values, dict):
            lines.append(f"\n[{table}]")
            lines += [f"{key} = {_toml_value(item)}" for key, item in values.items()]
    return "\n".join(lines) + "\n"


class Mailkeep:
    """One Mailkeep installation in a test directory: config file, data dir, CLI and server.

    The config names ``hostname`` :data:`HOSTNAME`, a data dir inside
    ``directory``, an SMTP listener on a free loopback port and a relayhost
    on a loopback port where nothing listens. Keyword arguments add or
    override config tables, e.g.
    ``Mailkeep(path, queue={"retry_min": "1s"}, limits={"max_message_size": "64K"})``,
    or set top-level keys, e.g. ``postmaster="admin@customer.test"``. Every
    CLI call and the server get the config through ``MAILKEEP_CONFIG``.

    Args:
        directory: a directory of the test's own; created when missing.
        tables: a dict per config table to merge over the defaults, or a
            value per top-level key.
    """

    def __init__(self, directory: Path, **tables: Any):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.data_dir = self.directory / "data"
        self.config_path = self.directory / "mailkeep.toml"
        self.log_path = self.directory / "server.log"
        self.smtp_port = free_port()
        self.settings: dict[str, Any] = {
            "hostname": HOSTNAME,
            "data_dir": str(self.data_dir),
            "listen": {"smtp": [f"{LOOPBACK}:{self.smtp_port}"]},
            # Mail for a domain that is not hosted would otherwise go to its MX
            # hosts, found through DNS. A loopback port that nothing listens on
            # keeps every test off the network; such mail is deferred instead.
            "delivery": {"relayhost": f"{LOOPBACK}:{free_port()}"},
        }
        for table, values in tables.items():
            if isinstance(values, dict):
                self.settings.setdefault(table, {}).update(values)
            else:
                self.settings[table] = values
        self.write_config()
        self.process: subprocess.Popen | None = None

    # -- config --------------------------------------------------------------------------

    def set(self, table: str, **values: Any) -> None:
        """Merge ``values`` into a config table and rewrite the file.

        A running server reads the file only at start, so restart it for the change.
        """
        self.settings.setdefault(table, {}).update(values)
        self.write_config()

    def set_key(self, key: str, value: Any) -> None:
        """Set a top-level config key, such as ``postmaster``, and rewrite the file."""
        self.settings[key] = value
        self.write_config()

    def add_listener(self, service: str) -> int:
        """Add a loopback listener for ``service`` (``odmr``, ``pop3``, ...) on a free port.

        Returns:
            The port.
        """
        port = free_port()
        self.settings["listen"].setdefault(service, []).append(f"{LOOPBACK}:{port}")
        self.write_config()
        return port

    def write_config(self) -> None:
        self.config_path.write_text(to_toml(self.settings))

    @property
    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["MAILKEEP_CONFIG"] = str(self.config_path)
        env["PYTHONUNBUFFERED"] = "1"
        return env

    # -- CLI -----------------------------------------------------------------------------

    def cli(self, *args: str, input: str | None = None,
            timeout: float = 30.0) -> subprocess.CompletedProcess:
        """Run ``python -m mailkeep ARGS`` with this config; return the finished process.

        The exit status is not checked: use :meth:`cli_ok` for commands that must succeed.
        """
        return subprocess.run(
            [sys.executable, "-m", "mailkeep", *args], input=input, env=self.env,
            cwd=self.directory, capture_output=True, text=True, timeout=timeout,
        )

    def cli_ok(self, *args: str, input: str | None = None) -> str:
        """Run a CLI command that must exit 0; return its standard output.

        Raises:
            AssertionError: the command failed; the text has its standard error.
        """
        result = self.cli(*args, input=input)
        if result.returncode != 0:
            raise AssertionError(
                f"`mailkeep {' '.join(args)}` exited {result.returncode}:\n{result.stderr}"
            )
        return result.stdout

    def admin(self, *args: str, input: str = "") -> str:
        """Run a CLI command that must succeed inside this process; return its standard output.

        It runs the same ``mailkeep.cli.main`` as :meth:`cli` without starting
        an interpreter, which saves about 0.4 s per call. Use it for set-up, and
        :meth:`cli` where the test is about the command itself.

        Raises:
            AssertionError: the command exited non-zero; the text has its standard error.
        """
        from mailkeep.cli import main

        out, err = io.StringIO(), io.StringIO()
        saved_stdin = sys.stdin
        sys.stdin = io.StringIO(input)
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                status = main(["--config", str(self.config_path), *args])
        except SystemExit as exc:  # argparse rejected the arguments
            status = exc.code
        finally:
            sys.stdin = saved_stdin
        if status:
            raise AssertionError(f"`mailkeep {' '.join(args)}` exited {status}:\n{err.getvalue()}")
        return out.getvalue()

    def add_account(self, name: str = "acme", password: str = "secret-pw") -> None:
        self.admin("account", "add", name, "--password-stdin", input=password + "\n")

    def add_domain(self, domain: str, port: int, host: str = LOOPBACK, mode: str = "smtp",
                   account: str = "acme") -> None:
        """Host ``domain`` with its mail going to ``host:port``."""
        self.admin("domain", "add", domain, "--account", account, "--mode", mode,
                   "--host", host, "--port", str(port))

    def queue_json(self) -> list[dict[str, Any]]:
        """Return ``queue list --json`` as a list of objects, one per message."""
        out = self.admin("queue", "list", "--json")
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    # -- server process ------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, timeout: float = 20.0) -> None:
        """Start ``mailkeep serve --no-tui`` and wait until it has bound its listeners.

        Its standard output and error are appended to :attr:`log_path`, so the
        log of a restarted server follows the earlier one.

        Raises:
            AssertionError: the server exited or did not report ready in time.
        """
        assert not self.running, "the server is already running"
        mark = self.log_mark()
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "mailkeep", "serve", "--no-tui"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=self.env, cwd=self.directory,
            )

        def ready() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(
                    f"mailkeep serve exited with status {self.process.returncode}:\n"
                    + self.log_since(mark)
                )
            return "daemon started" in self.log_since(mark)

        wait_until(ready, timeout, message="mailkeep serve to report `daemon started`")

    def stop(self, timeout: float = 15.0) -> int | None:
        """Send SIGTERM and wait; send SIGKILL when it has not exited in ``timeout`` seconds.

        Returns:
            The exit status, or None when no server was started.
        """
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def kill(self) -> None:
        """Kill the server with SIGKILL, as a crash or ``kill -9`` would, and reap it."""
        assert self.process is not None, "no server was started"
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def restart(self) -> None:
        """Start the server again on the same config and data dir (after stop or kill)."""
        if self.running:
            self.stop()
        self.start()

    # -- log -----------------------------------------------------------------------------

    def log_text(self) -> str:
        """Return everything the server processes have written so far."""
        if not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")

    def log_mark(self) -> int:
        """Return a position in the log, for :meth:`log_since` and :meth:`wait_for_log`."""
        return len(self.log_text())

    def log_since(self, mark: int) -> str:
        return self.log_text()[mark:]

    def wait_for_log(self, pattern: str, timeout: float = 20.0, since: int = 0) -> re.Match:
        """Wait until a line after ``since`` matches the regular expression ``pattern``.

        Returns:
            The match; ``re.MULTILINE`` is set, so ``^`` and ``$`` match at line ends.
        """
        regex = re.compile(pattern, re.MULTILINE)
        return wait_until(lambda: regex.search(self.log_since(since)), timeout,
                          message=f"a log line matching {pattern!r}")


# -- the customer's SMTP server --------------------------------------------------------


@dataclass
class SinkMessage:
    """One message as the sink received it.

    Attributes:
        mail_from: the envelope sender, empty for the null sender.
        data: the content after aiosmtpd removed the transparency dots; its
            line ends are whatever arrived on the wire.
        tls: the message came over a session that had switched to TLS with STARTTLS.
    """

    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    peer: str
    tls: bool = False


class _SinkHandler:
    def __init__(self, sink: "Sink"):
        self.sink = sink

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        reply = self.sink.rcpt_replies.get(address.lower())
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server, session, envelope):
        if self.sink.data_reply:
            return self.sink.data_reply
        # aiosmtpd keeps the null reverse-path as "<>".
        sender = "" if envelope.mail_from == "<>" else envelope.mail_from
        self.sink.record(SinkMessage(sender, list(envelope.rcpt_tos),
                                     envelope.original_content, session.peer[0],
                                     tls=session.ssl is not None))
        return "250 2.0.0 Ok: stored"


def _untrusted_tls_context() -> ssl.SSLContext:
    import trustme

    certificate = trustme.CA().issue_cert("localhost", LOOPBACK)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    certificate.configure_cert(context)
    return context


@dataclass
class Sink:
    """An aiosmtpd server in a thread that plays the customer's SMTP server.

    It records each message it accepts. ``rcpt_replies`` maps a lower-case
    recipient address to the reply its RCPT gets instead of 250 (for example
    ``"550 5.1.1 no such user"``), and ``data_reply``, when set, answers every
    DATA instead of storing the message. With ``tls`` true it offers STARTTLS
    with a certificate from a throwaway CA that Mailkeep does not know.
    :meth:`stop` and :meth:`start` can be called again and again; the port
    stays the same.
    """

    port: int = field(default_factory=free_port)
    rcpt_replies: dict[str, str] = field(default_factory=dict)
    data_reply: str | None = None
    tls: bool = False
    messages: list[SinkMessage] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._controller: Controller | None = None
        self._changed = threading.Condition()

    @property
    def running(self) -> bool:
        return self._controller is not None

    def start(self) -> "Sink":
        assert self._controller is None, "the sink is already running"
        options: dict[str, Any] = {}
        if self.tls:
            options["tls_context"] = _untrusted_tls_context()
        # A Controller closes its loop when stopped, so each start gets a new one.
        self._controller = Controller(_SinkHandler(self), hostname=LOOPBACK, port=self.port,
                                      decode_data=False, enable_SMTPUTF8=True,
                                      ident="test sink", **options)
        self._controller.start()
        return self

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def record(self, message: SinkMessage) -> None:
        with self._changed:
            self.messages.append(message)
            self._changed.notify_all()

    def wait_for(self, count: int = 1, match: Callable[[SinkMessage], bool] | None = None,
                 timeout: float = 20.0) -> list[SinkMessage]:
        """Wait until at least ``count`` received messages satisfy ``match``; return them all."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                found = [m for m in self.messages if match is None or match(m)]
                if len(found) >= count:
                    return found
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"the sink on port {self.port} received {len(found)} matching "
                        f"message(s) in {timeout} s, expected {count}"
                    )
                self._changed.wait(left)

    def with_token(self, token: str | bytes) -> list[SinkMessage]:
        """Return the received messages whose content contains ``token``."""
        raw = token.encode() if isinstance(token, str) else token
        return [m for m in self.messages if raw in m.data]


# -- SMTP clients -----------------------------------------------------------------------


def send_message(port: int, sender: str, recipients: list[str], content: str | bytes,
                 helo: str = "client.example") -> str:
    """Send one message with smtplib; every step must succeed.

    Returns:
        The queue id from the 250 reply to the end of DATA.
    """
    with smtplib.SMTP(LOOPBACK, port, local_hostname=helo, timeout=10) as client:
        client.ehlo()
        code, text = client.mail(sender)
        assert code == 250, f"MAIL FROM:<{sender}>: {code} {text!r}"
        for recipient in recipients:
            code, text = client.rcpt(recipient)
            assert code == 250, f"RCPT TO:<{recipient}>: {code} {text!r}"
        code, text = client.data(content)
        assert code == 250, f"end of DATA: {code} {text!r}"
    match = re.search(rb"queued as (\w+)", text)
    assert match, f"no queue id in {text!r}"
    return match.group(1).decode()


_ENHANCED = re.compile(r"^[245]\.\d{1,3}\.\d{1,3}$")


@dataclass
class Reply:
    """One SMTP reply: its code and the text of each line after the code."""

    code: int
    lines: list[str]

    @property
    def text(self) -> str:
        return f"{self.code} " + " ".join(self.lines)

    @property
    def enhanced(self) -> str | None:
        """The enhanced status code (RFC 3463) at the start of the first line, or None."""
        first = self.lines[0].split(" ", 1)[0] if self.lines and self.lines[0] else ""
        return first if _ENHANCED.match(first) else None


class RawSMTP:
    """An SMTP client that writes exactly the bytes it is given.

    For dialogues that smtplib will not produce: pipelined commands in one
    write, bare CR or LF in data, commands sent after STARTTLS in plaintext.

    Args:
        port: the server's port on 127.0.0.1.
        timeout: seconds to wait for each reply.
    """

    def __init__(self, port: int, timeout: float = 10.0):
        self.timeout = timeout
        self.sock: socket.socket = socket.create_connection((LOOPBACK, port), timeout)
        self.buffer = b""
        self.greeting = self.reply()

    def send(self, data: bytes | str) -> None:
        self.sock.sendall(data.encode() if isinstance(data, str) else data)

    def command(self, line: str) -> Reply:
        """Send one command line (CRLF is added) and return its reply."""
        self.send(line + "\r\n")
        return self.reply()

    def _read_line(self) -> bytes:
        while b"\r\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"the server closed the connection; unread: {self.buffer!r}")
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\r\n")
        return line

    def reply(self) -> Reply:
        """Read one reply, following continuation lines (``250-...``)."""
        self.sock.settimeout(self.timeout)
        code, lines = 0, []
        while True:
            line = self._read_line().decode("utf-8", "replace")
            code = int(line[:3])
            lines.append(line[4:])
            if line[3:4] != "-":
                return Reply(code, lines)

    def silent_for(self, seconds: float) -> bool:
        """Return whether the server sends nothing at all within ``seconds``."""
        if self.buffer:
            return False
        self.sock.settimeout(seconds)
        try:
            data = self.sock.recv(65536)
        except (socket.timeout, ssl.SSLWantReadError):
            return True
        self.buffer += data
        return False

    def starttls(self) -> None:
        """Run the TLS handshake after the server's 220 to STARTTLS, trusting any certificate.

        Raises:
            AssertionError: bytes were left over from the plaintext phase.
        """
        assert not self.buffer, f"plaintext bytes after the 220 to STARTTLS: {self.buffer!r}"
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        self.sock.settimeout(self.timeout)
        self.sock = context.wrap_socket(self.sock, server_hostname=HOSTNAME)

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self) -> "RawSMTP":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
