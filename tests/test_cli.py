"""The ``mailkeep`` command line, run as a separate process against a running server
where the behaviour depends on one."""

from __future__ import annotations

import json
import re
import smtplib
import socket
import time

import pytest

from conftest import CUSTOMER
from helpers import LOOPBACK, Mailkeep, send_message, wait_until

pytestmark = pytest.mark.timeout(60)

HEADING = "----Queue ID----- --Size-- ---Arrival Time---- --Sender/Recipient------"
UNKNOWN_ID = "3H8ZZZZZZZZZZ"


@pytest.fixture
def queued(mailkeep, make_sink):
    """A running server with one message deferred because the customer's server is down.

    Returns:
        The installation, the sink (not started) and the queue id.
    """
    sink = make_sink(start=False)
    mailkeep.add_account()
    mailkeep.add_domain(CUSTOMER, sink.port)
    mailkeep.start()
    queue_id = send_message(mailkeep.smtp_port, "ann@sender.example", [f"user@{CUSTOMER}"],
                            "Subject: queued\r\n\r\nbody\r\n")
    mailkeep.wait_for_log(rf"{queue_id}: to=<user@{CUSTOMER}>, .*status=deferred")
    return mailkeep, sink, queue_id


# -- changes take effect while the server runs ------------------------------------------


def test_new_domain__accepted_at_next_rcpt(mx, sink):
    with smtplib.SMTP(LOOPBACK, mx.smtp_port, local_hostname="client.example",
                      timeout=10) as client:
        client.ehlo()
        assert client.mail("ann@sender.example")[0] == 250
        code, text = client.rcpt("user@new.test")
        assert code == 550, text

        mx.cli_ok("domain", "add", "new.test", "--account", "acme", "--host", LOOPBACK,
                  "--port", str(sink.port))
        code, text = client.rcpt("user@new.test")
        assert code == 250, text
        code, text = client.data("Subject: to the new domain\r\n\r\nbody\r\n")
        assert code == 250, text

    [delivered] = sink.wait_for(1)
    assert delivered.rcpt_tos == ["user@new.test"]


# -- queue list ----------------------------------------------------------------------------


def test_queue_list__postqueue_shape(queued):
    mailkeep, sink, queue_id = queued
    lines = mailkeep.cli_ok("queue", "list").split("\n")
    [message] = mailkeep.queue_json()
    reason = f"connect to 127.0.0.1[127.0.0.1]:{sink.port}: "

    assert lines[0] == HEADING
    sender_line = lines[1]
    assert sender_line[:18] == f"{queue_id:<17} "
    assert sender_line[18:27] == f"{message['message_size']:>8} "
    arrival = time.asctime(time.localtime(message["arrival_time"]))[:19]
    assert sender_line[27:47] == f"{arrival} "
    assert sender_line[47:] == "ann@sender.example"
    assert lines[2].lstrip().startswith(f"({reason}")
    assert lines[2].endswith(")")
    assert lines[3] == " " * 47 + f"user@{CUSTOMER}"
    assert lines[4] == ""
    assert lines[5] == f"-- {message['message_size'] // 1024} Kbytes in 1 Request."
    assert lines[6:] == [""]


def test_queue_list_json__object_per_message(queued):
    mailkeep, sink, queue_id = queued
    second = send_message(mailkeep.smtp_port, "", [f"user@{CUSTOMER}", f"other@{CUSTOMER}"],
                          "Subject: second\r\n\r\nbody\r\n")
    mailkeep.wait_for_log(rf"{second}: to=<other@{CUSTOMER}>, .*status=deferred")

    lines = mailkeep.cli_ok("queue", "list", "--json").splitlines()
    assert len(lines) == 2
    first, other = [json.loads(line) for line in lines]
    assert first["queue_id"] == queue_id
    assert first["queue_name"] == "deferred"
    assert first["sender"] == "ann@sender.example"
    assert isinstance(first["arrival_time"], int)
    assert abs(first["arrival_time"] - time.time()) < 60
    assert first["message_size"] > 0
    assert first["forced_expire"] is False
    assert [r["address"] for r in first["recipients"]] == [f"user@{CUSTOMER}"]
    assert first["recipients"][0]["delay_reason"].startswith("connect to 127.0.0.1")
    assert other["queue_id"] == second
    assert other["sender"] == ""
    assert [r["address"] for r in other["recipients"]] == [f"user@{CUSTOMER}",
                                                           f"other@{CUSTOMER}"]


def test_queue_list_null_sender__shown_as_mailer_daemon(queued):
    mailkeep, _sink, _queue_id = queued
    second = send_message(mailkeep.smtp_port, "", [f"user@{CUSTOMER}"], "Subject: x\r\n\r\nx\r\n")
    listing = mailkeep.cli_ok("queue", "list")
    assert re.search(rf"^{second}\S*\s+\d+ .{{19}} MAILER-DAEMON$", listing, re.M)
    assert listing.endswith(" in 2 Requests.\n")


