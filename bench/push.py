#!/usr/bin/env python3
"""Push benchmark: how fast Mailkeep empties a queue of held mail into a sink.

Each run starts a sink that plays the customer's server (Postfix's
``smtp-sink`` when installed, bench/sink.py otherwise) and a fresh Mailkeep
whose domain is in mode ``etrn`` with the sink as its host, so accepted mail
is held. It sends N messages, checks that N are stored, then runs
``mailkeep queue flush`` and times until the store is empty.

The rate is N divided by the time from starting the flush command until the
queue is empty, so it includes the command's start-up and the scheduler's
reaction time. The record also has the time counted from the flush
command's exit (``per_s_after_flush``).

    .venv/bin/python bench/push.py --messages 5000 --reps 3
    .venv/bin/python bench/push.py --connections 20       # more connections to the sink

Results go to $BENCH_RESULTS/push.jsonl (default /tmp/mk/bench).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import benchlib as lib

POLL_SECONDS = 0.02


def wait_empty(server: lib.Mailkeep, timeout: float) -> tuple[float, int]:
    """Poll the store until it is empty or ``timeout`` passes; return (finish time, messages left)."""
    deadline = time.perf_counter() + timeout
    left = server.queued()
    while left and time.perf_counter() < deadline:
        time.sleep(POLL_SECONDS)
        left = server.queued()
    return time.perf_counter(), left


def run_once(args: argparse.Namespace, rep: int) -> list[dict]:
    workdir = lib.fresh_dir(Path(args.workdir) / "mailkeep-push")
    sink = lib.RelaySink(workdir / "sink", lib.free_port(), prefer_postfix=not args.python_sink)
    server = lib.Mailkeep(workdir, lib.free_port(), sink.port, hold=True,
                          connections=args.connections)
    sink.start()
    try:
        server.start()
        time.sleep(0.5)
        if args.driver == "smtp-source":
            ingest = lib.run_smtp_source(server.smtp_port, args.sessions, args.messages,
                                         args.size, args.timeout)
        else:
            ingest = lib.run_loadgen(server.smtp_port, args.sessions, args.messages, args.size,
                                     args.timeout)
        stored = server.queued()
        ingest.update({"what": "push-ingest-held", "target": "mailkeep", "rep": rep,
                       "queued": stored})
        load_before = lib.load_average()
        cpu_before = lib.cpu_seconds(server.pid)
        profile = Path(args.profile) / f"push-r{rep}.txt" if args.profile else None
        with lib.Profiler(profile, server.pid, gil=args.profile_gil):
            started = time.perf_counter()
            server.flush()
            flushed = time.perf_counter()
            finished, left = wait_empty(server, args.timeout)
        cpu = lib.cpu_seconds(server.pid) - cpu_before
        delivered = stored - left
        push = {
            "what": "push", "target": "mailkeep", "rep": rep, "sink": sink.kind,
            "size": args.size, "msgs": delivered, "left_in_queue": left,
            "seconds": round(finished - started, 3),
            "per_s": round(delivered / (finished - started), 1),
            "flush_command_s": round(flushed - started, 3),
            "per_s_after_flush": round(delivered / max(finished - flushed, 1e-6), 1),
            "connections_per_destination": args.connections or "default",
            "sent_logged": server.log_count("status=sent"),
            "server_errors": server.log_count(": error: "),
            "load_1m_before": load_before,
            "server_cpu_s": round(cpu, 2),
            "server_cpu_us_per_msg": round(1e6 * cpu / max(delivered, 1)),
        }
        if left:
            push["error"] = f"{left} messages still queued after {args.timeout:.0f} s"
        return [ingest, push]
    finally:
        server.stop()
        sink.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description="Push throughput from Mailkeep to a sink.")
    parser.add_argument("--messages", type=int, default=5000, help="messages per run")
    parser.add_argument("--size", type=int, default=4096, help="payload bytes per message")
    parser.add_argument("--sessions", type=int, default=10, help="SMTP sessions for the ingest")
    parser.add_argument("--driver", choices=("smtp-source", "loadgen"),
                        default=lib.available_drivers()[0], help="load generator for the ingest")
    parser.add_argument("--connections", type=int,
                        help="delivery.connections_per_destination (default: Mailkeep's own)")
    parser.add_argument("--python-sink", action="store_true",
                        help="use bench/sink.py even when smtp-sink is installed")
    parser.add_argument("--reps", type=int, default=1, help="repetitions")
    parser.add_argument("--timeout", type=float, default=180.0,
                        help="wall-time limit of the ingest and of the push, in seconds each")
    parser.add_argument("--workdir", default="/tmp/mk/bench/runs",
                        help="scratch directory; its contents are deleted")
    parser.add_argument("--out", default=str(lib.results_dir() / "push.jsonl"),
                        help="JSON-lines file the results are appended to")
    parser.add_argument("--profile", metavar="DIR",
                        help="record the server with py-spy during each push into DIR")
    parser.add_argument("--profile-gil", action="store_true",
                        help="with --profile, sample only the thread that holds the GIL")
    args = parser.parse_args()

    out = Path(args.out)
    lib.emit(out, lib.machine())
    pushes = []
    for rep in range(1, args.reps + 1):
        lib.log(f"push: {args.messages} messages of {args.size} bytes, rep {rep}")
        for record in run_once(args, rep):
            lib.emit(out, record)
            if record["what"] == "push":
                pushes.append(record)

    rates = sorted(r["per_s"] for r in pushes)
    print(f"\npush to {pushes[0]['sink']}: median {statistics.median(rates):.0f} msgs/s "
          f"(min {rates[0]:.0f}, max {rates[-1]:.0f}, {len(rates)} runs of {args.messages})")
    return 1 if any("error" in r for r in pushes) else 0


if __name__ == "__main__":
    sys.exit(main())
