"""POP3 and APOP against real clients over loopback: poplib, fetchmail, mpop, getmail6.

One server runs for the module, with a certificate from a test CA that the
clients are told to trust. Each test makes its own mailboxes, so the tests
do not see each other's mail.
"""

from __future__ import annotations

import base64
import itertools
import os
import poplib
import re
import shutil
import socket
import ssl
import subprocess
import time
from pathlib import Path

import pytest
import trustme

from helpers import HOSTNAME, LOOPBACK, Mailkeep, send_message, wait_until
from mailkeep.server import pop3_replies as R
from mailkeep.server.pop3 import apop_digest, cram_md5_digest

DOMAIN = "pop.test"
_names = itertools.count(1)


def need(program: str, package: str) -> str:
    """Return the program's path, or fail with the command that installs it."""
    path = shutil.which(program)
    if path is None:
        pytest.fail(f"{program} is missing: run `apt-get install {package}` (or `make test`)")
    return path


class Pop3Env:
    """The module's running server, its ports and the test CA."""

    def __init__(self, directory: Path):
        ca = trustme.CA()
        cert = ca.issue_cert("localhost", LOOPBACK, HOSTNAME, common_name=HOSTNAME)
        self.ca_path = directory / "ca.pem"
        ca.cert_pem.write_to_path(str(self.ca_path))
        cert_path, key_path = directory / "cert.pem", directory / "key.pem"
        cert_path.write_bytes(b"".join(pem.bytes() for pem in cert.cert_chain_pems))
        cert.private_key_pem.write_to_path(str(key_path))
        self.server = Mailkeep(directory / "mk", tls={"cert": str(cert_path), "key": str(key_path)},
                               auth={"failure_delay": "0.2s", "max_failures": 1000})
        self.pop3_port = self.server.add_listener("pop3")
        self.pop3s_port = self.server.add_listener("pop3s")
        self.server.add_account()
        self.server.cli_ok("domain", "add", DOMAIN, "--account", "acme", "--mode", "pop3")
        self.server.cli_ok("domain", "add", "strict.test", "--account", "acme", "--mode", "pop3")
        self.server.cli_ok("mailbox", "add", f"@{DOMAIN}", "--account", "acme",
                           "--password-stdin", input="catch-pw\n")
        self.server.start()
        self.tls = ssl.create_default_context(cafile=str(self.ca_path))

    def mailbox(self, password: str = "pw", apop: str | None = None, domain: str = DOMAIN) -> str:
        address = f"user{next(_names)}@{domain}"
        self.server.cli_ok("mailbox", "add", address, "--account", "acme", "--password-stdin",
                           input=password + "\n")
        if apop:
            self.server.cli_ok("mailbox", "apop", address, "--secret-stdin", input=apop + "\n")
        return address

    def send(self, recipients: list[str], content: str) -> str:
        return send_message(self.server.smtp_port, "sender@x.example", recipients, content)

    def plain(self) -> poplib.POP3:
        return poplib.POP3(LOOPBACK, self.pop3_port, timeout=10)

    def login(self, address: str, password: str = "pw") -> poplib.POP3:
        client = self.plain()
        client.stls(self.tls)
        client.user(address)
        client.pass_(password)
        return client


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> Pop3Env:
    environment = Pop3Env(tmp_path_factory.mktemp("pop3"))
    yield environment
    environment.server.stop()


def message(subject: str, body: str = "hello") -> str:
    return f"Subject: {subject}\r\nMessage-ID: <{subject}@x.example>\r\n\r\n{body}\r\n"


