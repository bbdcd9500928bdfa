"""Push delivery (mode smtp): deferral while the customer's server is down, retries,
and delivery status notifications for permanent failures."""

from __future__ import annotations

import uuid
from email import message_from_bytes
from email.policy import default as default_policy

import pytest

from conftest import CUSTOMER
from helpers import HOSTNAME, send_message, wait_until

pytestmark = pytest.mark.timeout(60)

SENDER_DOMAIN = "sender.test"
"""A second hosted domain, so notifications to its users go to a sink too."""


def subject(mark: str) -> str:
    return f"Subject: {mark}\r\n\r\nbody\r\n"


@pytest.fixture
def down(mailkeep, make_sink):
    """A running server whose customer server is down; its sink is made but not started."""
    sink = make_sink(start=False)
    mailkeep.add_account()
    mailkeep.add_domain(CUSTOMER, sink.port)
    return mailkeep, sink


def wait_deferred(mailkeep, queue_id: str, port: int, since: int = 0) -> None:
    mailkeep.wait_for_log(
        rf"{queue_id}: to=<user@{CUSTOMER}>, relay=.*status=deferred "
        rf"\(connect to 127\.0\.0\.1\[127\.0\.0\.1\]:{port}: ", since=since,
    )


def test_customer_down__mail_deferred_with_connect_error(down):
    mailkeep, sink = down
    mailkeep.start()
    queue_id = send_message(mailkeep.smtp_port, "ann@sender.example", [f"user@{CUSTOMER}"],
                            subject("down"))
    wait_deferred(mailkeep, queue_id, sink.port)
    # The log line comes before the commit that records the deferral.
    listing = wait_until(lambda: (text := mailkeep.admin("queue", "list")) and "*" not in text
                         and text, message="the deferral to be committed")
    assert queue_id in listing
    assert f"(connect to 127.0.0.1[127.0.0.1]:{sink.port}: " in listing
    [message] = mailkeep.queue_json()
    assert message["queue_id"] == queue_id
    assert message["queue_name"] == "deferred"
    [recipient] = message["recipients"]
    assert recipient["address"] == f"user@{CUSTOMER}"
    assert recipient["delay_reason"].startswith(f"connect to 127.0.0.1[127.0.0.1]:{sink.port}: ")


def test_customer_back__queue_retry_domain_delivers(down):
    mailkeep, sink = down
    mailkeep.start()
    marks = [uuid.uuid4().hex for _ in range(3)]
    queue_ids = [send_message(mailkeep.smtp_port, "ann@sender.example", [f"user@{CUSTOMER}"],
                              subject(mark)) for mark in marks]
    for queue_id in queue_ids:
        wait_deferred(mailkeep, queue_id, sink.port)
    sink.start()

    mailkeep.admin("queue", "retry", "--domain", CUSTOMER)
    # The default first retry is a minute away, so only the command can deliver this soon.
    sink.wait_for(3)
    for mark in marks:
        assert len(sink.with_token(mark)) == 1
    for queue_id in queue_ids:
        mailkeep.wait_for_log(rf"{queue_id}: to=<user@{CUSTOMER}>, .*status=sent")
    # One connection carries all three: the third message is its third use.
    mailkeep.wait_for_log(r"conn_use=3, .*status=sent")
    assert mailkeep.admin("queue", "list") == "Mail queue is empty\n"


def test_temporary_rejection__deferred_then_delivered(mx, sink):
    sink.rcpt_replies[f"busy@{CUSTOMER}"] = "451 4.3.0 try again later"
    queue_id = send_message(mx.smtp_port, "ann@sender.example", [f"busy@{CUSTOMER}"],
                            subject("busy"))
    mx.wait_for_log(rf"{queue_id}: to=<busy@{CUSTOMER}>, .*dsn=4\.3\.0, "
                    r"status=deferred \(451 4\.3\.0 try again later\)")
    [message] = mx.queue_json()
    assert message["recipients"][0]["delay_reason"] == "451 4.3.0 try again later"
    assert sink.messages == []

    del sink.rcpt_replies[f"busy@{CUSTOMER}"]
    mx.admin("queue", "retry", queue_id)
    [delivered] = sink.wait_for(1)
    assert delivered.rcpt_tos == [f"busy@{CUSTOMER}"]
    assert "sender non-delivery notification" not in mx.log_text()


def test_customer_offers_starttls__delivered_over_tls(mailkeep, make_sink):
    sink = make_sink(tls=True)
    mailkeep.add_account()
    mailkeep.add_domain(CUSTOMER, sink.port)
    mailkeep.start()
    queue_id = send_message(mailkeep.smtp_port, "ann@sender.example", [f"user@{CUSTOMER}"],
                            subject("over tls"))

    [delivered] = sink.wait_for(1)
    assert delivered.tls
    mailkeep.wait_for_log(rf"{queue_id}: to=<user@{CUSTOMER}>, .*status=sent")


