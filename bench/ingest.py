#!/usr/bin/env python3
"""Durable ingest benchmark: messages per second and latency into a fresh Mailkeep.

Each run covers one message size, session count and load driver. It
starts Mailkeep on a throwaway data directory and sends the messages over
loopback. Then it checks that every acknowledged message is in the store
and stops the server by its process id. The domain is hosted in mode ``etrn``,
so mail is held and no delivery runs during the measurement.

Drivers: Postfix's ``smtp-source -d`` (throughput only) when it is
installed, and bench/loadgen.py (throughput and latency percentiles from
MAIL FROM to the 250 after the final dot). ``--target sink`` measures the
bare aiosmtpd sink (bench/sink.py) instead, as a baseline without storage.

    .venv/bin/python bench/ingest.py                      # 1, 10, 50 sessions; 4 KiB and 100 KiB
    .venv/bin/python bench/ingest.py --sessions 50 --sizes 4096 --reps 3
    .venv/bin/python bench/ingest.py --target sink

Results go to $BENCH_RESULTS/ingest.jsonl (default /tmp/mk/bench), one
JSON line per run, and a Markdown table of medians is printed at the end.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import benchlib as lib


def messages_for(size: int, args: argparse.Namespace) -> int:
    """Return the message count for one run: --messages, capped at --max-mib of payload."""
    return max(1, min(args.messages, args.max_mib * 1024 * 1024 // size))


def run_once(args: argparse.Namespace, driver: str, size: int, sessions: int, rep: int) -> dict:
    workdir = lib.fresh_dir(Path(args.workdir) / f"{args.target}-ingest")
    port = lib.free_port()
    if args.target == "mailkeep":
        server = lib.Mailkeep(workdir, port, relay_port=lib.free_port(), hold=True)
    else:
        server = lib.BareSink(workdir, port)
    count = messages_for(size, args)
    server.start()
    try:
        time.sleep(0.5)
        load_before = lib.load_average()
        cpu_before = lib.cpu_seconds(server.pid)
        profile = None
        if args.profile:
            profile = Path(args.profile) / f"ingest-{args.target}-{driver}-{size}-{sessions}-r{rep}.txt"
        with lib.Profiler(profile, server.pid, gil=args.profile_gil):
            if driver == "smtp-source":
                record = lib.run_smtp_source(port, sessions, count, size, args.timeout)
            else:
                record = lib.run_loadgen(port, sessions, count, size, args.timeout)
        cpu = lib.cpu_seconds(server.pid) - cpu_before
        record.update({"what": "ingest", "target": args.target, "rep": rep,
                       "load_1m_before": load_before, "server_cpu_s": round(cpu, 2),
                       "server_cpu_us_per_msg": round(1e6 * cpu / max(record["msgs"], 1))})
        if isinstance(server, lib.Mailkeep):
            # Every message that got its 250 must be in the store already.
            record["queued"] = server.queued()
            acknowledged = record["msgs"] if "error" not in record else None
            if acknowledged is not None and record["queued"] != acknowledged:
                record["error"] = (f"{acknowledged} messages acknowledged but "
                                   f"{record['queued']} in the store")
            record["server_errors"] = server.log_count(": error: ")
    finally:
        server.stop()
    return record


def print_table(records: list[dict]) -> None:
    """Print the median of each (target, driver, size, sessions) group as a Markdown table."""
    groups: dict[tuple, list[dict]] = {}
    for record in records:
        key = (record["target"], record["driver"], record["size"], record["sessions"])
        groups.setdefault(key, []).append(record)
    print("\n| target | driver | size | sessions | runs | msgs/s median (min-max) "
          "| p50 ms | p90 ms | p99 ms | max ms |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for (target, driver, size, sessions), runs in groups.items():
        rates = sorted(r["per_s"] for r in runs)
        cells = []
        for name in ("p50_ms", "p90_ms", "p99_ms", "max_ms"):
            values = [r[name] for r in runs if r.get(name) is not None]
            cells.append(f"{statistics.median(values):.1f}" if values else "-")
        size_text = f"{size // 1024} KiB" if size % 1024 == 0 else f"{size} B"
        print(f"| {target} | {driver} | {size_text} | {sessions} | {len(runs)} "
              f"| {statistics.median(rates):.0f} ({rates[0]:.0f}-{rates[-1]:.0f}) "
              f"| {' | '.join(cells)} |")


def main() -> int:
    parser = argparse.ArgumentParser(description="Durable SMTP ingest benchmark on loopback.")
    parser.add_argument("--target", choices=("mailkeep", "sink"), default="mailkeep",
                        help="server to measure (sink: bare aiosmtpd, stores nothing)")
    parser.add_argument("--sessions", type=int, nargs="+", default=[1, 10, 50],
                        help="concurrent SMTP sessions, one run per value")
    parser.add_argument("--sizes", type=int, nargs="+", default=[4096, 102400],
                        help="payload bytes per message, without headers")
    parser.add_argument("--driver", nargs="+", choices=("smtp-source", "loadgen"),
                        default=lib.available_drivers(),
                        help="load generators (default: smtp-source when installed, and loadgen)")
    parser.add_argument("--messages", type=int, default=5000, help="messages per run")
    parser.add_argument("--max-mib", type=int, default=200,
                        help="cap on payload MiB per run; fewer messages are sent for large sizes")
    parser.add_argument("--reps", type=int, default=1, help="repetitions of each run")
    parser.add_argument("--timeout", type=float, default=180.0,
                        help="wall-time limit of one run's load, in seconds")
    parser.add_argument("--workdir", default="/tmp/mk/bench/runs",
                        help="scratch directory; its contents are deleted")
    parser.add_argument("--out", default=str(lib.results_dir() / "ingest.jsonl"),
                        help="JSON-lines file the results are appended to")
    parser.add_argument("--profile", metavar="DIR",
                        help="record each run's server with py-spy into DIR (collapsed stacks)")
    parser.add_argument("--profile-gil", action="store_true",
                        help="with --profile, sample only the thread that holds the GIL")
    args = parser.parse_args()

    if "smtp-source" in args.driver and not lib.available_drivers()[0] == "smtp-source":
        parser.error("smtp-source is not installed (Debian package postfix); use --driver loadgen")

    out = Path(args.out)
    lib.emit(out, lib.machine())
    records = []
    for size in args.sizes:
        for sessions in args.sessions:
            for driver in args.driver:
                for rep in range(1, args.reps + 1):
                    lib.log(f"{args.target}: {driver}, {sessions} sessions, {size} bytes, "
                            f"{messages_for(size, args)} messages, rep {rep}")
                    record = run_once(args, driver, size, sessions, rep)
                    lib.emit(out, record)
                    records.append(record)

    print_table(records)
    return 1 if any("error" in r for r in records) else 0


if __name__ == "__main__":
    sys.exit(main())
