"""Delivery bookkeeping under awkward timing: no mail lost, none delivered twice, none stuck."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest

from helpers import LOOPBACK, free_port, send_message, wait_until
from mailkeep.store import inspect
from mailkeep.store.db import connect, create_schema
from mailkeep.store.queue import NewMessage, Outcome, enqueue, new_queue_id, record_outcomes

pytestmark = pytest.mark.timeout(90)


def _message(domain: str, state: str = "queued") -> NewMessage:
    return NewMessage(queue_id=new_queue_id(), sender="a@sender.example",
                      data=b"Subject: x\r\n\r\nbody\r\n", recipients=[(f"u@{domain}", domain, state)])


def test_deleted_message_id__never_reused(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite3"
    create_schema(path)
    conn = connect(path)
    try:
        first = enqueue(conn, _message("a.test"))
        first_recipient = conn.execute("SELECT id FROM recipient").fetchone()[0]
        inspect.delete(conn, [first])
        second = enqueue(conn, _message("a.test"))
        second_recipient = conn.execute("SELECT id FROM recipient").fetchone()[0]
    finally:
        conn.close()
    assert second > first
    assert second_recipient > first_recipient


def test_held_failure_after_switch_to_smtp__deferred(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite3"
    create_schema(path)
    conn = connect(path)
    try:
        conn.execute("INSERT INTO account (name, password_hash, shared_secret, enabled, created)"
                     " VALUES ('acme', '', '', 1, 0)")
        conn.execute("INSERT INTO domain (name, account_id, mode, host, port, retention_days,"
                     " created) VALUES ('a.test', 1, 'smtp', 'h', 25, 30, 0)")
        mid = enqueue(conn, _message("a.test", "held"))
        rid = conn.execute("SELECT id FROM recipient").fetchone()[0]
        record_outcomes(conn, [Outcome(rid, mid, "u@a.test", "held", "451 try later")], [mid])
        state, due = conn.execute("SELECT state, next_attempt FROM recipient").fetchone()
    finally:
        conn.close()
    assert state == "deferred"
    assert due > time.time()


class ScriptedServer:
    """A customer SMTP server on a thread: counts DATA per recipient, can stall or misbehave."""

    def __init__(self, data_delay: float = 0.0, mail_reply: bytes = b"250 ok\r\n",
                 drop_after: int = 0):
        self.port = free_port()
        self.drop_after = drop_after
        """Close each connection without a word after this many messages (0: never)."""
        self.data_delay = data_delay
        self.mail_reply = mail_reply
        self.delivered: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> "ScriptedServer":
        self._listener = socket.create_server((LOOPBACK, self.port))
        self._listener.settimeout(0.2)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
        self._listener.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except socket.timeout:
                continue
            threading.Thread(target=self._session, args=(conn,), daemon=True).start()

    def _session(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(10)
            stream = conn.makefile("rb")
            conn.sendall(b"220 customer.example ESMTP\r\n")
            recipients: list[str] = []
            accepted = 0
            for line in stream:
                verb = line[:4].upper()
                if verb in (b"EHLO", b"HELO"):
                    conn.sendall(b"250 customer.example\r\n")
                elif verb == b"MAIL":
                    recipients = []
                    conn.sendall(self.mail_reply)
                elif verb == b"RCPT":
                    recipients.append(line.decode().split("<")[1].split(">")[0])
                    conn.sendall(b"250 ok\r\n")
                elif verb == b"DATA":
                    conn.sendall(b"354 go ahead\r\n")
                    for body_line in stream:
                        if body_line == b".\r\n":
                            break
                    time.sleep(self.data_delay)
                    self.delivered.extend(recipients)
                    conn.sendall(b"250 ok\r\n")
                    accepted += 1
                    if self.drop_after and accepted >= self.drop_after:
                        return
                elif verb == b"QUIT":
                    conn.sendall(b"221 bye\r\n")
                    return
                else:
                    conn.sendall(b"250 ok\r\n")


def test_message_for_two_servers__each_gets_it_once(make_mailkeep) -> None:
    with ScriptedServer() as fast, ScriptedServer(data_delay=2.0) as slow:
        mailkeep = make_mailkeep()
        mailkeep.add_account()
        mailkeep.add_domain("a.test", fast.port)
        mailkeep.add_domain("b.test", slow.port)
        mailkeep.start()
        send_message(mailkeep.smtp_port, "a@sender.example", ["x@a.test", "y@b.test"],
                     "Subject: two servers\r\n\r\nbody\r\n")
        wait_until(lambda: "y@b.test" in slow.delivered, timeout=20, message="the slow delivery")
        wait_until(lambda: mailkeep.queue_json() == [], message="the queue to empty")
        time.sleep(3.0)  # a second claim of y@b.test would be delivered within this time
        assert fast.delivered == ["x@a.test"]
        assert slow.delivered == ["y@b.test"]


def test_reply_with_non_ascii_digits__deferred_not_stuck(make_mailkeep) -> None:
    with ScriptedServer(mail_reply="\u00b250 ok\r\n".encode()) as broken:
        mailkeep = make_mailkeep()
        mailkeep.add_account()
        mailkeep.add_domain("a.test", broken.port)
        mailkeep.start()
        queue_id = send_message(mailkeep.smtp_port, "a@sender.example", ["x@a.test"],
                                "Subject: odd reply\r\n\r\nbody\r\n")
        entries = wait_until(
            lambda: [e for e in mailkeep.queue_json() if e["queue_name"] == "deferred"],
            timeout=20, message="the message to be deferred rather than stuck in delivery")
        assert entries[0]["queue_id"] == queue_id
        assert "invalid reply line" in entries[0]["recipients"][0]["delay_reason"]


def test_server_dropping_sessions__backlog_still_delivered(make_mailkeep) -> None:
    with ScriptedServer(drop_after=3) as flaky:
        mailkeep = make_mailkeep()
        mailkeep.add_account()
        mailkeep.admin("domain", "add", "a.test", "--account", "acme", "--mode", "etrn",
                       "--host", LOOPBACK, "--port", str(flaky.port))
        mailkeep.start()
        for number in range(12):
            send_message(mailkeep.smtp_port, "a@sender.example", [f"u{number}@a.test"],
                         f"Subject: {number}\r\n\r\nbody\r\n")
        mailkeep.admin("domain", "set", "a.test", "--mode", "smtp")
        # Each session ends while the 4th message is in flight: that one waits for its retry
        # (a minute away), and a new session takes the rest of the backlog at once.
        wait_until(lambda: len(set(flaky.delivered)) == 9, timeout=20,
                   message="9 messages through sessions that each end after 3")
        wait_until(
            lambda: len([e for e in mailkeep.queue_json() if e["queue_name"] == "deferred"]) == 3,
            message="the 3 messages in flight at each drop to be deferred")
        assert len(mailkeep.queue_json()) == 3
