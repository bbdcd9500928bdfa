"""Receiving over SMTP: real clients (swaks, smtplib, raw sockets) against a running server.

One server and one sink serve the whole module, so each test finds its own
mail by a unique token in the content.
"""

from __future__ import annotations

import re
import shutil
import smtplib
import subprocess
import uuid
from pathlib import Path
from typing import Iterator

import pytest

from conftest import CUSTOMER
from helpers import HOSTNAME, LOOPBACK, Mailkeep, RawSMTP, Sink

MAX_SIZE = 64 * 1024
MAX_RECEIVED = 10
MAX_RECIPIENTS = 5
SWAKS = shutil.which("swaks")

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    """A running server hosting ``customer.test`` with a small size and hop limit."""
    sink = Sink().start()
    mailkeep = Mailkeep(tmp_path_factory.mktemp("receive"),
                        limits={"max_message_size": MAX_SIZE, "max_received_headers": MAX_RECEIVED,
                                "max_recipients": MAX_RECIPIENTS})
    try:
        mailkeep.add_account()
        mailkeep.add_domain(CUSTOMER, sink.port)
        mailkeep.start()
        yield mailkeep, sink
    finally:
        mailkeep.stop()
        sink.stop()


@pytest.fixture
def smtp(server) -> Iterator[smtplib.SMTP]:
    """An smtplib session to the server, after EHLO."""
    mailkeep, _sink = server
    with smtplib.SMTP(LOOPBACK, mailkeep.smtp_port, local_hostname="client.example",
                      timeout=10) as client:
        client.ehlo()
        yield client


def token() -> str:
    return uuid.uuid4().hex


def split_received(data: bytes) -> tuple[bytes, bytes]:
    """Split delivered content into its first header field (with folded lines) and the rest."""
    end = data.index(b"\r\n") + 2
    while data[end:end + 1] in (b" ", b"\t"):
        end = data.index(b"\r\n", end) + 2
    return data[:end], data[end:]


