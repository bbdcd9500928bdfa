#!/usr/bin/env python3
"""SMTP server that accepts every message and stores nothing.

The benchmarks use it twice. The push benchmark delivers to it when
Postfix's ``smtp-sink`` is not installed. The ingest benchmark measures it
as the "bare aiosmtpd" baseline: what aiosmtpd on one asyncio loop accepts
per second before any storage is added.

    .venv/bin/python bench/sink.py --port 12626

It listens on a loopback address only and runs until SIGTERM or SIGINT,
then prints the number of messages it accepted.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import signal

from aiosmtpd.smtp import SMTP


class DiscardHandler:
    """aiosmtpd handler that counts messages and drops them."""

    def __init__(self) -> None:
        self.accepted = 0

    async def handle_DATA(self, server, session, envelope) -> str:
        self.accepted += 1
        return "250 2.0.0 Ok: discarded"


async def serve(host: str, port: int) -> int:
    handler = DiscardHandler()
    loop = asyncio.get_running_loop()
    # An explicit hostname keeps aiosmtpd from calling socket.getfqdn() for every session.
    server = await loop.create_server(
        lambda: SMTP(handler, hostname="sink.bench.test", ident="bench sink",
                     data_size_limit=64 * 1024 * 1024, decode_data=False),
        host=host, port=port, backlog=512, reuse_address=True,
    )
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    print(f"sink: listening on {host}:{port}", flush=True)
    await stop.wait()
    server.close()
    await server.wait_closed()
    return handler.accepted


def main() -> None:
    parser = argparse.ArgumentParser(description="SMTP sink that accepts and discards mail.")
    parser.add_argument("--host", default="127.0.0.1", help="loopback address to listen on")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    if not ipaddress.ip_address(args.host).is_loopback:
        raise SystemExit(f"sink: {args.host!r} is not a loopback address; use 127.0.0.1 or ::1")
    accepted = asyncio.run(serve(args.host, args.port))
    print(f"sink: accepted {accepted} messages", flush=True)


if __name__ == "__main__":
    main()