def test_queue_list_empty__says_so(mailkeep):
    assert mailkeep.cli_ok("queue", "list") == "Mail queue is empty\n"
    assert mailkeep.cli_ok("queue", "list", "--json") == ""


# -- queue show, hold, release, delete ---------------------------------------------------


def test_queue_show__envelope_and_attempts(queued):
    mailkeep, sink, queue_id = queued
    out = mailkeep.cli_ok("queue", "show", queue_id)
    assert f"queue id:  {queue_id}" in out
    assert "sender:    <ann@sender.example>" in out
    assert "client:    unknown[127.0.0.1] helo=client.example" in out
    assert re.search(r"^size:      \d+ bytes$", out, re.M)
    assert re.search(rf"^  <user@{CUSTOMER}> deferred, attempts=1", out, re.M)
    assert f"    last error: connect to 127.0.0.1[127.0.0.1]:{sink.port}: " in out
    assert re.search(rf"^attempts:\n  .* <user@{CUSTOMER}> relay=127\.0\.0\.1:{sink.port} "
                     r"status=deferred \(connect to ", out, re.M)

    headers = mailkeep.cli_ok("queue", "show", queue_id, "--headers")
    assert "Received: from client.example (unknown [127.0.0.1])" in headers
    assert "Subject: queued" in headers


def test_queue_hold__not_delivered_until_released(queued):
    mailkeep, sink, queue_id = queued
    result = mailkeep.cli("queue", "hold", queue_id)
    assert result.returncode == 0, result.stderr
    assert f"{queue_id}: placed on hold" in result.stderr
    assert re.search(rf"^{queue_id}! ", mailkeep.cli_ok("queue", "list"), re.M)
    assert mailkeep.queue_json()[0]["queue_name"] == "hold"

    sink.start()
    mailkeep.cli_ok("queue", "retry", queue_id)
    time.sleep(1.5)  # the scheduler looks for due mail every second
    assert sink.messages == []

    result = mailkeep.cli("queue", "release", queue_id)
    assert result.returncode == 0, result.stderr
    assert f"{queue_id}: released from hold" in result.stderr
    sink.wait_for(1)
    mailkeep.wait_for_log(rf"{queue_id}: to=<user@{CUSTOMER}>, .*status=sent")


def test_queue_delete__removes_message(queued):
    mailkeep, sink, queue_id = queued
    result = mailkeep.cli("queue", "delete", queue_id)
    assert result.returncode == 0, result.stderr
    assert f"{queue_id}: removed" in result.stderr
    assert result.stdout == ""
    assert mailkeep.cli_ok("queue", "list") == "Mail queue is empty\n"


# -- errors --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Mailkeep:
    """An installation with account ``acme`` owning ``customer.test``; no server runs."""
    mailkeep = Mailkeep(tmp_path_factory.mktemp("cli"))
    mailkeep.add_account()
    mailkeep.add_domain(CUSTOMER, 2525)
    return mailkeep


@pytest.mark.parametrize("args, value", [
    (("domain", "show", "nosuch.test"), "nosuch.test"),
    (("domain", "set", "nosuch.test", "--port", "2526"), "nosuch.test"),
    (("domain", "remove", "nosuch.test"), "nosuch.test"),
    (("domain", "add", "new.test", "--account", "nobody", "--host", LOOPBACK), "nobody"),
    (("domain", "set", CUSTOMER, "--account", "nobody"), "nobody"),
    (("account", "remove", "nobody"), "nobody"),
    (("account", "passwd", "nobody", "--password-stdin"), "nobody"),
    (("queue", "show", UNKNOWN_ID), UNKNOWN_ID),
    (("queue", "hold", UNKNOWN_ID), UNKNOWN_ID),
    (("queue", "release", UNKNOWN_ID), UNKNOWN_ID),
    (("queue", "delete", UNKNOWN_ID), UNKNOWN_ID),
    (("queue", "retry", UNKNOWN_ID), UNKNOWN_ID),
    (("queue", "flush", "nosuch.test"), "nosuch.test"),
    (("queue", "retry", "--domain", "nosuch.test"), "nosuch.test"),
])
def test_unknown_name__one_line_error(installed, args, value):
    result = installed.cli(*args, input="new-password\n")
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert value in result.stderr
    assert result.stderr.startswith("mailkeep: ")
    assert result.stderr.count("\n") == 1, result.stderr


def test_domain_add_without_host__fails(installed):
    result = installed.cli("domain", "add", "nohost.test", "--account", "acme", "--mode", "smtp")
    assert result.returncode != 0
    assert "--host" in result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert "nohost.test" not in installed.cli_ok("domain", "list")


def test_serve_on_busy_port__fails_naming_address(mailkeep):
    with socket.socket() as holder:
        holder.bind((LOOPBACK, mailkeep.smtp_port))
        holder.listen()
        result = mailkeep.cli("serve", "--no-tui", timeout=30)
    assert result.returncode != 0
    assert f"{LOOPBACK}:{mailkeep.smtp_port}" in result.stderr
    assert "already in use" in result.stderr
    assert "Traceback" not in result.stderr
