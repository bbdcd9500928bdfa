"""Tests for the queue listings in ``mailkeep.mailq``: the ``postqueue -p``
text form and the ``postqueue -j`` JSON form."""

from __future__ import annotations

import json
import os
import time

import pytest

from mailkeep.mailq import HEADING, format_listing, to_json
from mailkeep.store.inspect import QueuedMessage, QueuedRecipient

QUEUE_ID = "4Z9K2M7Q1W3XA"
RECIPIENT_INDENT = " " * 47
# 1970-01-02 03:04:05 UTC.
ARRIVED = 86400 + 3 * 3600 + 4 * 60 + 5
ARRIVED_TEXT = "Fri Jan  2 03:04:05"
REFUSED = "connect to mx.example.net[192.0.2.1]:25: Connection refused"


@pytest.fixture(autouse=True)
def utc():
    """Format arrival times in UTC, whatever the machine's time zone."""
    saved = os.environ.get("TZ")
    os.environ["TZ"] = "UTC"
    time.tzset()
    yield
    if saved is None:
        del os.environ["TZ"]
    else:
        os.environ["TZ"] = saved
    time.tzset()


def recipient(address="bob@example.net", state="queued", last_error="", attempts=0,
              next_attempt=0.0):
    return QueuedRecipient(address, address.partition("@")[2], state, attempts, next_attempt,
                           last_error)


def message(*recipients, queue_id=QUEUE_ID, sender="ann@example.org", size=2048,
            hold=False, delivering=False):
    return QueuedMessage(
        id=1, queue_id=queue_id, sender=sender, size=size, arrived=float(ARRIVED), hold=hold,
        delivering=delivering, client="client.example[192.0.2.9]", helo="client.example",
        recipients=list(recipients) or [recipient()],
    )


def lines_of(messages, modes=None):
    return format_listing(messages, modes or {}).splitlines()


class TestFormatListing:
    def test_empty_queue__prints_only_empty_notice(self):
        assert format_listing([], {}) == "Mail queue is empty\n"

    def test_first_line__is_heading(self):
        assert lines_of([message()])[0] == HEADING

    def test_heading__has_postqueue_column_widths(self):
        assert HEADING[:17] == "----Queue ID-----"
        assert HEADING[18:26] == "--Size--"
        assert HEADING[27:46] == "---Arrival Time----"
        assert HEADING[47:].startswith("--Sender/Recipient")

    def test_message_line__has_four_columns(self):
        line = lines_of([message()])[1]
        assert line == f"{QUEUE_ID:<17} {2048:>8} {ARRIVED_TEXT} ann@example.org"

    def test_arrival_time__is_19_characters_at_column_27(self):
        line = lines_of([message()])[1]
        assert line[27:46] == ARRIVED_TEXT

    def test_sender__starts_at_recipient_column(self):
        line = lines_of([message()])[1]
        assert line[47:] == "ann@example.org"

    def test_message_in_delivery__is_marked_with_star(self):
        line = lines_of([message(delivering=True)])[1]
        assert line.startswith(QUEUE_ID + "* ")

    def test_message_on_hold__is_marked_with_bang(self):
        line = lines_of([message(hold=True)])[1]
        assert line.startswith(QUEUE_ID + "! ")

    def test_held_for_domain__is_marked_with_bang(self):
        line = lines_of([message(recipient(state="held"))], {"example.net": "etrn"})[1]
        assert line.startswith(QUEUE_ID + "! ")

    def test_queued_message__has_no_mark(self):
        line = lines_of([message()])[1]
        assert line.startswith(QUEUE_ID + " ")

    def test_null_sender__is_shown_as_mailer_daemon(self):
        line = lines_of([message(sender="")])[1]
        assert line.endswith(" MAILER-DAEMON")

    def test_size__is_right_aligned_in_eight_columns(self):
        line = lines_of([message(size=123)])[1]
        assert line[18:26] == "     123"

    def test_recipients__are_indented_47_spaces(self):
        lines = lines_of([message(recipient("bob@example.net"), recipient("cy@example.net"))])
        assert lines[2] == RECIPIENT_INDENT + "bob@example.net"
        assert lines[3] == RECIPIENT_INDENT + "cy@example.net"

    def test_reason__is_in_parentheses_before_recipient(self):
        lines = lines_of([message(recipient(state="deferred", last_error=REFUSED))])
        assert lines[2].strip() == f"({REFUSED})"
        assert lines[3] == RECIPIENT_INDENT + "bob@example.net"

    def test_short_reason__is_right_aligned_to_column_76(self):
        lines = lines_of([message(recipient(state="deferred", last_error=REFUSED))])
        assert len(lines[2]) == 76

    def test_reason_longer_than_line__is_not_indented(self):
        reason = "x" * 100
        lines = lines_of([message(recipient(state="deferred", last_error=reason))])
        assert lines[2] == f"({reason})"

    def test_same_reason_for_consecutive_recipients__is_printed_once(self):
        lines = lines_of([message(
            recipient("a@example.net", "deferred", REFUSED),
            recipient("b@example.net", "deferred", REFUSED),
        )])
        assert [line.strip() for line in lines[2:5]] == [
            f"({REFUSED})", "a@example.net", "b@example.net",
        ]

    def test_changed_reason__is_printed_again(self):
        lines = lines_of([message(
            recipient("a@example.net", "deferred", REFUSED),
            recipient("b@example.net", "deferred", "451 4.3.0 try later"),
        )])
        assert [line.strip() for line in lines[2:6]] == [
            f"({REFUSED})", "a@example.net", "(451 4.3.0 try later)", "b@example.net",
        ]

    def test_reason_dropping_out__says_unavailable(self):
        lines = lines_of([message(
            recipient("a@example.net", "deferred", REFUSED),
            recipient("b@example.net", "queued", ""),
        )])
        assert lines[4].strip() == "(reason unavailable)"
        assert lines[5] == RECIPIENT_INDENT + "b@example.net"

    def test_queued_recipient_without_error__has_no_reason_line(self):
        lines = lines_of([message()])
        assert lines[2] == RECIPIENT_INDENT + "bob@example.net"

    def test_held_message__gives_administrator_hold_as_reason(self):
        lines = lines_of([message(hold=True)])
        assert lines[2].strip() == "(on hold by the administrator)"

    def test_mail_held_for_etrn__gives_mode_as_reason(self):
        lines = lines_of([message(recipient(state="held"))], {"example.net": "etrn"})
        assert lines[2].strip() == "(held for ETRN)"

    def test_messages__are_separated_by_blank_line(self):
        lines = lines_of([message(), message(queue_id="4Z9K2M7Q1W3XB")])
        assert lines[3] == ""
        assert lines[4].startswith("4Z9K2M7Q1W3XB ")

    def test_summary__counts_kbytes_and_requests(self):
        listing = format_listing([message(size=2048), message(size=3072)], {})
        assert listing.endswith("\n\n-- 5 Kbytes in 2 Requests.\n")

    def test_summary_for_one_message__says_request(self):
        listing = format_listing([message(size=1023)], {})
        assert listing.endswith("\n\n-- 0 Kbytes in 1 Request.\n")


