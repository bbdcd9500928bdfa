"""Held mail that outlives its domain's retention goes back to its sender."""

from __future__ import annotations

import sqlite3
import time

import pytest

from helpers import Mailkeep, Sink, send_message, wait_until

pytestmark = pytest.mark.timeout(60)

DAY = 86400


def age_messages(mailkeep: Mailkeep, days: float) -> None:
    conn = sqlite3.connect(mailkeep.data_dir / "mailkeep.sqlite3")
    try:
        conn.execute("UPDATE message SET arrived = ?", (time.time() - days * DAY,))
        conn.commit()
    finally:
        conn.close()


def queued_ids(mailkeep: Mailkeep) -> set[str]:
    return {entry["queue_id"] for entry in mailkeep.queue_json()}


@pytest.fixture
def held(mailkeep: Mailkeep, sink: Sink) -> Mailkeep:
    """held.test keeps mail for 7 days; senders at customer.test get notifications via the sink."""
    mailkeep.add_account()
    mailkeep.add_domain("customer.test", sink.port)
    mailkeep.admin("domain", "add", "held.test", "--account", "acme", "--mode", "etrn",
                   "--retention", "7")
    mailkeep.start()
    return mailkeep


def test_expired_held_mail__returned_with_dsn(held: Mailkeep, sink: Sink) -> None:
    queue_id = send_message(held.smtp_port, "writer@customer.test", ["u@held.test"],
                            "Subject: waiting\r\n\r\nstill here\r\n")
    held.stop()
    age_messages(held, 8)
    held.start()
    notices = sink.wait_for(1, match=lambda m: m.rcpt_tos == ["writer@customer.test"])
    notice = notices[0]
    assert notice.mail_from == ""
    assert b"report-type=\"delivery-status\"" in notice.data
    assert b"Status: 4.4.7" in notice.data
    assert b"held for more than 7 days" in notice.data
    wait_until(lambda: queue_id not in queued_ids(held), message="the expired message to leave")


def test_held_mail_within_retention__kept(held: Mailkeep, sink: Sink) -> None:
    queue_id = send_message(held.smtp_port, "writer@customer.test", ["u@held.test"],
                            "Subject: waiting\r\n\r\nstill here\r\n")
    held.stop()
    age_messages(held, 6)
    held.start()
    time.sleep(2)
    assert queue_id in queued_ids(held)
    assert sink.messages == []


def test_expired_held_mail_from_null_sender__no_dsn(held: Mailkeep, sink: Sink) -> None:
    queue_id = send_message(held.smtp_port, "", ["u@held.test"], "Subject: bounce\r\n\r\nx\r\n")
    held.stop()
    age_messages(held, 8)
    held.start()
    wait_until(lambda: queue_id not in queued_ids(held), message="the expired message to leave")
    held.wait_for_log(rf"{queue_id}: no notification: sender is <>")
    assert sink.messages == []
