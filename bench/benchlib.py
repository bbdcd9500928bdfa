"""Shared pieces of the benchmark scripts in bench/.

Everything here talks to loopback only and to servers it started itself:
a Mailkeep instance on a throwaway data directory, the bare aiosmtpd sink
(bench/sink.py) or Postfix's ``smtp-sink``. Each server is stopped by its
process id, first with SIGTERM and after a bounded wait with SIGKILL.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DOMAIN = "customer.test"
RCPT = f"to@{DOMAIN}"
SENDER = "from@a.test"
ACCOUNT = "bench"
LOOPBACK = "127.0.0.1"


def log(*parts: object) -> None:
    print("[bench]", *parts, file=sys.stderr, flush=True)


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listened on a moment ago."""
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def port_open(port: int) -> bool:
    try:
        with socket.create_connection((LOOPBACK, port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_port(port: int, timeout: float, process: subprocess.Popen | None = None) -> None:
    """Wait until something accepts connections on ``port``.

    Raises:
        RuntimeError: the port stayed closed for ``timeout`` seconds, or
            ``process`` exited first.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if port_open(port):
            return
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"server exited with status {process.returncode} before "
                               f"listening on {LOOPBACK}:{port}")
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {LOOPBACK}:{port} after {timeout:.0f} s")


def stop_process(process: subprocess.Popen, name: str, grace: float = 30.0) -> None:
    """Send SIGTERM to the process, wait up to ``grace`` seconds, then SIGKILL it."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        log(f"{name} (pid {process.pid}) ignored SIGTERM for {grace:.0f} s; sending SIGKILL")
        process.kill()
        process.wait(10)


def started_or_stop(process: subprocess.Popen, name: str, port: int, timeout: float) -> None:
    """Wait for a freshly started server's port; stop the server when it does not open."""
    try:
        wait_port(port, timeout, process)
    except RuntimeError:
        stop_process(process, name, grace=10)
        raise


def mailkeep_command() -> list[str]:
    """Return the command that runs the ``mailkeep`` CLI of this checkout's environment."""
    script = Path(sys.executable).parent / "mailkeep"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "mailkeep"]


def fresh_dir(path: Path) -> Path:
    """Empty ``path``, then flush the page cache so one run's writes do not land in the next."""
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    os.sync()
    time.sleep(0.5)
    return path


class Mailkeep:
    """A Mailkeep server on a throwaway data directory with a generated config.

    Args:
        workdir: directory for the config, the data directory and the log.
        smtp_port: loopback port to listen on.
        relay_port: loopback port of the sink that plays the customer's server.
        hold: host the domain in mode ``etrn`` so mail is held until
            ``mailkeep queue flush``; otherwise mode ``smtp`` pushes at once.
        connections: override ``delivery.connections_per_destination``.
    """

    def __init__(self, workdir: Path, smtp_port: int, relay_port: int, hold: bool = True,
                 connections: int | None = None):
        self.workdir = workdir
        self.smtp_port = smtp_port
        self.relay_port = relay_port
        self.hold = hold
        self.connections = connections
        self.config = workdir / "mailkeep.toml"
        self.database = workdir / "data" / "mailkeep.sqlite3"
        self.log_path = workdir / "server.log"
        self.process: subprocess.Popen | None = None

    def write_config(self) -> None:
        # Every benchmark session comes from 127.0.0.1, so the default limit
        # of 50 connections per client address would reject the 51st.
        lines = [
            'hostname = "mx.bench.test"',
            f'data_dir = "{self.workdir / "data"}"',
            "[listen]",
            f'smtp = ["{LOOPBACK}:{self.smtp_port}"]',
            "[limits]",
            "max_connections = 1000",
            "max_connections_per_client = 1000",
        ]
        if self.connections:
            lines += ["[delivery]", f"connections_per_destination = {self.connections}"]
        self.config.write_text("\n".join(lines) + "\n")

    def cli(self, *args: str, stdin: str | None = None, timeout: float = 60) -> str:
        """Run ``mailkeep --config CONFIG ARGS``; return its standard error.

        Raises:
            RuntimeError: the command exited non-zero.
        """
        command = [*mailkeep_command(), "--config", str(self.config), *args]
        result = subprocess.run(command, input=stdin, capture_output=True, text=True,
                                timeout=timeout)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed: {result.stderr.strip()}")
        return result.stderr.strip()

    def start(self) -> None:
        """Write the config, add the account and domain, start the server and wait for its port."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.write_config()
        self.cli("account", "add", ACCOUNT, "--password-stdin", stdin="bench-password\n")
        mode = "etrn" if self.hold else "smtp"
        self.cli("domain", "add", DOMAIN, "--account", ACCOUNT, "--mode", mode,
                 "--host", LOOPBACK, "--port", str(self.relay_port))
        command = [*mailkeep_command(), "--config", str(self.config), "serve", "--no-tui"]
        with open(self.log_path, "wb") as out:
            self.process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL)
        started_or_stop(self.process, "mailkeep", self.smtp_port, 60)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def queued(self) -> int:
        """Return the number of messages in the store, read through a read-only connection."""
        conn = sqlite3.connect(f"file:{self.database}?mode=ro", uri=True, timeout=10)
        try:
            return conn.execute("SELECT COUNT(*) FROM message").fetchone()[0]
        finally:
            conn.close()

    def flush(self) -> None:
        """Mark the domain's held mail due (``mailkeep queue flush``)."""
        self.cli("queue", "flush", DOMAIN)

    def log_count(self, needle: str) -> int:
        try:
            with open(self.log_path, "rb") as handle:
                return sum(1 for line in handle if needle.encode() in line)
        except FileNotFoundError:
            return 0

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process, "mailkeep")


