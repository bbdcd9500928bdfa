"""Bad input found by attacking the listeners: each gets a clear reply, not a crash or a leak."""

from __future__ import annotations

import base64
import hashlib
import hmac
import poplib
import socket
import threading
import time

import pytest

from helpers import LOOPBACK, Mailkeep, RawSMTP, free_port, send_message, wait_until

pytestmark = pytest.mark.timeout(90)

SECRET = "cram-secret"


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Mailkeep:
    """One server for the module: SMTP and ODMR listeners, short command timeout."""
    mailkeep = Mailkeep(tmp_path_factory.mktemp("hardening"),
                        limits={"command_timeout": "2s", "max_connections_per_client": 3})
    mailkeep.odmr_port = mailkeep.add_listener("odmr")
    mailkeep.pop3_port = mailkeep.add_listener("pop3")
    mailkeep.add_account()
    mailkeep.admin("account", "secret", "acme", "--secret-stdin", input=SECRET + "\n")
    mailkeep.admin("domain", "add", "odmr.test", "--account", "acme", "--mode", "odmr")
    mailkeep.admin("domain", "add", "pop.test", "--account", "acme", "--mode", "pop3")
    mailkeep.admin("mailbox", "add", "bob@pop.test", "--account", "acme", "--password-stdin",
                   input="bob-pw\n")
    mailkeep.start()
    yield mailkeep
    mailkeep.stop()


def cram_response(reply_text: str, secret: str = SECRET, name: str = "acme") -> str:
    challenge = base64.b64decode(reply_text)
    digest = hmac.new(secret.encode(), challenge, hashlib.md5).hexdigest()
    return base64.b64encode(f"{name} {digest}".encode()).decode()


