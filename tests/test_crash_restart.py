"""The server process: kill -9 loses no accepted mail, SIGTERM stops cleanly, and the log
has the lines operators grep for."""

from __future__ import annotations

import re
import signal
import socket
import uuid

import pytest

from conftest import CUSTOMER
from helpers import HOSTNAME, LOOPBACK, RawSMTP, send_message, wait_until

pytestmark = pytest.mark.timeout(60)

SHORT_HOST = HOSTNAME.split(".")[0]


def test_kill_9_after_250__delivered_after_restart(mailkeep, make_sink):
    sink = make_sink(start=False)
    mailkeep.add_account()
    mailkeep.add_domain(CUSTOMER, sink.port)
    mailkeep.start()
    marks = [uuid.uuid4().hex for _ in range(3)]
    queue_ids = [send_message(mailkeep.smtp_port, "ann@sender.example", [f"user@{CUSTOMER}"],
                              f"Subject: {mark}\r\n\r\nbody\r\n") for mark in marks]
    mailkeep.kill()

    mailkeep.start()
    queued = {message["queue_id"] for message in mailkeep.queue_json()}
    assert queued == set(queue_ids)
    sink.start()
    mailkeep.admin("queue", "retry", "--domain", CUSTOMER)
    sink.wait_for(3)
    for mark in marks:
        assert len(sink.with_token(mark)) == 1
    for queue_id in queue_ids:
        mailkeep.wait_for_log(rf"{queue_id}: to=<user@{CUSTOMER}>, .*status=sent")
    # The delivery log line is written just before the commit that removes the message.
    wait_until(lambda: mailkeep.admin("queue", "list") == "Mail queue is empty\n",
               message="the queue to be empty")


def test_kill_9_during_delivery__delivered_after_restart(mailkeep, make_sink):
    sink = make_sink(start=False)
    mailkeep.add_account()
    mailkeep.add_domain(CUSTOMER, sink.port)
    mailkeep.start()
    # The kernel completes connections to a listening socket that never accepts them, so
    # the delivery waits for a greeting that never comes and the message stays in delivery.
    with socket.socket() as silent:
        silent.bind((LOOPBACK, sink.port))
        silent.listen(8)
        queue_id = send_message(mailkeep.smtp_port, "ann@sender.example",
                                [f"user@{CUSTOMER}"], "Subject: in delivery\r\n\r\nbody\r\n")
        wait_until(lambda: re.search(rf"^{queue_id}\*", mailkeep.admin("queue", "list"), re.M),
                   message="the `*` mark of a message in delivery")
        mailkeep.kill()

    sink.start()
    mailkeep.start()
    # No retry command: a message left in delivery by a crash is due again at once.
    [delivered] = sink.wait_for(1)
    assert b"Subject: in delivery" in delivered.data
    mailkeep.wait_for_log(rf"{queue_id}: to=<user@{CUSTOMER}>, .*status=sent")


def test_sigterm_during_data__transaction_finishes(mx, sink):
    mark = uuid.uuid4().hex
    with RawSMTP(mx.smtp_port) as client:
        client.command("EHLO client.example")
        assert client.command("MAIL FROM:<ann@sender.example>").code == 250
        assert client.command(f"RCPT TO:<user@{CUSTOMER}>").code == 250
        assert client.command("DATA").code == 354
        client.send(f"Subject: {mark}\r\n\r\nfirst half\r\n")
        mx.process.send_signal(signal.SIGTERM)
        mx.wait_for_log("terminating on request")
        client.send("second half\r\n.\r\n")
        reply = client.reply()
        assert reply.code == 250, reply.text
        queue_id = re.search(r"queued as (\w+)", reply.text).group(1)
    assert mx.process.wait(15) == 0

    mx.start()
    [delivered] = sink.wait_for(1, lambda m: mark.encode() in m.data)
    assert b"first half\r\nsecond half\r\n" in delivered.data
    mx.wait_for_log(rf"{queue_id}: to=<user@{CUSTOMER}>, .*status=sent")
    assert len(sink.with_token(mark)) == 1


def test_sigterm_with_idle_session__421_then_clean_exit(mx):
    with RawSMTP(mx.smtp_port) as client:
        assert client.command("EHLO client.example").code == 250
        mx.process.send_signal(signal.SIGTERM)
        reply = client.reply()
        assert reply.code == 421, reply.text
        assert reply.enhanced == "4.3.2"
    assert mx.process.wait(15) == 0
    assert "daemon stopped" in mx.log_text()


def test_sigterm_when_idle__postfix_log_lines(mx, sink):
    queue_id = send_message(mx.smtp_port, "ann@sender.example", [f"user@{CUSTOMER}"],
                            "Subject: log lines\r\n\r\nbody\r\n")
    mx.wait_for_log(rf"{queue_id}: to=<user@{CUSTOMER}>, .*status=sent")

    assert mx.stop() == 0
    log = mx.log_text()
    prefix = rf"^[A-Z][a-z]{{2}} [ 0-9]\d \d\d:\d\d:\d\d {SHORT_HOST} mailkeep/"
    address = re.escape(f"{LOOPBACK}:{mx.smtp_port}")
    assert re.search(rf"{prefix}master\[0\]: listening for smtp on {address}$", log, re.M)
    connect = re.search(rf"{prefix}smtpd\[(\d+)\]: connect from unknown\[127\.0\.0\.1\]$",
                        log, re.M)
    assert connect
    # pflogsumm pairs connect and disconnect lines by the number in brackets.
    session = connect.group(1)
    assert re.search(
        rf"{prefix}smtpd\[{session}\]: disconnect from unknown\[127\.0\.0\.1\] "
        rf"ehlo=1 mail=1 rcpt=1 data=1 quit=1 commands=5$", log, re.M)
    assert re.search(
        rf"{prefix}smtpd\[{session}\]: {queue_id}: client=unknown\[127\.0\.0\.1\]$",
        log, re.M)
    assert re.search(
        rf"{prefix}qmgr\[\d+\]: {queue_id}: from=<ann@sender\.example>, size=\d+, nrcpt=1 "
        rf"\(queue active\)$", log, re.M)
    sent = re.search(
        rf"{prefix}smtp\[\d+\]: {queue_id}: to=<user@{CUSTOMER}>, "
        rf"relay=127\.0\.0\.1\[127\.0\.0\.1\]:{sink.port}, (conn_use=\d+, )?"
        rf"delay=[\d.]+, delays=[\d.]+/[\d.]+/[\d.]+/[\d.]+, dsn=2\.0\.0, "
        rf"status=sent \(250 2\.0\.0 Ok: stored\)$", log, re.M)
    assert sent, log
    assert re.search(rf"{prefix}master\[0\]: daemon stopped$", log, re.M)
    assert "Traceback" not in log