def run_swaks(port: int, message: Path, *extra: str) -> str:
    if SWAKS is None:
        pytest.fail("swaks is missing: run `make test`, or `apt-get install swaks`")
    result = subprocess.run(
        [SWAKS, "--server", f"{LOOPBACK}:{port}", "--helo", "client.example",
         "--from", "ann@sender.example", "--to", f"user@{CUSTOMER}", "--data", str(message),
         *extra],
        capture_output=True, text=True, timeout=30,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return re.search(r"queued as (\w+)", result.stdout).group(1)


# -- the delivered bytes ---------------------------------------------------------------


def swaks_message(tmp_path: Path, mark: str) -> tuple[Path, bytes]:
    """Write a message file for swaks; return it and the bytes swaks will send as content.

    swaks adds a CRLF after the file's last line and dot-stuffs lines itself.
    """
    content = (
        "From: Ann <ann@sender.example>\r\n"
        f"To: user@{CUSTOMER}\r\n"
        f"Subject: swaks {mark}\r\n"
        f"Message-ID: <{mark}@sender.example>\r\n"
        "\r\n"
        "First line.\r\n"
        ".A line that starts with a dot\r\n"
        "..and one with two\r\n"
        ".\r\n"
        "Trailing spaces   \r\n"
        "\tA tab, and 8-bit text: Grüße\r\n"
        "last line"
    ).encode()
    path = tmp_path / "message.eml"
    path.write_bytes(content)
    return path, content + b"\r\n"


def test_swaks_message__delivered_with_received_only(server, tmp_path):
    mailkeep, sink = server
    mark = token()
    path, sent = swaks_message(tmp_path, mark)
    queue_id = run_swaks(mailkeep.smtp_port, path)

    delivered = sink.wait_for(1, lambda m: mark.encode() in m.data)[0]
    received, rest = split_received(delivered.data)
    assert rest == sent
    assert received.startswith(b"Received: from client.example (unknown [127.0.0.1])\r\n")
    assert f"by {HOSTNAME} (Mailkeep) with ESMTP id {queue_id}".encode() in received
    assert f"for <user@{CUSTOMER}>;".encode() in received
    assert delivered.mail_from == "ann@sender.example"
    assert delivered.rcpt_tos == [f"user@{CUSTOMER}"]


def test_swaks_over_starttls__received_names_tls(server, tmp_path):
    mailkeep, sink = server
    mark = token()
    path, sent = swaks_message(tmp_path, mark)
    queue_id = run_swaks(mailkeep.smtp_port, path, "--tls")

    delivered = sink.wait_for(1, lambda m: mark.encode() in m.data)[0]
    received, rest = split_received(delivered.data)
    assert rest == sent
    assert b"(using TLSv1." in received
    assert f"with ESMTPS id {queue_id}".encode() in received


# -- relay protection --------------------------------------------------------------------


@pytest.mark.parametrize("recipient", [
    "<user@outside.test>",
    f"<@{CUSTOMER}:user@outside.test>",
    f"<@{CUSTOMER},@relay.test:user@outside.test>",
    f"<user%outside.test@{CUSTOMER}>",
    f'<"user@outside.test"@{CUSTOMER}>',
    f"<outside.test!user@{CUSTOMER}>",
    "<user@[127.0.0.1]>",
    f"<user@{CUSTOMER}.outside.test>",
])
def test_relay_attempt__rejected_with_571(smtp, recipient):
    assert smtp.mail("ann@sender.example")[0] == 250
    code, text = smtp.docmd("RCPT TO:" + recipient)
    assert code == 550, text
    assert text.startswith(b"5.7.1 "), text


@pytest.mark.parametrize("recipient", [
    "<USER@Customer.TEST>",
    f"<postmaster@{CUSTOMER}>",
    "<postmaster>",
    "<Postmaster>",
])
def test_hosted_recipient__accepted(smtp, recipient):
    assert smtp.mail("ann@sender.example")[0] == 250
    code, text = smtp.docmd("RCPT TO:" + recipient)
    assert code == 250, text
    assert text.startswith(b"2.1.5 "), text


def test_recipient_over_limit__deferred_with_452(smtp):
    assert smtp.mail("ann@sender.example")[0] == 250
    for number in range(MAX_RECIPIENTS):
        assert smtp.rcpt(f"user{number}@{CUSTOMER}")[0] == 250
    code, text = smtp.rcpt(f"one-more@{CUSTOMER}")
    assert code == 452, text
    assert text.startswith(b"4.5.3 "), text


# -- EHLO and enhanced status codes -----------------------------------------------------


def test_ehlo__offers_required_extensions(server):
    mailkeep, _sink = server
    with RawSMTP(mailkeep.smtp_port) as client:
        reply = client.command("EHLO client.example")
    assert reply.code == 250
    keywords = {line.split()[0].upper() for line in reply.lines[1:]}
    for keyword in ("SIZE", "8BITMIME", "PIPELINING", "ENHANCEDSTATUSCODES", "SMTPUTF8",
                    "STARTTLS"):
        assert keyword in keywords
    assert f"SIZE {MAX_SIZE}" in reply.lines


def test_normal_session__every_reply_has_enhanced_code(server):
    mailkeep, sink = server
    mark = token()
    replies = {}
    with RawSMTP(mailkeep.smtp_port) as client:
        client.command("EHLO client.example")
        replies["RCPT before MAIL"] = client.command(f"RCPT TO:<user@{CUSTOMER}>")
        replies["MAIL"] = client.command("MAIL FROM:<ann@sender.example>")
        replies["RCPT"] = client.command(f"RCPT TO:<user@{CUSTOMER}>")
        replies["RCPT refused"] = client.command("RCPT TO:<user@outside.test>")
        assert client.command("DATA").code == 354
        client.send(f"Subject: {mark}\r\n\r\nbody\r\n.\r\n")
        replies["end of data"] = client.reply()
        replies["NOOP"] = client.command("NOOP")
        replies["VRFY"] = client.command(f"VRFY user@{CUSTOMER}")
        replies["HELP"] = client.command("HELP")
        replies["RSET"] = client.command("RSET")
        replies["DATA without MAIL"] = client.command("DATA")
        replies["unknown command"] = client.command("FOO")
        replies["QUIT"] = client.command("QUIT")
    for name, reply in replies.items():
        assert reply.enhanced is not None, f"{name}: {reply.text}"
        assert reply.enhanced[0] == str(reply.code)[0], f"{name}: {reply.text}"
    assert replies["end of data"].code == 250
    sink.wait_for(1, lambda m: mark.encode() in m.data)


def test_pipelined_envelope__replies_in_order(server):
    mailkeep, sink = server
    mark = token()
    with RawSMTP(mailkeep.smtp_port) as client:
        client.command("EHLO client.example")
        client.send("MAIL FROM:<ann@sender.example>\r\n"
                    f"RCPT TO:<user@{CUSTOMER}>\r\n"
                    "RCPT TO:<user@outside.test>\r\n"
                    "DATA\r\n")
        codes = [client.reply().code for _ in range(4)]
        assert codes == [250, 250, 550, 354]
        # On the wire a leading dot is doubled; the content keeps one.
        client.send(f"..{mark}\r\n.\r\n")
        assert client.reply().code == 250

    [delivered] = sink.wait_for(1, lambda m: mark.encode() in m.data)
    assert delivered.data.endswith(f"\r\n.{mark}\r\n".encode())
    assert delivered.rcpt_tos == [f"user@{CUSTOMER}"]


# -- STARTTLS command injection ---------------------------------------------------------


@pytest.mark.parametrize("injected", ["RSET", "MAIL FROM:<evil@outside.test>"])
def test_starttls__pipelined_plaintext_command_discarded(server, injected):
    mailkeep, _sink = server
    with RawSMTP(mailkeep.smtp_port) as client:
        client.command("EHLO client.example")
        client.send(f"STARTTLS\r\n{injected}\r\n")
        assert client.reply().code == 220
        client.starttls()
        # A command run from the plaintext buffer would send a reply that nothing requested.
        assert client.silent_for(0.5), f"unrequested reply inside TLS: {client.buffer!r}"
        assert client.command("EHLO client.example").code == 250
        reply = client.command("MAIL FROM:<ann@sender.example>")
        assert reply.code == 250, reply.text


# -- size limit --------------------------------------------------------------------------


def test_mail_from_size_over_limit__rejected_with_552(smtp):
    code, text = smtp.mail("ann@sender.example", [f"SIZE={MAX_SIZE + 1}"])
    assert code == 552, text
    assert text.startswith(b"5.3.4 "), text


def test_mail_from_size_at_limit__accepted(smtp):
    code, text = smtp.mail("ann@sender.example", [f"SIZE={MAX_SIZE}"])
    assert code == 250, text


def test_data_over_limit__552_session_usable(server, smtp):
    _mailkeep, sink = server
    mark = token()
    line = "x" * 76 + "\r\n"
    big = f"Subject: big {mark}\r\n\r\n" + line * (MAX_SIZE // len(line) + 10)
    assert smtp.mail("ann@sender.example")[0] == 250
    assert smtp.rcpt(f"user@{CUSTOMER}")[0] == 250
    code, text = smtp.data(big)
    assert code == 552, text
    assert text.startswith(b"5.3.4 "), text

    assert smtp.rset()[0] == 250
    small = f"Subject: small {mark}\r\n\r\nafter the big one\r\n"
    assert smtp.sendmail("ann@sender.example", [f"user@{CUSTOMER}"], small) == {}
    delivered = sink.wait_for(1, lambda m: mark.encode() in m.data)
    assert [m for m in delivered if b"big " + mark.encode() in m.data] == []


# -- mail loops --------------------------------------------------------------------------


def with_received_headers(count: int, mark: str) -> str:
    hops = "".join(f"Received: from hop{i}.example by hop{i + 1}.example; "
                   f"Fri, 4 Dec 2026 10:00:00 +0000\r\n" for i in range(count))
    return f"{hops}Subject: loop {mark}\r\n\r\nbody\r\n"


def test_too_many_received_headers__rejected_with_554(smtp):
    assert smtp.mail("ann@sender.example")[0] == 250
    assert smtp.rcpt(f"user@{CUSTOMER}")[0] == 250
    code, text = smtp.data(with_received_headers(MAX_RECEIVED + 1, token()))
    assert code == 554, text
    assert text.startswith(b"5.4.6 "), text


def test_received_headers_below_limit__accepted(smtp):
    assert smtp.mail("ann@sender.example")[0] == 250
    assert smtp.rcpt(f"user@{CUSTOMER}")[0] == 250
    code, text = smtp.data(with_received_headers(MAX_RECEIVED - 1, token()))
    assert code == 250, text


def test_received_lines_in_body__not_counted(smtp):
    body = "".join(f"Received: from hop{i}.example\r\n" for i in range(MAX_RECEIVED * 2))
    assert smtp.mail("ann@sender.example")[0] == 250
    assert smtp.rcpt(f"user@{CUSTOMER}")[0] == 250
    code, text = smtp.data(f"Subject: quoted hops {token()}\r\n\r\n{body}")
    assert code == 250, text


# -- bare line ends (SMTP smuggling) ----------------------------------------------------


def test_bare_lf_and_cr__sink_gets_crlf_only(server):
    mailkeep, sink = server
    mark = token()
    # After "\n.\r\n" a lenient receiver would take the rest as new commands.
    smuggled = (
        "before\n.\r\n"
        "MAIL FROM:<evil@outside.test>\r\n"
        f"RCPT TO:<victim@{CUSTOMER}>\r\n"
        "DATA\r\n"
        "Subject: smuggled\r\n"
        "\r\n"
        "evil\n.\n"
        "bare\rcarriage return\r\n"
        "after\r\n"
    )
    with RawSMTP(mailkeep.smtp_port) as client:
        client.command("EHLO client.example")
        assert client.command("MAIL FROM:<ann@sender.example>").code == 250
        assert client.command(f"RCPT TO:<user@{CUSTOMER}>").code == 250
        assert client.command("DATA").code == 354
        client.send(f"Subject: smuggling {mark}\r\n\r\n{smuggled}.\r\n")
        reply = client.reply()
        assert reply.code == 250, reply.text
        client.command("QUIT")

    delivered = sink.wait_for(1, lambda m: mark.encode() in m.data)
    assert len(delivered) == 1
    data = delivered[0].data
    assert re.search(rb"[^\r]\n", data) is None, "bare LF reached the sink"
    assert re.search(rb"\r(?!\n)", data) is None, "bare CR reached the sink"
    _received, content = split_received(data)
    assert content == (
        f"Subject: smuggling {mark}\r\n\r\n".encode()
        + smuggled.replace("\r\n", "\n").replace("\r", "\n").replace("\n", "\r\n").encode()
    )
    assert all(f"victim@{CUSTOMER}" not in m.rcpt_tos for m in sink.messages)
    assert all(m.mail_from != "evil@outside.test" for m in sink.messages)
    mailkeep.wait_for_log(r"disconnect from unknown\[127\.0\.0\.1\] .*notes=bare_lf")