class BareSink:
    """The bare aiosmtpd sink (bench/sink.py) as an ingest target: no storage at all."""

    def __init__(self, workdir: Path, smtp_port: int):
        self.workdir = workdir
        self.smtp_port = smtp_port
        self.log_path = workdir / "server.log"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, str(HERE / "sink.py"), "--port", str(self.smtp_port)],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        started_or_stop(self.process, "sink", self.smtp_port, 30)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process, "sink")


class RelaySink:
    """The customer's server for the push benchmark.

    Postfix's ``smtp-sink`` (C, one process) when it is installed, since it
    costs little CPU; bench/sink.py otherwise.
    """

    def __init__(self, workdir: Path, port: int, prefer_postfix: bool = True):
        self.workdir = workdir
        self.port = port
        self.kind = "smtp-sink" if prefer_postfix and shutil.which("smtp-sink") else "bench/sink.py"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.kind == "smtp-sink":
            command = ["smtp-sink"]
            if os.geteuid() == 0:
                command += ["-u", "postfix"]  # smtp-sink exits when run as root without -u
            command += [f"{LOOPBACK}:{self.port}", "512"]
        else:
            command = [sys.executable, str(HERE / "sink.py"), "--port", str(self.port)]
        with open(self.workdir / "sink.log", "wb") as out:
            self.process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL)
        started_or_stop(self.process, self.kind, self.port, 30)

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process, self.kind, grace=10)


def run_smtp_source(port: int, sessions: int, messages: int, size: int, timeout: float) -> dict:
    """Send with ``smtp-source -d`` and time it from start to exit.

    smtp-source reports no latency, so the record has throughput only.
    """
    command = ["smtp-source", "-d", "-l", str(size), "-m", str(messages), "-s", str(sessions),
               "-f", SENDER, "-t", RCPT, f"{LOOPBACK}:{port}"]
    started = time.perf_counter()
    try:
        result = subprocess.run(command, capture_output=True, timeout=timeout)
        error = "" if result.returncode == 0 else \
            f"exit {result.returncode}: {result.stderr.decode(errors='replace').strip()[-300:]}"
    except subprocess.TimeoutExpired:
        error = f"timed out after {timeout:.0f} s (smtp-source was killed)"
    elapsed = time.perf_counter() - started
    record = {"driver": "smtp-source", "sessions": sessions, "size": size, "msgs": messages,
              "seconds": round(elapsed, 3), "per_s": round(messages / elapsed, 1),
              "command": " ".join(command)}
    if error:
        record["error"] = error
    return record