class TestPoplib:
    def test_apop_session__lists_retrieves_and_deletes_at_quit(self, env):
        bob = env.mailbox(apop="apop-secret")
        for n in range(3):
            env.send([bob], message(f"m{n}", "line\r\n.starts with a dot\r\n.."))
        client = env.plain()
        assert re.search(rb"<\d+\.\d+@" + HOSTNAME.encode() + rb">", client.getwelcome())
        client.apop(bob, "apop-secret")
        count, size = client.stat()
        assert count == 3
        listing = client.list()[1]
        sizes = [int(line.split()[1]) for line in listing]
        assert sum(sizes) == size
        uids = [line.split()[1] for line in client.uidl()[1]]
        assert len(set(uids)) == 3
        assert client.uidl(2).split()[2] == uids[1]
        _, lines, octets = client.retr(1)
        assert octets == sizes[0]
        assert lines[:3] == [b"Return-Path: <sender@x.example>", f"Delivered-To: {bob}".encode(),
                             f"X-Original-To: {bob}".encode()]
        assert b".starts with a dot" in lines
        assert b".." in lines
        _, top, _ = client.top(2, 0)
        assert top[-1] == b""
        assert b"Subject: m1" in top
        client.dele(1)
        client.dele(2)
        assert client.stat()[0] == 1
        client.rset()
        assert client.stat()[0] == 3
        client.dele(3)
        client.quit()
        client = env.plain()
        client.apop(bob, "apop-secret")
        assert [line.split()[1] for line in client.uidl()[1]] == uids[:2]
        client.quit()

    def test_stls__then_user_pass_with_a_trusted_certificate(self, env):
        bob = env.mailbox(password="bob pw")
        env.send([bob], message("stls"))
        client = env.plain()
        assert "STLS" in client.capa()
        assert "USER" not in client.capa()
        with pytest.raises(poplib.error_proto, match=r"\[AUTH\]"):
            client.user(bob)
        client.stls(env.tls)
        assert "USER" in client.capa()
        assert "STLS" not in client.capa()
        client.user(bob)
        client.pass_("bob pw")
        assert client.stat()[0] == 1
        client.quit()

    def test_pop3s__implicit_tls_login(self, env):
        bob = env.mailbox()
        env.send([bob], message("pop3s"))
        client = poplib.POP3_SSL(LOOPBACK, env.pop3s_port, context=env.tls, timeout=10)
        assert "STLS" not in client.capa()
        client.user(bob)
        client.pass_("pw")
        assert client.stat()[0] == 1
        client.quit()

    def test_second_session_on_a_mailbox__gets_in_use(self, env):
        bob = env.mailbox()
        first = env.login(bob)
        second = env.plain()
        second.stls(env.tls)
        second.user(bob)
        with pytest.raises(poplib.error_proto, match=r"\[IN-USE\]"):
            second.pass_("pw")
        first.quit()
        second.user(bob)
        second.pass_("pw")
        second.quit()

    def test_dropped_connection_after_dele__deletes_nothing(self, env):
        bob = env.mailbox()
        env.send([bob], message("keep1"))
        env.send([bob], message("keep2"))
        client = env.login(bob)
        client.dele(1)
        client.dele(2)
        client.close()

        def relogin():
            try:
                return env.login(bob)
            except poplib.error_proto:
                return None  # the server may not have seen the drop yet

        client = wait_until(relogin, message="the dropped session to let go of the mailbox")
        assert client.stat()[0] == 2
        client.quit()

    def test_wrong_apop_digest_and_unknown_user__get_the_same_reply(self, env):
        bob = env.mailbox(apop="right")
        replies = []
        for user, secret in ((bob, "wrong"), ("nobody@pop.test", "right"), ("x@nowhere", "y")):
            client = env.plain()
            with pytest.raises(poplib.error_proto) as failure:
                client.apop(user, secret)
            replies.append(failure.value.args[0])
            client.close()
        assert replies == [R.AUTH_FAILED.encode()] * 3

    def test_wrong_password_and_mailbox_without_apop_secret__get_the_same_reply(self, env):
        bob = env.mailbox()
        client = env.plain()
        with pytest.raises(poplib.error_proto) as no_secret:
            client.apop(bob, "anything")
        client.stls(env.tls)
        client.user(bob)
        with pytest.raises(poplib.error_proto) as wrong:
            client.pass_("wrong")
        assert no_secret.value.args[0] == wrong.value.args[0] == R.AUTH_FAILED.encode()
        client.close()

    def test_uids__survive_a_restart(self, env):
        bob = env.mailbox()
        env.send([bob], message("r1"))
        client = env.login(bob)
        before = client.uidl()[1]
        client.quit()
        env.server.restart()
        client = env.login(bob)
        assert client.uidl()[1] == before
        client.quit()


