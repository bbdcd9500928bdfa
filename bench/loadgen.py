#!/usr/bin/env python3
"""SMTP load client for the ingest benchmark, with per-message latency.

Opens SESSIONS concurrent connections to a loopback SMTP server. Each one
sends EHLO once and then sends messages back to back over the same
connection (MAIL, RCPT, DATA, content, final dot), one command at a time
without pipelining, the way Postfix's ``smtp-source -d`` does. The latency of
a message is the time from writing MAIL FROM to reading the 250 reply after
the final dot, which is when the server has taken responsibility for it.

The run stops after --messages messages or --seconds of wall time,
whichever comes first, and prints one JSON object: messages per second,
latency percentiles in milliseconds, errors and connections made.

    python3 bench/loadgen.py --port 12525 --sessions 10 --messages 5000 --size 4096
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import math
import os
import sys
import time

LINE = b"x" * 76 + b"\r\n"


def check_loopback(host: str) -> None:
    """Raise SystemExit unless ``host`` is a loopback name or address."""
    if host == "localhost":
        return
    try:
        if ipaddress.ip_address(host).is_loopback:
            return
    except ValueError:
        pass
    raise SystemExit(f"loadgen: {host!r} is not a loopback address; use 127.0.0.1 or ::1")


def make_body(size: int) -> bytes:
    """Build the part of each message after its Message-ID header.

    The body has ``size`` bytes of 78-byte CRLF lines, so ``size`` counts the
    payload without headers, as ``smtp-source -l`` does. The result ends
    with the final ``.`` line.
    """
    head = b"From: <load@a.test>\r\nTo: <to@customer.test>\r\nSubject: mailkeep ingest benchmark\r\n\r\n"
    lines, rest = divmod(size, len(LINE))
    body = LINE * lines
    if rest >= 2:
        body += b"y" * (rest - 2) + b"\r\n"
    return head + body + b".\r\n"


async def read_reply(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """Read one (possibly multi-line) reply; return its code and last line."""
    while True:
        line = await reader.readline()
        if not line:
            raise ConnectionError("server closed the connection")
        if line[3:4] != b"-":
            return int(line[:3]), line


async def expect(reader: asyncio.StreamReader, codes: tuple[int, ...]) -> None:
    code, line = await read_reply(reader)
    if code not in codes:
        raise RuntimeError(f"unexpected reply {line.decode('ascii', 'replace').strip()!r}")


class Run:
    """Counters shared by every session of one run."""

    def __init__(self, messages: int, deadline: float):
        self.left = messages
        self.deadline = deadline
        self.latencies: list[float] = []
        self.errors = 0
        self.connects = 0
        self.first_error = ""
        self.serial = 0

    def take(self) -> int:
        """Return the next message number, or 0 once the count or the time is used up."""
        if self.left <= 0 or time.perf_counter() >= self.deadline:
            return 0
        self.left -= 1
        self.serial += 1
        return self.serial

    def fail(self, exc: BaseException) -> None:
        self.errors += 1
        if not self.first_error:
            self.first_error = f"{type(exc).__name__}: {exc}"


async def session(run: Run, args: argparse.Namespace, body: bytes) -> None:
    mail = f"MAIL FROM:<{args.sender}>\r\n".encode()
    rcpt = f"RCPT TO:<{args.rcpt}>\r\n".encode()
    tag = os.getpid()
    while run.left > 0 and time.perf_counter() < run.deadline:
        try:
            reader, writer = await asyncio.open_connection(args.host, args.port)
        except OSError as exc:
            run.fail(exc)
            await asyncio.sleep(0.05)
            continue
        run.connects += 1
        sent = 0
        try:
            await expect(reader, (220,))
            writer.write(b"EHLO load.a.test\r\n")
            await expect(reader, (250,))
            while args.per_connection <= 0 or sent < args.per_connection:
                serial = run.take()
                if not serial:
                    break
                started = time.perf_counter()
                writer.write(mail)
                await expect(reader, (250,))
                writer.write(rcpt)
                await expect(reader, (250, 251))
                writer.write(b"DATA\r\n")
                await expect(reader, (354,))
                writer.write(f"Message-ID: <{serial}.{tag}@load.a.test>\r\n".encode() + body)
                await expect(reader, (250,))
                run.latencies.append(time.perf_counter() - started)
                sent += 1
            writer.write(b"QUIT\r\n")
            await asyncio.wait_for(read_reply(reader), 5)
        except (OSError, RuntimeError, ValueError, asyncio.TimeoutError) as exc:
            # The message in flight is lost and not counted; reconnect.
            run.fail(exc)
            await asyncio.sleep(0.05)
        finally:
            writer.close()
            try:
                await writer.wait_closed()
            except OSError:
                pass


def percentile(ordered: list[float], p: float) -> float | None:
    """Return the nearest-rank percentile ``p`` of sorted seconds, in milliseconds."""
    if not ordered:
        return None
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return round(ordered[rank - 1] * 1000, 2)


async def main_async(args: argparse.Namespace) -> dict:
    body = make_body(args.size)
    started = time.perf_counter()
    run = Run(args.messages, started + args.seconds)
    await asyncio.gather(*(session(run, args, body) for _ in range(args.sessions)))
    elapsed = time.perf_counter() - started
    ordered = sorted(run.latencies)
    result = {
        "driver": "loadgen", "sessions": args.sessions, "size": args.size,
        "msgs": len(ordered), "requested": args.messages, "seconds": round(elapsed, 3),
        "per_s": round(len(ordered) / elapsed, 1) if elapsed > 0 else 0.0,
        "p50_ms": percentile(ordered, 50), "p90_ms": percentile(ordered, 90),
        "p99_ms": percentile(ordered, 99), "max_ms": percentile(ordered, 100),
        "errors": run.errors, "connects": run.connects,
        "timed_out": len(ordered) < args.messages,
    }
    if run.first_error:
        result["first_error"] = run.first_error
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1", help="loopback address of the server")
    parser.add_argument("--port", type=int, required=True, help="server's SMTP port")
    parser.add_argument("--sessions", type=int, default=10, help="concurrent SMTP connections")
    parser.add_argument("--messages", type=int, default=5000, help="messages to send in total")
    parser.add_argument("--size", type=int, default=4096,
                        help="payload bytes per message, without headers (as smtp-source -l)")
    parser.add_argument("--seconds", type=float, default=120.0,
                        help="wall-time limit; the run stops sending when it is reached")
    parser.add_argument("--per-connection", type=int, default=0,
                        help="messages per connection before reconnecting (0: no limit)")
    parser.add_argument("--sender", default="from@a.test")
    parser.add_argument("--rcpt", default="to@customer.test")
    args = parser.parse_args()
    check_loopback(args.host)
    if args.sessions < 1 or args.messages < 1:
        raise SystemExit("loadgen: --sessions and --messages must be at least 1")
    result = asyncio.run(main_async(args))
    print(json.dumps(result), flush=True)
    sys.exit(0 if result["msgs"] else 1)


if __name__ == "__main__":
    main()
