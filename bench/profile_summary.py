#!/usr/bin/env python3
"""Summarize py-spy collapsed stacks (``py-spy record --format raw``) as top-N tables.

Each input line is ``frame;frame;...;frame COUNT`` with the outermost frame
first; with ``--threads`` the first frame names the thread. For each thread
(or all threads together with ``--merge``) the script prints the functions
with the most samples of their own ("self") and the most samples with the
function anywhere on the stack ("total"), as percentages of that thread's
samples. Line numbers are dropped, so a function counts once per stack.

    python3 bench/profile_summary.py /tmp/mk/profile/ingest-*.txt --top 25
"""

from __future__ import annotations

import argparse
import collections
import re
import sys

_LINE_NUMBER = re.compile(r":\d+\)$")


def function_name(frame: str) -> str:
    """Return ``name (file)`` for a frame ``name (path/to/file.py:LINE)``."""
    frame = _LINE_NUMBER.sub(")", frame.strip())
    name, _, where = frame.partition(" (")
    if where:
        parts = where.rstrip(")").split("/")
        # Keep the package and module: ".../mailkeep/server/smtpd.py" -> "server/smtpd.py".
        where = "/".join(parts[-2:])
        return f"{name} ({where})"
    return name


def read_stacks(paths: list[str], merge: bool) -> dict[str, list[tuple[list[str], int]]]:
    """Return the stacks of each thread as (frames, samples), outermost frame first."""
    threads: dict[str, list[tuple[list[str], int]]] = collections.defaultdict(list)
    for path in paths:
        with open(path) as handle:
            for line in handle:
                stack, _, count = line.rstrip("\n").rpartition(" ")
                if not stack or not count.isdigit():
                    continue
                frames = stack.split(";")
                thread = "all threads"
                if frames and frames[0].startswith(("thread ", "process ")):
                    head = frames.pop(0)
                    if frames and frames[0].startswith("thread "):
                        head = frames.pop(0)
                    if not merge:
                        thread = head
                threads[thread].append(([function_name(f) for f in frames], int(count)))
    return threads


def summarize(stacks: list[tuple[list[str], int]], top: int) -> str:
    total = sum(count for _frames, count in stacks)
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    for frames, count in stacks:
        if frames:
            own[frames[-1]] += count
        for name in set(frames):
            inclusive[name] += count
    lines = [f"samples: {total}", "", "self %  | function", "--------|---------"]
    lines += [f"{100 * n / total:6.1f}  | {name}" for name, n in own.most_common(top)]
    lines += ["", "total % | function", "--------|---------"]
    lines += [f"{100 * n / total:6.1f}  | {name}" for name, n in inclusive.most_common(top)]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description="Top functions in py-spy collapsed stacks.")
    parser.add_argument("files", nargs="+", help="output files of py-spy record --format raw")
    parser.add_argument("--top", type=int, default=20, help="rows per table")
    parser.add_argument("--merge", action="store_true", help="add all threads together")
    parser.add_argument("--min-share", type=float, default=2.0,
                        help="leave out threads with less than this percent of all samples")
    args = parser.parse_args()
    threads = read_stacks(args.files, args.merge)
    grand = sum(count for stacks in threads.values() for _f, count in stacks)
    if not grand:
        print("no samples found", file=sys.stderr)
        return 1
    ordered = sorted(threads.items(), key=lambda item: -sum(c for _f, c in item[1]))
    for thread, stacks in ordered:
        share = 100 * sum(c for _f, c in stacks) / grand
        if share < args.min_share:
            continue
        print(f"\n## {thread} ({share:.0f}% of all samples)\n")
        print(summarize(stacks, args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
