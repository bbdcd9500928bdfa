#!/usr/bin/env python3
"""ODMR drain benchmark: messages per second delivered over one ATRN session.

A fresh Mailkeep holds N small messages for a domain in mode ``odmr`` (put
straight into the store, so the run measures the drain, not ingest). A
client of our own then plays the customer's server: it connects to the ODMR
port, authenticates with CRAM-MD5, sends ATRN, and after the turnaround
answers Mailkeep's MAIL, RCPT and DATA as a fast SMTP server that offers
PIPELINING and stores nothing. The rate is N divided by the time from the
250 to ATRN until Mailkeep's QUIT. Compare it with bench/push.py's figure.

    .venv/bin/python bench/odmr.py --messages 10000 --reps 3
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import hmac
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mailkeep.store.db import connect, create_schema
from mailkeep.store.queue import NewMessage, enqueue, new_queue_id

SECRET = "bench-cram-secret"
DOMAIN = "odmr.bench.test"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def mailkeep(config: Path, *args: str, stdin: str = "") -> None:
    subprocess.run([sys.executable, "-m", "mailkeep", "--config", str(config), *args],
                   input=stdin, text=True, check=True, capture_output=True)


def seed(database: Path, count: int, size: int) -> None:
    create_schema(database)
    conn = connect(database)
    body = b"Subject: odmr bench\r\n\r\n" + (b"x" * 76 + b"\r\n") * max(1, size // 78)
    try:
        conn.execute("BEGIN")
        for _ in range(count):
            enqueue(conn, NewMessage(queue_id=new_queue_id(), sender="bench@sender.test", data=body,
                                     recipients=[(f"user@{DOMAIN}", DOMAIN, "held")]))
        conn.execute("COMMIT")
    finally:
        conn.close()


async def reply(reader: asyncio.StreamReader) -> tuple[int, list[str]]:
    lines = []
    while True:
        line = (await reader.readline()).decode()
        lines.append(line[4:].strip())
        if len(line) < 4 or line[3] != "-":
            return int(line[:3]), lines


async def drain(port: int) -> tuple[int, float]:
    """Run one ODMR session; return (messages received, seconds from ATRN's 250 to QUIT)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 24)

    async def command(text: str) -> tuple[int, list[str]]:
        writer.write(text.encode() + b"\r\n")
        return await reply(reader)

    await reply(reader)
    await command("EHLO customer.bench.test")
    code, lines = await command("AUTH CRAM-MD5")
    challenge = base64.b64decode(lines[0])
    digest = hmac.new(SECRET.encode(), challenge, hashlib.md5).hexdigest()
    code, _ = await command(base64.b64encode(f"bench {digest}".encode()).decode())
    if code != 235:
        raise SystemExit(f"AUTH failed: {code}")
    code, lines = await command(f"ATRN {DOMAIN}")
    if code != 250:
        raise SystemExit(f"ATRN failed: {code} {lines}")
    started = time.perf_counter()
    writer.write(b"220 customer.bench.test ESMTP\r\n")
    received = 0
    while True:
        line = await reader.readline()
        if not line:
            break
        verb = line[:4].upper()
        if verb == b"DATA":
            writer.write(b"354 go ahead\r\n")
            await reader.readuntil(b"\r\n.\r\n")
            received += 1
            writer.write(b"250 2.0.0 ok\r\n")
        elif verb in (b"EHLO", b"HELO"):
            writer.write(b"250-customer.bench.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SIZE 0\r\n")
        elif verb == b"QUIT":
            writer.write(b"221 bye\r\n")
            break
        else:
            writer.write(b"250 ok\r\n")
    elapsed = time.perf_counter() - started
    writer.close()
    return received, elapsed


def run_once(count: int, size: int, workdir: Path) -> dict:
    smtp_port, odmr_port = free_port(), free_port()
    config = workdir / "mailkeep.toml"
    config.write_text(f'hostname = "mx.bench.test"\ndata_dir = "{workdir / "data"}"\n[listen]\n'
                      f'smtp = ["127.0.0.1:{smtp_port}"]\nodmr = ["127.0.0.1:{odmr_port}"]\n')
    mailkeep(config, "account", "add", "bench", "--password-stdin", stdin="pw\n")
    mailkeep(config, "account", "secret", "bench", "--secret-stdin", stdin=SECRET + "\n")
    mailkeep(config, "domain", "add", DOMAIN, "--account", "bench", "--mode", "odmr")
    seed(workdir / "data" / "mailkeep.sqlite3", count, size)
    log = open(workdir / "server.log", "wb")
    server = subprocess.Popen([sys.executable, "-m", "mailkeep", "--config", str(config), "serve",
                               "--no-tui"], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        for _ in range(300):
            try:
                socket.create_connection(("127.0.0.1", odmr_port), 0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        received, elapsed = asyncio.run(asyncio.wait_for(drain(odmr_port), 600))
    finally:
        server.terminate()
        server.wait(30)
        log.close()
    return {"what": "odmr_drain", "messages": count, "received": received, "size": size,
            "seconds": round(elapsed, 3), "per_s": round(received / elapsed, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=10000)
    parser.add_argument("--size", type=int, default=4096, help="payload bytes per message")
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    rates = []
    for rep in range(args.reps):
        with tempfile.TemporaryDirectory() as tmp:
            record = run_once(args.messages, args.size, Path(tmp))
        record["rep"] = rep
        rates.append(record["per_s"])
        print(json.dumps(record), flush=True)
    print(f"ODMR drain: median {statistics.median(rates):.0f} messages/s over {args.reps} runs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
