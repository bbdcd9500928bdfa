"""The in-process event bus and the log lines made from it.

Listeners and the delivery side publish what happens; headless mode writes
each event as one line in the shape Postfix uses, so that grep habits and
pflogsumm (``--syslog-name=mailkeep``) keep working::

    Dec 04 16:00:01 mx mailkeep/smtp[12]: 0JG2K7C3NX4BD: to=<a@example.org>, relay=..., status=sent (250 ok)

The number in brackets is Mailkeep's session number, not a process id,
because every service runs in one process.
"""

from __future__ import annotations

import itertools
import logging
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable

_sessions = itertools.count(1)


def next_session() -> int:
    """Return a new session number for log lines and the console."""
    return next(_sessions)


@dataclass
class Event:
    """Something that happened, for the log and the console.

    Attributes:
        service: the Postfix-style program name (``smtpd``, ``smtp``, ``qmgr``, ...).
        session: session number, 0 for events outside a session.
        text: the log line after the tag.
        kind: a short name the console can match on (``connect``, ``queued``, ``sent``, ...).
        level: a ``logging`` level.
        data: details for the console.
    """

    service: str
    session: int
    text: str
    kind: str = ""
    level: int = logging.INFO
    data: dict[str, Any] = field(default_factory=dict)
    at: float = field(default_factory=time.time)


class Bus:
    """Hands each published event to every subscriber, in order."""

    def __init__(self) -> None:
        self._subscribers: list[Callable[[Event], None]] = []

    def subscribe(self, callback: Callable[[Event], None]) -> Callable[[], None]:
        """Add a subscriber; return a function that removes it."""
        self._subscribers.append(callback)
        return lambda: self._subscribers.remove(callback)

    def publish(self, event: Event) -> None:
        for callback in list(self._subscribers):
            try:
                callback(event)
            except Exception:  # a broken subscriber must not stop the others
                logging.getLogger("mailkeep").exception("event subscriber failed")

    def emit(self, service: str, session: int, text: str, kind: str = "",
             level: int = logging.INFO, **data: Any) -> None:
        """Publish an event built from the arguments."""
        self.publish(Event(service, session, text, kind, level, data))


bus = Bus()
"""The process's bus; tests may make their own."""


class PostfixFormatter(logging.Formatter):
    """Format records as ``Mon dd hh:mm:ss host mailkeep/service[session]: text``."""

    def __init__(self, hostname: str):
        super().__init__()
        self.host = hostname.split(".")[0] or "localhost"
        self._second = -1
        self._stamp = ""

    def format(self, record: logging.LogRecord) -> str:
        second = int(record.created)
        if second != self._second:  # strftime for every line costs more than the rest
            self._second = second
            self._stamp = time.strftime("%b %d %H:%M:%S", time.localtime(second))
        stamp = self._stamp
        service = getattr(record, "service", record.name.rpartition(".")[2] or "mailkeep")
        session = getattr(record, "session", 0)
        text = record.getMessage()
        if record.levelno >= logging.ERROR:
            text = f"error: {text}"
        elif record.levelno >= logging.WARNING:
            text = f"warning: {text}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return f"{stamp} {self.host} mailkeep/{service}[{session}]: {text}"


def log_events(event: Event) -> None:
    """Write one event as a log line; the bus subscriber for headless mode."""
    logging.getLogger(f"mailkeep.{event.service}").log(
        event.level, "%s", event.text, extra={"service": event.service, "session": event.session}
    )


def setup_logging(hostname: str, level: int = logging.INFO, stream: Any = None) -> None:
    """Send Mailkeep's log lines to ``stream`` (stderr by default) in Postfix's shape."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(PostfixFormatter(hostname))
    root = logging.getLogger("mailkeep")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
    # aiosmtpd logs every command, and unknown verbs raw as the client sent them; Mailkeep
    # logs what matters itself, escaped, so aiosmtpd's own lines are dropped.
    aiosmtpd_log = logging.getLogger("mail.log")
    aiosmtpd_log.setLevel(logging.CRITICAL)
    aiosmtpd_log.propagate = False
