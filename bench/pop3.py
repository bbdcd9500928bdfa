#!/usr/bin/env python3
"""POP3 benchmark: open a large mailbox, and drain a mailbox of small messages.

    .venv/bin/python bench/pop3.py                      # both, 3 runs each
    .venv/bin/python bench/pop3.py open --messages 100000
    .venv/bin/python bench/pop3.py drain --messages 10000 --size 4096 --reps 3

``open`` times login (USER/PASS, with its argon2 check), STAT and UIDL on a
mailbox of 100,000 messages; the issue asks for under a second. ``drain``
does what the team's harness (``../shared/perf/pop3_drain.py``) does against
Dovecot: LIST, UIDL, RETR of every message, DELE of every message, QUIT
(which commits every deletion in one transaction), timed per phase with
poplib. Run the Dovecot anchor in the same session for the comparison:

    python3 ../shared/perf/harness.py pop3 --contestant dovecot --reps 3 --messages 10000

Each run fills the store directly (no SMTP) in a throwaway directory under
``$BENCH_DIR`` (default ``/tmp/mailkeep-bench-pop3``), starts ``mailkeep
serve`` on free loopback ports, and stops it by its process id. One JSON
object per run goes to standard output.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import poplib
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from mailkeep.store.db import connect, create_schema  # noqa: E402
from mailkeep.store.mailboxes import add_mailbox  # noqa: E402
from mailkeep.store.queue import NewMessage, enqueue, new_queue_id  # noqa: E402

LOOPBACK = "127.0.0.1"
USER = "perf@pop.test"
PASSWORD = "pw"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def message(number: int, size: int) -> bytes:
    """A message of ``size`` bytes with CRLF line ends, like the harness's Dovecot fill."""
    head = (f"From: <from@a.test>\r\nTo: <{USER}>\r\nSubject: perf {number}\r\n"
            f"Message-ID: <{number}.perf@a.test>\r\n\r\n").encode()
    line = b"x" * 76 + b"\r\n"
    body = line * max(0, (size - len(head)) // len(line))
    return head + body + b"y" * max(0, size - len(head) - len(body) - 2) + b"\r\n"


def fill(data_dir: Path, count: int, size: int) -> None:
    """Create the account, domain and mailbox, and put ``count`` messages into it."""
    from argon2 import PasswordHasher

    database = data_dir / "mailkeep.sqlite3"
    create_schema(database)
    conn = connect(database)
    try:
        conn.execute("BEGIN")
        conn.execute("INSERT INTO account (name, password_hash, shared_secret, enabled, created)"
                     " VALUES ('perf', '', '', 1, 0)")
        conn.execute("INSERT INTO domain (name, account_id, mode, host, port, retention_days,"
                     " created) VALUES ('pop.test', 1, 'pop3', '', 25, 30, 0)")
        add_mailbox(conn, USER, "perf", PasswordHasher().hash(PASSWORD))
        mailbox_id = conn.execute("SELECT id FROM mailbox").fetchone()[0]
        for number in range(count):
            enqueue(conn, NewMessage(queue_id=new_queue_id(), sender="from@a.test",
                                     data=message(number, size), recipients=[],
                                     mailboxes=[(mailbox_id, USER)]))
        conn.execute("COMMIT")
    finally:
        conn.close()


class Server:
    """``mailkeep serve`` on a throwaway directory with a POP3 listener."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.pop3_port = free_port()
        smtp_port = free_port()
        self.config = workdir / "mailkeep.toml"
        self.config.write_text(
            f'hostname = "bench.mailkeep.test"\ndata_dir = "{workdir / "data"}"\n'
            f'[listen]\nsmtp = ["{LOOPBACK}:{smtp_port}"]\npop3 = ["{LOOPBACK}:{self.pop3_port}"]\n'
            "[auth]\nallow_plaintext = true\n")
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        env = dict(os.environ, MAILKEEP_CONFIG=str(self.config))
        with open(self.workdir / "server.log", "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "mailkeep", "serve", "--no-tui"], cwd=REPO, env=env,
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"mailkeep serve exited; see {self.workdir / 'server.log'}")
            try:
                socket.create_connection((LOOPBACK, self.pop3_port), 0.5).close()
                time.sleep(0.5)  # let start-up work finish, as the team's harness does
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("mailkeep serve did not open its POP3 port within 30 s")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.kill(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait()


def time_open(port: int) -> dict:
    started = time.perf_counter()
    client = poplib.POP3(LOOPBACK, port, timeout=300)
    client.user(USER)
    client.pass_(PASSWORD)
    logged_in = time.perf_counter()
    count, _size = client.stat()
    uids = client.uidl()[1]
    done = time.perf_counter()
    client.quit()
    return {"messages": count, "uidl_lines": len(uids), "login_s": round(logged_in - started, 3),
            "stat_uidl_s": round(done - logged_in, 3), "seconds": round(done - started, 3)}


def time_drain(port: int) -> dict:
    phases = {}
    mark = started = time.perf_counter()

    def phase(name: str) -> None:
        nonlocal mark
        now = time.perf_counter()
        phases[name] = round(now - mark, 3)
        mark = now

    client = poplib.POP3(LOOPBACK, port, timeout=300)
    client.user(USER)
    client.pass_(PASSWORD)
    phase("login_s")
    count = len(client.list()[1])
    phase("list_s")
    client.uidl()
    phase("uidl_s")
    octets = sum(client.retr(n)[2] for n in range(1, count + 1))
    phase("retr_s")
    for n in range(1, count + 1):
        client.dele(n)
    phase("dele_s")
    client.quit()
    phase("quit_s")
    total = mark - started
    return {"messages": count, "bytes": octets, "seconds": round(total, 3),
            "per_s": round(count / total, 1), **phases}


def run(kind: str, count: int, size: int, base: Path) -> dict:
    workdir = base / f"{kind}-{os.getpid()}-{time.time_ns()}"
    (workdir / "data").mkdir(parents=True)
    try:
        began = time.perf_counter()
        fill(workdir / "data", count, size)
        fill_s = time.perf_counter() - began
        server = Server(workdir)
        server.start()
        try:
            result = time_open(server.pop3_port) if kind == "open" else time_drain(server.pop3_port)
        finally:
            server.stop()
        left = None
        if kind == "drain":
            conn = connect(workdir / "data" / "mailkeep.sqlite3")
            left = conn.execute("SELECT COUNT(*) FROM mailbox_entry").fetchone()[0]
            conn.close()
        return {"what": f"pop3_{kind}", "size": size, "fill_s": round(fill_s, 1),
                "left_after_quit": left, **result}
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("kind", nargs="?", choices=["open", "drain", "both"], default="both")
    parser.add_argument("--messages", type=int, help="default: 100000 for open, 10000 for drain")
    parser.add_argument("--size", type=int, help="bytes per message (open: 1024, drain: 4096)")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--dir", type=Path,
                        default=Path(os.environ.get("BENCH_DIR", "/tmp/mailkeep-bench-pop3")))
    args = parser.parse_args()
    kinds = ["open", "drain"] if args.kind == "both" else [args.kind]
    host = {"python": platform.python_version(), "cpus": os.cpu_count()}
    for kind in kinds:
        count = args.messages or (100_000 if kind == "open" else 10_000)
        size = args.size or (1024 if kind == "open" else 4096)
        for rep in range(1, args.reps + 1):
            record = {"rep": rep, **run(kind, count, size, args.dir), **host}
            print(json.dumps(record), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