class TestToJson:
    def test_output__is_one_json_object_on_one_line(self):
        text = to_json(message(), {})
        assert "\n" not in text
        assert isinstance(json.loads(text), dict)

    def test_object__has_postqueue_members(self):
        obj = json.loads(to_json(message(recipient(state="deferred", last_error=REFUSED)), {}))
        assert obj["queue_id"] == QUEUE_ID
        assert obj["queue_name"] == "deferred"
        assert obj["arrival_time"] == ARRIVED
        assert obj["message_size"] == 2048
        assert obj["sender"] == "ann@example.org"

    def test_recipients__carry_address_and_delay_reason(self):
        obj = json.loads(to_json(message(recipient(state="deferred", last_error=REFUSED)), {}))
        assert len(obj["recipients"]) == 1
        assert obj["recipients"][0]["address"] == "bob@example.net"
        assert obj["recipients"][0]["delay_reason"] == REFUSED

    def test_null_sender__is_empty_string(self):
        obj = json.loads(to_json(message(sender=""), {}))
        assert obj["sender"] == ""

    def test_message_in_delivery__is_in_active_queue(self):
        obj = json.loads(to_json(message(delivering=True), {}))
        assert obj["queue_name"] == "active"

    def test_message_on_hold__is_in_hold_queue(self):
        obj = json.loads(to_json(message(hold=True), {}))
        assert obj["queue_name"] == "hold"

    def test_new_message__is_in_incoming_queue(self):
        obj = json.loads(to_json(message(), {}))
        assert obj["queue_name"] == "incoming"

    def test_mail_held_by_domain_mode__names_the_mode(self):
        obj = json.loads(to_json(message(recipient(state="held")), {"example.net": "odmr"}))
        assert obj["queue_name"] == "odmr"

    def test_non_ascii_address__is_written_unescaped(self):
        text = to_json(message(recipient("jörg@example.net")), {})
        assert "jörg@example.net" in text