def test_stalled_tls_handshake__slot_released(server: Mailkeep) -> None:
    stalled = []
    for _ in range(3):  # the per-client limit
        client = RawSMTP(server.smtp_port)
        client.command("EHLO client.example")
        assert client.command("STARTTLS").code == 220
        client.send(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")  # half a ClientHello
        stalled.append(client)
    time.sleep(3.5)  # past command_timeout
    with RawSMTP(server.smtp_port) as fresh:
        assert fresh.greeting.code == 220
    for client in stalled:
        client.close()
    assert "timeout during the TLS handshake" in server.log_text()


def test_second_starttls__503(server: Mailkeep) -> None:
    with RawSMTP(server.smtp_port) as client:
        client.command("EHLO client.example")
        client.command("STARTTLS")
        client.starttls()
        client.command("EHLO client.example")
        reply = client.command("STARTTLS")
    assert reply.code == 503


def test_login_forgotten_after_starttls(server: Mailkeep) -> None:
    with RawSMTP(server.odmr_port) as client:
        client.command("EHLO customer.example")
        challenge = client.command("AUTH CRAM-MD5")
        assert client.command(cram_response(challenge.lines[0])).code == 235
        client.command("STARTTLS")
        client.starttls()
        client.command("EHLO customer.example")
        reply = client.command("ATRN odmr.test")
    assert reply.code == 530


def test_failed_handshake__no_traceback(server: Mailkeep) -> None:
    mark = server.log_mark()
    with RawSMTP(server.smtp_port) as client:
        client.command("EHLO client.example")
        client.command("STARTTLS")
        client.send(b"this is not TLS\r\n")
        time.sleep(0.5)
    time.sleep(0.5)
    text = server.log_text()[mark:]
    assert "Traceback" not in text
    assert "error:" not in text


def test_etrn_password_not_utf8__501_and_not_logged(server: Mailkeep) -> None:
    with RawSMTP(server.smtp_port) as client:
        client.command("EHLO client.example")
        client.send(b"ETRN acme;SuperSecretPw\xff\r\n")
        reply = client.reply()
    assert reply.code == 501
    assert "SuperSecret" not in server.log_text()


@pytest.mark.parametrize("name", ["evil\rX-Injected: yes", "ho st", "nul\x00byte"])
def test_ehlo_control_characters__501(server: Mailkeep, name: str) -> None:
    with RawSMTP(server.smtp_port) as client:
        client.send(f"EHLO {name}\r\n".encode())
        reply = client.reply()
    assert reply.code == 501


def test_ehlo_not_utf8__501(server: Mailkeep) -> None:
    with RawSMTP(server.smtp_port) as client:
        client.send(b"EHLO h\xffst\r\n")
        assert client.reply().code == 501


def test_cram_digest_not_ascii__535(server: Mailkeep) -> None:
    with RawSMTP(server.odmr_port) as client:
        client.command("EHLO customer.example")
        client.command("AUTH CRAM-MD5")
        reply = client.command(base64.b64encode("acme éé".encode()).decode())
    assert reply.code == 535


def test_cram_initial_response__501(server: Mailkeep) -> None:
    with RawSMTP(server.odmr_port) as client:
        client.command("EHLO customer.example")
        reply = client.command("AUTH CRAM-MD5 " + base64.b64encode(b"acme 00").decode())
    assert reply.code == 501


@pytest.mark.parametrize("argument, code", [
    ("<a@example.net> SIZE=", 501),
    ("<a@example.net> =x", 501),
    ("<a@example.net> SIZE=\u0661\u0662", 501),
    ("<a@example.net> SIZE=10 SIZE=10", 501),
    ("<a@example.net> BODY=BINARYMIME", 501),
    ("<\u00fc@example.net>", 553),
])
def test_mail_parameters__rejected(server: Mailkeep, argument: str, code: int) -> None:
    with RawSMTP(server.smtp_port) as client:
        client.command("EHLO client.example")
        client.send(f"MAIL FROM:{argument}\r\n".encode())
        reply = client.reply()
    assert reply.code == code


def test_rcpt_utf8_without_smtputf8__553_5_6_7(server: Mailkeep) -> None:
    with RawSMTP(server.smtp_port) as client:
        client.command("EHLO client.example")
        client.command("MAIL FROM:<a@example.net>")
        client.send("RCPT TO:<\u00fc@odmr.test>\r\n".encode())
        reply = client.reply()
    assert reply.code == 553
    assert reply.lines[0].startswith("5.6.7")


def test_vrfy_without_argument__501(server: Mailkeep) -> None:
    with RawSMTP(server.smtp_port) as client:
        client.command("EHLO client.example")
        assert client.command("VRFY").code == 501


def test_help_lists_commands(server: Mailkeep) -> None:
    with RawSMTP(server.smtp_port) as client:
        client.command("EHLO client.example")
        reply = client.command("HELP")
    assert reply.code == 214
    assert "MAIL" in reply.lines[0]


def test_atrn_label_with_leading_hyphen__501(server: Mailkeep) -> None:
    with RawSMTP(server.odmr_port) as client:
        client.command("EHLO customer.example")
        challenge = client.command("AUTH CRAM-MD5")
        client.command(cram_response(challenge.lines[0]))
        assert client.command("ATRN -x.test").code == 501


def test_pop3_huge_message_number__err(server: Mailkeep) -> None:
    client = poplib.POP3(LOOPBACK, server.pop3_port, timeout=10)
    try:
        client.stls(__import__("ssl")._create_unverified_context())
        client.user("bob@pop.test")
        client.pass_("bob-pw")
        with pytest.raises(poplib.error_proto, match="-ERR"):
            client.retr("9" * 5000)
        with pytest.raises(poplib.error_proto, match="-ERR"):
            client.top(1, "9" * 5000)
        assert client.noop().startswith(b"+OK")
    finally:
        client.quit()


def test_pop3_password_not_utf8__auth_error(server: Mailkeep) -> None:
    client = poplib.POP3(LOOPBACK, server.pop3_port, timeout=10)
    try:
        client.stls(__import__("ssl")._create_unverified_context())
        client.user("bob@pop.test")
        client._putcmd("PASS bob-pw\xf6".encode("latin-1").decode("latin-1"))
        line = client._getline()[0]
    finally:
        client.close()
    assert line.startswith(b"-ERR [AUTH]")


def _scripted_customer(port: int, data_reply: bytes, stop: threading.Event) -> None:
    """A customer server that answers DATA with ``data_reply`` instead of 354."""
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((LOOPBACK, port))
        listener.listen()
        listener.settimeout(0.5)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except socket.timeout:
                continue
            with conn:
                conn.settimeout(5)
                conn.sendall(b"220 customer.example ESMTP\r\n")
                stream = conn.makefile("rb")
                for line in stream:
                    verb = line[:4].upper()
                    if verb in (b"EHLO", b"HELO"):
                        conn.sendall(b"250 customer.example\r\n")
                    elif verb == b"DATA":
                        conn.sendall(data_reply)
                    elif verb == b"QUIT":
                        conn.sendall(b"221 bye\r\n")
                        break
                    else:
                        conn.sendall(b"250 ok\r\n")


def test_data_answered_250_not_354__not_delivered(make_mailkeep) -> None:
    port = free_port()
    stop = threading.Event()
    thread = threading.Thread(target=_scripted_customer,
                              args=(port, b"250 ok, no body needed\r\n", stop), daemon=True)
    thread.start()
    mailkeep = make_mailkeep()
    mailkeep.add_account()
    mailkeep.add_domain("customer.test", port)
    mailkeep.start()
    try:
        queue_id = send_message(mailkeep.smtp_port, "a@sender.example", ["u@customer.test"],
                                "Subject: x\r\n\r\nbody\r\n")
        mailkeep.wait_for_log(rf"{queue_id}: to=<u@customer.test>.*status=deferred")
        entries = wait_until(lambda: [e for e in mailkeep.queue_json() if e["state"] != "active"],
                             message="the deferral to be committed")
        assert entries[0]["queue_id"] == queue_id
        assert "unexpected reply to DATA" in entries[0]["recipients"][0]["delay_reason"]
    finally:
        stop.set()
        thread.join(5)


def test_dead_destination_with_several_jobs__deferred_once(make_mailkeep, make_sink) -> None:
    sink = make_sink(start=False)
    mailkeep = make_mailkeep()
    mailkeep.add_account()
    mailkeep.add_domain("customer.test", sink.port)
    mailkeep.start()
    with __import__("smtplib").SMTP(LOOPBACK, mailkeep.smtp_port, timeout=10) as smtp:
        for number in range(5):
            smtp.sendmail("a@sender.example", ["u@customer.test"], f"Subject: {number}\r\n\r\nx\r\n")
    wait_until(lambda: mailkeep.log_text().count("status=deferred") >= 5, message="5 deferrals")
    entries = wait_until(lambda: (found := mailkeep.queue_json()) and
                         all(e["queue_name"] == "deferred" for e in found) and found,
                         message="every message to be deferred, none left in delivery")
    assert len(entries) == 5
    time.sleep(3)  # nothing is due again before retry_min: no reconnect loop
    assert mailkeep.log_text().count("status=deferred") == 5
    assert "Connection refused" in entries[0]["recipients"][0]["delay_reason"]


def test_relayhost_without_port__defaults_to_25(tmp_path) -> None:
    from mailkeep.config import load
    path = tmp_path / "mk.toml"
    path.write_text('[delivery]\nrelayhost = "smarthost.example"\n')
    assert load(str(path)).delivery.relayhost == "smarthost.example"
    path.write_text('[delivery]\nrelayhost = "smart host:x"\n')
    with pytest.raises(Exception, match="relayhost"):
        load(str(path))