class TestWire:
    """Dialogues that poplib does not produce."""

    def raw(self, env) -> socket.socket:
        sock = socket.create_connection((LOOPBACK, env.pop3_port), timeout=10)
        return sock

    @staticmethod
    def read_line(sock, buffer: bytearray) -> bytes:
        while b"\r\n" not in buffer:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError(bytes(buffer))
            buffer += chunk
        line, _, rest = bytes(buffer).partition(b"\r\n")
        buffer[:] = rest
        return line

    def test_commands_pipelined_after_stls__are_discarded(self, env):
        sock = self.raw(env)
        buffer = bytearray()
        assert self.read_line(sock, buffer).startswith(b"+OK")
        sock.sendall(b"STLS\r\nCAPA\r\n")
        assert self.read_line(sock, buffer) == R.STLS_GO.encode()
        assert not buffer
        tls = env.tls.wrap_socket(sock, server_hostname=LOOPBACK)
        tls.sendall(b"NOOP\r\n")
        assert self.read_line(tls, buffer) == R.NOT_NOW.encode()
        tls.close()

    def test_pipelined_commands__are_answered_in_order(self, env):
        bob = env.mailbox(apop="s")
        env.send([bob], message("p"))
        sock = self.raw(env)
        buffer = bytearray()
        stamp = re.search(rb"<.*>", self.read_line(sock, buffer)).group().decode()
        digest = apop_digest(stamp, "s")
        sock.sendall(f"APOP {bob} {digest}\r\nSTAT\r\nDELE 1\r\nSTAT\r\nRSET\r\nQUIT\r\n".encode())
        replies = [self.read_line(sock, buffer) for _ in range(6)]
        assert [r.split(b" ")[0] for r in replies] == [b"+OK"] * 6
        assert replies[1].startswith(b"+OK 1 ")
        assert replies[3] == b"+OK 0 0"
        sock.close()

    def test_auth_cram_md5__logs_in_with_the_apop_secret(self, env):
        bob = env.mailbox(apop="cram-secret")
        sock = self.raw(env)
        buffer = bytearray()
        self.read_line(sock, buffer)
        sock.sendall(b"AUTH CRAM-MD5\r\n")
        challenge = base64.b64decode(self.read_line(sock, buffer)[2:]).decode()
        answer = f"{bob} {cram_md5_digest(challenge, 'cram-secret')}"
        sock.sendall(base64.b64encode(answer.encode()) + b"\r\n")
        assert self.read_line(sock, buffer) == R.LOGGED_IN.encode()
        sock.close()

    def test_auth_plain_inside_tls__logs_in_with_the_password(self, env):
        bob = env.mailbox(password="plain-pw")
        client = env.plain()
        client.stls(env.tls)
        token = base64.b64encode(f"\0{bob}\0plain-pw".encode()).decode()
        assert client._shortcmd(f"AUTH PLAIN {token}") == R.LOGGED_IN.encode()
        client.quit()


