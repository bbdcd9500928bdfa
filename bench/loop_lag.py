#!/usr/bin/env python3
"""Event-loop lag of a running Mailkeep, with and without the console, under SMTP load.

The server runs in this process. A probe task sleeps 10 ms at a time and
records how late each wake-up is: that lateness is how long every listener
would have waited for the loop. bench/loadgen.py, in a separate process,
sends mail meanwhile. The run is repeated with the console drawing in the
same loop (Textual's headless driver, which renders every frame but writes
no terminal), so the two figures show what the console costs the listeners.

    .venv/bin/python bench/loop_lag.py --messages 3000 --sessions 10
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mailkeep.config import Listen, Settings
from mailkeep.events import bus, log_events, setup_logging
from mailkeep.server.app import Server
from mailkeep.store.accounts import add_domain
from mailkeep.tui import demo
from mailkeep.tui.app import MailkeepApp

HERE = Path(__file__).resolve().parent
PROBE_INTERVAL = 0.010


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def probe(samples: list[float], stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        start = loop.time()
        await asyncio.sleep(PROBE_INTERVAL)
        samples.append(loop.time() - start - PROBE_INTERVAL)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] if ordered else 0.0


async def run_load(port: int, args: argparse.Namespace) -> dict:
    command = [sys.executable, str(HERE / "loadgen.py"), "--port", str(port), "--sessions",
               str(args.sessions), "--messages", str(args.messages), "--size", "4096",
               "--rcpt", "user@customer.test", "--seconds", "120"]
    process = await asyncio.create_subprocess_exec(*command, stdout=subprocess.PIPE)
    out, _ = await process.communicate()
    return json.loads(out.decode().strip().splitlines()[-1])


async def measure(console: bool, args: argparse.Namespace, workdir: Path) -> dict:
    port = free_port()
    settings = Settings(hostname="mx.mailkeep.test", data_dir=str(workdir / ("console" if console else "headless")),
                        listen=Listen(smtp=[f"127.0.0.1:{port}"]))
    demo.seed(settings, sink_port=free_port())
    from sqlmodel import Session
    from mailkeep.store.db import make_engine
    engine = make_engine(settings.database)
    with Session(engine) as session:  # held, so the run measures ingest only
        add_domain(session, "customer.test", "acme", "etrn", "", 25, 30)
    engine.dispose()
    samples: list[float] = []
    stop = asyncio.Event()
    server = Server(settings)
    if console:
        app = MailkeepApp(server, manage_server=True)
        async with app.run_test(size=(120, 40)) as pilot:
            await pilot.pause(1.0)
            task = asyncio.create_task(probe(samples, stop))
            load = await run_load(port, args)
            stop.set()
            await task
    else:
        await server.start()
        task = asyncio.create_task(probe(samples, stop))
        load = await run_load(port, args)
        stop.set()
        await task
        await server.stop()
    return {
        "console": console, "rate": load.get("per_s"), "samples": len(samples),
        "lag_p50_ms": round(percentile(samples, 50) * 1000, 2),
        "lag_p99_ms": round(percentile(samples, 99) * 1000, 2),
        "lag_max_ms": round(max(samples) * 1000, 2) if samples else 0.0,
    }


async def main_async(args: argparse.Namespace) -> list[dict]:
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for console in (False, True):
            results.append(await measure(console, args, Path(tmp)))
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--sessions", type=int, default=10)
    args = parser.parse_args()
    setup_logging("mx.mailkeep.test", stream=open("/dev/null", "w"))
    bus.subscribe(log_events)
    for record in asyncio.run(main_async(args)):
        print(json.dumps(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
