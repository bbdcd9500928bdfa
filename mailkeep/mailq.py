"""Queue listings in the shapes operators know: ``postqueue -p`` and ``postqueue -j``."""

from __future__ import annotations

import json
import time

from .store.inspect import QueuedMessage

HEADING = "----Queue ID----- --Size-- ---Arrival Time---- --Sender/Recipient------"
RECIPIENT_INDENT = 47
REASON_WIDTH = 74

HELD_REASONS = {
    "etrn": "held for ETRN",
    "odmr": "held for ODMR",
    "pop3": "held for POP3 collection",
}


def mark(message: QueuedMessage) -> str:
    """Return the mark after the queue id: ``*`` in delivery, ``!`` held, else nothing."""
    if message.delivering:
        return "*"
    if message.hold or message.state == "held":
        return "!"
    return ""


def _reason(message: QueuedMessage, recipient, modes: dict[str, str]) -> str:
    if recipient.last_error:
        return recipient.last_error
    if message.hold:
        return "on hold by the administrator"
    if recipient.state == "held" and not recipient.domain:
        return "held for the local postmaster; set postmaster in the config to forward it"
    if recipient.state == "held":
        return HELD_REASONS.get(modes.get(recipient.domain, ""), "held until the domain is flushed")
    return ""


def format_listing(messages: list[QueuedMessage], modes: dict[str, str]) -> str:
    """Format messages as ``postqueue -p`` does, with its summary line.

    Args:
        messages: the messages to list.
        modes: delivery mode per domain, to say why mail is held.
    """
    if not messages:
        return "Mail queue is empty\n"
    out = [HEADING]
    total = 0
    for message in messages:
        total += message.size
        stamp = time.asctime(time.localtime(message.arrived))[:19]
        sender = message.sender or "MAILER-DAEMON"
        out.append(f"{message.queue_id + mark(message):<17} {message.size:>8} {stamp:>19} {sender}")
        previous = None
        for recipient in message.recipients:
            reason = _reason(message, recipient, modes)
            if reason and reason != previous:
                out.append(" " * max(0, REASON_WIDTH - len(reason)) + f"({reason})")
            elif previous and not reason:
                out.append(" " * (REASON_WIDTH - 18) + "(reason unavailable)")
            previous = reason
            out.append(" " * RECIPIENT_INDENT + recipient.address)
        out.append("")
    count = len(messages)
    out.append(f"-- {total // 1024} Kbytes in {count} Request{'s' if count != 1 else ''}.")
    return "\n".join(out) + "\n"


def queue_name(message: QueuedMessage, modes: dict[str, str]) -> str:
    """Return the Postfix-style queue name, or the domain's mode for mail held by mode."""
    state = message.state
    if state == "held":
        domains = {r.domain for r in message.recipients if r.state == "held"}
        mode = modes.get(sorted(domains)[0], "") if domains else ""
        return mode or "hold"
    return {"queued": "incoming"}.get(state, state)


def to_json(message: QueuedMessage, modes: dict[str, str]) -> str:
    """Format one message as a ``postqueue -j`` object, with Mailkeep's extra members."""
    return json.dumps({
        "queue_name": queue_name(message, modes),
        "queue_id": message.queue_id,
        "arrival_time": int(message.arrived),
        "message_size": message.size,
        "forced_expire": False,
        "sender": message.sender,
        "state": message.state,
        "client": message.client,
        "recipients": [
            {
                "address": r.address,
                "delay_reason": r.last_error or _reason(message, r, modes),
                "state": r.state,
                "attempts": r.attempts,
                "next_attempt": int(r.next_attempt) if r.next_attempt else None,
            }
            for r in message.recipients
        ],
    }, ensure_ascii=False)