class TestSmtpRouting:
    def test_address_with_no_mailbox_and_no_catch_all__gets_550_5_1_1(self, env):
        import smtplib

        with smtplib.SMTP(LOOPBACK, env.server.smtp_port, timeout=10) as smtp:
            smtp.ehlo()
            smtp.mail("a@x.example")
            code, text = smtp.rcpt("nobody@strict.test")
            assert (code, text.split()[0]) == (550, b"5.1.1")
            code, _ = smtp.rcpt("postmaster@strict.test")
            assert code == 250

    def test_full_mailbox__gets_452_4_2_2(self, env):
        import smtplib

        bob = env.mailbox()
        env.server.cli_ok("mailbox", "quota", bob, "--max-messages", "1")
        env.send([bob], message("fills it"))
        with smtplib.SMTP(LOOPBACK, env.server.smtp_port, timeout=10) as smtp:
            smtp.ehlo()
            smtp.mail("a@x.example")
            code, text = smtp.rcpt(bob)
        assert (code, text.split()[0]) == (452, b"4.2.2")

    def test_message_for_two_mailboxes__reaches_both_with_their_own_delivered_to(self, env):
        bob, ann = env.mailbox(), env.mailbox()
        env.send([bob, ann], message("both"))
        for address in (bob, ann):
            client = env.login(address)
            assert f"Delivered-To: {address}".encode() in client.retr(1)[1]
            client.quit()

    def test_log__has_dovecot_shaped_login_and_logout_lines_without_secrets(self, env):
        bob = env.mailbox(password="do-not-log-me")
        env.send([bob], message("log"))
        mark = env.server.log_mark()
        client = env.login(bob, "do-not-log-me")
        client.retr(1)
        client.dele(1)
        client.quit()
        env.server.wait_for_log(
            rf"pop3d\[\d+\]: Login: user=<{re.escape(bob)}>, method=PLAIN, rip=127\.0\.0\.1, "
            r"lip=127\.0\.0\.1, TLS$", since=mark)
        env.server.wait_for_log(
            rf"pop3d\[\d+\]: Disconnected: Logged out user=<{re.escape(bob)}> top=0/0, "
            r"retr=1/\d+, del=1/1, size=\d+$", since=mark)
        assert "do-not-log-me" not in env.server.log_text()


class TestFetchmail:
    def run(self, env, tmp_path: Path, rc: str, *options: str) -> subprocess.CompletedProcess:
        need("fetchmail", "fetchmail")
        home = tmp_path / "fetchmail"
        home.mkdir(exist_ok=True)
        rcfile = home / "rc"
        rcfile.write_text(rc)
        rcfile.chmod(0o600)
        environ = dict(os.environ, FETCHMAILHOME=str(home), HOME=str(home))
        return subprocess.run(["fetchmail", "-f", str(rcfile), "--nosyslog", *options],
                              env=environ, capture_output=True, text=True, timeout=60)

    def test_apop__fetches_in_clear_text(self, env, tmp_path):
        bob = env.mailbox(apop="fm-apop")
        env.send([bob], message("fetch-apop"))
        out = tmp_path / "out"
        rc = (f'poll {LOOPBACK} proto APOP service {env.pop3_port}\n'
              f'  user "{bob}" password "fm-apop" is root here\n'
              f'  mda "/bin/sh -c \'cat >> {out}\'"\n')
        result = self.run(env, tmp_path, rc)
        assert result.returncode == 0, result.stderr
        assert f"Delivered-To: {bob}" in out.read_text()
        assert self.run(env, tmp_path, rc).returncode == 1  # fetched and deleted: no mail

    def test_pop3_keep_uidl_over_stls__fetches_each_message_once(self, env, tmp_path):
        bob = env.mailbox(password="fm-pw")
        env.send([bob], message("fetch-1"))
        out = tmp_path / "out"
        rc = (f'poll {LOOPBACK} proto POP3 service {env.pop3_port} uidl\n'
              f'  user "{bob}" password "fm-pw" is root here\n'
              f'  sslcertck sslcommonname {HOSTNAME} sslcertfile {env.ca_path}'
              f' sslcertpath {tmp_path}\n'
              f'  keep\n  mda "/bin/sh -c \'cat >> {out}\'"\n')
        first = self.run(env, tmp_path, rc, "-v")
        assert first.returncode == 0, first.stderr
        dialogue = first.stdout + first.stderr
        assert "POP3> STLS" in dialogue
        assert "Authentication failed" not in dialogue
        assert self.run(env, tmp_path, rc).returncode == 1  # kept, but already seen
        env.send([bob], message("fetch-2"))
        assert self.run(env, tmp_path, rc).returncode == 0
        text = out.read_text()
        assert text.count("Subject: fetch-1") == 1
        assert text.count("Subject: fetch-2") == 1
        client = env.login(bob, "fm-pw")
        assert client.stat()[0] == 2  # --keep left them on the server
        client.quit()

    def test_multidrop_from_catch_all__sorts_by_delivered_to(self, env, tmp_path):
        out = tmp_path / "out"
        out.mkdir()
        env.send([f"carol@{DOMAIN}", f"dave@{DOMAIN}"], message("multidrop"))
        rc = (f'poll {LOOPBACK} proto POP3 service {env.pop3_port}'
              f' envelope Delivered-To localdomains {DOMAIN}\n'
              f'  user "@{DOMAIN}" password "catch-pw" is * here\n'
              f'  sslcertck sslcommonname {HOSTNAME} sslcertfile {env.ca_path}'
              f' sslcertpath {tmp_path}\n'
              f'  mda "/bin/sh -c \'cat >> {out}/%T\'"\n')
        result = self.run(env, tmp_path, rc)
        assert result.returncode == 0, result.stderr
        carol, dave = out / f"carol@{DOMAIN}", out / f"dave@{DOMAIN}"
        assert f"Delivered-To: carol@{DOMAIN}" in carol.read_text()
        assert f"Delivered-To: dave@{DOMAIN}" in dave.read_text()
        assert "Subject: multidrop" in carol.read_text() + dave.read_text()