def test_customer_back__retry_timer_delivers(make_mailkeep, make_sink):
    mailkeep = make_mailkeep(queue={"retry_min": "1s"})
    sink = make_sink(start=False)
    mailkeep.add_account()
    mailkeep.add_domain(CUSTOMER, sink.port)
    mailkeep.start()
    mark = uuid.uuid4().hex
    queue_id = send_message(mailkeep.smtp_port, "ann@sender.example", [f"user@{CUSTOMER}"],
                            subject(mark))
    wait_deferred(mailkeep, queue_id, sink.port)
    sink.start()

    [delivered] = sink.wait_for(1)
    assert mark.encode() in delivered.data
    mailkeep.wait_for_log(rf"{queue_id}: to=<user@{CUSTOMER}>, .*status=sent")


def test_sink_restart__same_port_works(mx, sink):
    first = send_message(mx.smtp_port, "ann@sender.example", [f"user@{CUSTOMER}"],
                         subject("first"))
    mx.wait_for_log(rf"{first}: .*status=sent")
    sink.stop()
    sink.start()
    second = send_message(mx.smtp_port, "ann@sender.example", [f"user@{CUSTOMER}"],
                          subject("second"))
    mx.wait_for_log(rf"{second}: .*status=sent")
    assert len(sink.wait_for(2)) == 2


# -- permanent failures -------------------------------------------------------------------


@pytest.fixture
def rejecting(mailkeep, sink):
    """A running server whose sink rejects ``bad@customer.test`` with 550 5.1.1.

    ``sender.test`` is hosted too, on the same sink, so a notification to
    ``ann@sender.test`` arrives there.
    """
    sink.rcpt_replies[f"bad@{CUSTOMER}"] = "550 5.1.1 <bad@customer.test>: no such user"
    mailkeep.add_account()
    mailkeep.add_domain(CUSTOMER, sink.port)
    mailkeep.add_domain(SENDER_DOMAIN, sink.port)
    mailkeep.start()
    return mailkeep, sink


def test_permanent_failure__dsn_to_sender(rejecting):
    mailkeep, sink = rejecting
    mark = uuid.uuid4().hex
    queue_id = send_message(mailkeep.smtp_port, f"ann@{SENDER_DOMAIN}",
                            [f"bad@{CUSTOMER}", f"good@{CUSTOMER}"], subject(mark))

    [report] = sink.wait_for(1, lambda m: m.rcpt_tos == [f"ann@{SENDER_DOMAIN}"])
    assert report.mail_from == ""
    dsn = message_from_bytes(report.data, policy=default_policy)
    assert dsn.get_content_type() == "multipart/report"
    assert dsn.get_param("report-type") == "delivery-status"
    parts = {part.get_content_type(): part for part in dsn.iter_parts()}
    status = parts["message/delivery-status"].get_payload()
    assert status[0]["Reporting-MTA"] == f"dns; {HOSTNAME}"
    recipients = [block for block in status if block["Final-Recipient"]]
    assert len(recipients) == 1
    assert recipients[0]["Final-Recipient"] == f"rfc822; bad@{CUSTOMER}"
    assert recipients[0]["Action"] == "failed"
    assert recipients[0]["Status"] == "5.1.1"
    assert "550 5.1.1" in recipients[0]["Diagnostic-Code"]
    assert mark in parts["text/rfc822-headers"].get_payload()

    delivered = sink.wait_for(1, lambda m: mark.encode() in m.data and m.mail_from)
    assert delivered[0].rcpt_tos == [f"good@{CUSTOMER}"]
    mailkeep.wait_for_log(rf"{queue_id}: to=<bad@{CUSTOMER}>, .*dsn=5\.1\.1, status=bounced")
    mailkeep.wait_for_log(rf"{queue_id}: sender non-delivery notification: \w+")
    assert mailkeep.admin("queue", "list") == "Mail queue is empty\n"


def test_permanent_failure_null_sender__no_dsn(rejecting):
    mailkeep, sink = rejecting
    queue_id = send_message(mailkeep.smtp_port, "", [f"bad@{CUSTOMER}"], subject("null"))

    mailkeep.wait_for_log(rf"{queue_id}: to=<bad@{CUSTOMER}>, .*status=bounced")
    mailkeep.wait_for_log(rf"{queue_id}: no notification: sender is <>")
    assert mailkeep.admin("queue", "list") == "Mail queue is empty\n"
    assert "sender non-delivery notification" not in mailkeep.log_text()
    assert sink.messages == []


def test_failed_dsn__dropped_not_looped(rejecting):
    mailkeep, sink = rejecting
    sink.rcpt_replies[f"ann@{SENDER_DOMAIN}"] = "550 5.1.1 no such user"
    queue_id = send_message(mailkeep.smtp_port, f"ann@{SENDER_DOMAIN}", [f"bad@{CUSTOMER}"],
                            subject("double bounce"))

    match = mailkeep.wait_for_log(rf"{queue_id}: sender non-delivery notification: (\w+)")
    dsn_id = match.group(1)
    mailkeep.wait_for_log(rf"{dsn_id}: to=<ann@{SENDER_DOMAIN}>, .*status=bounced")
    mailkeep.wait_for_log(rf"{dsn_id}: no notification: ")
    assert mailkeep.admin("queue", "list") == "Mail queue is empty\n"
    assert mailkeep.log_text().count("sender non-delivery notification") == 1
    assert sink.messages == []
