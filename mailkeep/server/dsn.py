"""Delivery status notifications (RFC 3464): the report sent back to a sender
whose message could not be delivered.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from email.message import EmailMessage, Message
from email.mime.base import MIMEBase
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.policy import SMTP
from email.utils import formatdate, make_msgid


@dataclass
class Failure:
    """One recipient that will not get the message."""

    address: str
    status: str
    """Enhanced status code, e.g. ``5.1.1``."""
    diagnostic: str
    """The remote server's reply, or our own reason."""
    remote: str = ""
    """The server that replied, empty when the failure is ours (e.g. expiry)."""


def build(hostname: str, queue_id: str, sender: str, arrived: float, failures: list[Failure],
          original: bytes) -> bytes:
    """Build the multipart/report message for ``failures``, ready to queue with the null sender.

    Args:
        hostname: this server's name, for Reporting-MTA and the From address.
        queue_id: the original message's queue id.
        sender: the original envelope sender, who gets the report.
        arrived: when the original message arrived (epoch seconds).
        failures: the recipients that failed.
        original: the original message; its header section is attached.
    """
    report = MIMEMultipart("report", report_type="delivery-status")
    report["From"] = f"Mail Delivery System <MAILER-DAEMON@{hostname}>"
    report["To"] = f"<{sender}>"
    report["Subject"] = "Undelivered Mail Returned to Sender"
    report["Date"] = formatdate(localtime=True)
    report["Message-ID"] = make_msgid(domain=hostname)
    report["Auto-Submitted"] = "auto-replied"
    lines = [
        f"This is the mail system at host {hostname}.",
        "",
        "Your message could not be delivered to one or more recipients.",
        "The report below gives the reason for each; the headers of your",
        "message follow it.",
        "",
    ]
    for failure in failures:
        lines.append(f"<{failure.address}>: {failure.diagnostic}")
    report.attach(MIMEText("\n".join(lines) + "\n", "plain", "utf-8"))
    report.attach(_status_part(hostname, queue_id, arrived, failures))
    headers = MIMEBase("text", "rfc822-headers")
    end = original.find(b"\r\n\r\n")
    headers.set_payload((original if end < 0 else original[: end + 2]).decode("utf-8", "replace"))
    report.attach(headers)
    return report.as_bytes(policy=SMTP)


def _status_part(hostname: str, queue_id: str, arrived: float, failures: list[Failure]) -> Message:
    part = MIMEBase("message", "delivery-status")
    blocks = []
    per_message = Message()
    per_message["Reporting-MTA"] = f"dns; {hostname}"
    per_message["X-Mailkeep-Queue-ID"] = queue_id
    per_message["Arrival-Date"] = formatdate(arrived, localtime=True)
    blocks.append(per_message)
    for failure in failures:
        block = Message()
        block["Final-Recipient"] = f"rfc822; {failure.address}"
        block["Action"] = "failed"
        block["Status"] = failure.status
        if failure.remote:
            block["Remote-MTA"] = f"dns; {failure.remote}"
            block["Diagnostic-Code"] = f"smtp; {failure.diagnostic}"
        else:
            block["Diagnostic-Code"] = f"X-Mailkeep; {failure.diagnostic}"
        block["Last-Attempt-Date"] = formatdate(time.time(), localtime=True)
        blocks.append(block)
    part.set_payload(blocks)
    return part


def parse(data: bytes) -> EmailMessage:
    """Parse a report back into a message object, for tests and tools."""
    from email import message_from_bytes
    from email.policy import default

    return message_from_bytes(data, policy=default)


def return_to_sender(conn, message_ids: list[int], hostname: str, reason: str,
                     held_domains: set[str]) -> list[str]:
    """Bounce messages on the administrator's request: notify each sender, then delete.

    Runs inside the caller's transaction, so the notification and the removal
    commit together. The null sender and notifications get no notification.

    Args:
        conn: an open sqlite3 connection inside a write transaction.
        message_ids: row ids of the messages.
        hostname: this server's name.
        reason: the text each recipient's failure gives.
        held_domains: hosted domains whose mail is held, so a notification to
            them waits too.

    Returns:
        The queue ids of the notifications made.
    """
    from ..store.queue import NewMessage, enqueue, new_queue_id, remove_finished

    made = []
    for mid in message_ids:
        row = conn.execute(
            "SELECT queue_id, sender, arrived, is_bounce, data FROM message WHERE id = ?", (mid,)
        ).fetchone()
        if row is None:
            continue
        queue_id, sender, arrived, is_bounce, data = row
        addresses = [r[0] for r in conn.execute(
            "SELECT address FROM recipient WHERE message_id = ?", (mid,))]
        if sender and not is_bounce and addresses:
            failures = [Failure(a, "5.0.0", reason) for a in addresses]
            body = build(hostname, queue_id, sender, arrived, failures, bytes(data))
            domain = sender.rpartition("@")[2].lower()
            state = "held" if domain in held_domains else "queued"
            notice = NewMessage(queue_id=new_queue_id(), sender="", data=body,
                                recipients=[(sender, domain, state)], client="local",
                                helo=hostname, is_bounce=True)
            enqueue(conn, notice)
            made.append(notice.queue_id)
        conn.execute("DELETE FROM recipient WHERE message_id = ?", (mid,))
        remove_finished(conn, [mid])
    return made