class TestMpop:
    def run(self, env, tmp_path: Path, address: str, secret: str) -> subprocess.CompletedProcess:
        need("mpop", "mpop")
        mbox = tmp_path / "mbox"
        mbox.touch()
        return subprocess.run(
            ["mpop", "--host", LOOPBACK, "--port", str(env.pop3_port), "--tls=off",
             "--auth=apop", f"--user={address}", f"--passwordeval=echo {secret}",
             f"--delivery=mbox,{mbox}", f"--uidls-file={tmp_path / 'uidls'}", "--keep=on"],
            env=dict(os.environ, HOME=str(tmp_path)), capture_output=True, text=True, timeout=60)

    def test_apop_with_keep__fetches_new_messages_only_by_uid(self, env, tmp_path):
        bob = env.mailbox(apop="mpop-secret")
        env.send([bob], message("mpop-1"))
        env.send([bob], message("mpop-2"))
        first = self.run(env, tmp_path, bob, "mpop-secret")
        assert first.returncode == 0, first.stderr + first.stdout
        assert "new: 2 messages" in first.stdout
        second = self.run(env, tmp_path, bob, "mpop-secret")
        assert "new: no messages" in second.stdout, second.stdout
        assert (tmp_path / "mbox").read_text().count("X-Original-To: ") == 2


class TestGetmail:
    def test_pop3s__checks_uids_and_fetches_each_message_once(self, env, tmp_path):
        need("getmail", "getmail6")
        bob = env.mailbox(password="gm-pw")
        env.send([bob], message("getmail-1"))
        env.send([bob], message("getmail-2"))
        out = tmp_path / "out"
        rc = tmp_path / "getmailrc"
        rc.write_text(
            "[retriever]\ntype = SimplePOP3SSLRetriever\n"
            f"server = {LOOPBACK}\nport = {env.pop3s_port}\nusername = {bob}\n"
            f"password = gm-pw\nca_certs = {env.ca_path}\n\n"
            "[destination]\ntype = MDA_external\npath = /bin/sh\n"
            f'arguments = ("-c", "cat >> {out}")\nallow_root_commands = true\n\n'
            "[options]\nread_all = false\ndelete = false\n")

        def run() -> subprocess.CompletedProcess:
            return subprocess.run(["getmail", f"--rcfile={rc}", f"--getmaildir={tmp_path}"],
                                  capture_output=True, text=True, timeout=60)

        first = run()
        assert first.returncode == 0, first.stdout + first.stderr
        assert "2 messages" in first.stdout
        second = run()
        assert "0 messages" in second.stdout, second.stdout
        assert out.read_text().count("Return-Path: <sender@x.example>") == 2