def run_loadgen(port: int, sessions: int, messages: int, size: int, timeout: float) -> dict:
    """Send with bench/loadgen.py; the record includes latency percentiles."""
    command = [sys.executable, str(HERE / "loadgen.py"), "--port", str(port),
               "--sessions", str(sessions), "--messages", str(messages), "--size", str(size),
               "--seconds", str(max(5.0, timeout - 10)), "--sender", SENDER, "--rcpt", RCPT]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"driver": "loadgen", "sessions": sessions, "size": size, "msgs": 0,
                "per_s": 0.0, "error": f"timed out after {timeout:.0f} s (loadgen was killed)"}
    lines = result.stdout.strip().splitlines()
    if not lines:
        return {"driver": "loadgen", "sessions": sessions, "size": size, "msgs": 0, "per_s": 0.0,
                "error": f"no output, exit {result.returncode}: {result.stderr.strip()[-300:]}"}
    record = json.loads(lines[-1])
    record["command"] = " ".join(command)
    return record


def cpu_seconds(pid: int) -> float:
    """Return the user plus system CPU time a process has used so far, all threads included."""
    with open(f"/proc/{pid}/stat") as handle:
        # Fields after the parenthesized command name; utime and stime are fields 14 and 15.
        fields = handle.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def load_average() -> float:
    """Return the 1-minute load average: other work on the machine skews a run's figures."""
    return round(os.getloadavg()[0], 2)


def available_drivers() -> list[str]:
    return ["smtp-source", "loadgen"] if shutil.which("smtp-source") else ["loadgen"]


def machine() -> dict:
    """Describe the machine: CPUs, memory, the disk under /tmp, and software versions."""
    info = {"what": "machine", "nproc": os.cpu_count(), "kernel": platform.release(),
            "python": platform.python_version(), "sqlite": sqlite3.sqlite_version,
            "load_1m": load_average()}
    try:
        with open("/proc/meminfo") as handle:
            total_kib = int(handle.readline().split()[1])
        info["memory_gib"] = round(total_kib / 1024 / 1024, 1)
    except (OSError, ValueError, IndexError):
        pass
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    found = subprocess.run(["findmnt", "-n", "-T", "/tmp", "-o", "SOURCE,FSTYPE"],
                           capture_output=True, text=True)
    if found.returncode == 0:
        info["tmp_filesystem"] = found.stdout.strip()
    if shutil.which("postconf"):
        version = subprocess.run(["postconf", "-d", "-h", "mail_version"], capture_output=True,
                                 text=True)
        info["postfix"] = version.stdout.strip()
    return info


def emit(out: Path, record: dict) -> None:
    """Print the record as one JSON line and append it to ``out``."""
    line = json.dumps(record)
    print(line, flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "a") as handle:
        handle.write(line + "\n")


def results_dir() -> Path:
    return Path(os.environ.get("BENCH_RESULTS", "/tmp/mk/bench"))


class Profiler:
    """py-spy attached to a running server, writing collapsed stacks (``--format raw``).

    Does nothing when ``output`` is None. Samples every thread at 100 Hz.
    With ``gil`` true it samples only the thread that holds the GIL, because
    only that thread runs Python code at any moment.
    """

    def __init__(self, output: Path | None, pid: int, gil: bool = False):
        self.output = output
        self.pid = pid
        self.gil = gil
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> "Profiler":
        if self.output is None:
            return self
        py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        if not Path(py_spy).exists():
            raise SystemExit("bench: --profile needs py-spy; install it with "
                             ".venv/bin/pip install py-spy")
        self.output.parent.mkdir(parents=True, exist_ok=True)
        command = [py_spy, "record", "--pid", str(self.pid), "--rate", "100", "--threads",
                   "--format", "raw", "--output", str(self.output)]
        if self.gil:
            command.append("--gil")
        with open(str(self.output) + ".log", "wb") as errors:
            self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=errors)
        time.sleep(1.0)  # py-spy needs a moment to attach before the load starts
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.process is None:
            return
        # py-spy writes its output when interrupted.
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
        log(f"profile written to {self.output}; summarize it with bench/profile_summary.py")
