#!/usr/bin/env bash
# Mailkeep as a contestant of the team's side-by-side perf harness, whose
# generic contestant substitutes {smtp_port} {relay_port} {workdir} {hold}
# into three commands (see docs/benchmarks.md for the whole invocation):
#
#   MAILKEEP_CMD="$PWD/bench/perf-contestant.sh serve {smtp_port} {relay_port} {workdir} {hold}"
#   CONTESTANT_QUEUED="$PWD/bench/perf-contestant.sh queued {workdir}"
#   CONTESTANT_RELEASE="$PWD/bench/perf-contestant.sh release {workdir}"
#
# serve    writes WORKDIR/mailkeep.toml (SMTP on 127.0.0.1:SMTP_PORT, data in
#          WORKDIR/data), hosts customer.test for account "bench", and execs
#          `mailkeep serve --no-tui`, so the harness's pid is the server's.
#          HOLD=1 hosts the domain in mode etrn (mail is held until released),
#          HOLD=0 in mode smtp (pushed at once); either way to 127.0.0.1:RELAY_PORT.
# queued   prints "TOTAL UNSETTLED": messages in the store, and those of them
#          a delivery connection is carrying now.
# release  runs `mailkeep queue flush customer.test`: held mail becomes due
#          and the scheduler pushes it to the relay port.
#
# MAILKEEP_BIN overrides the mailkeep command (default: this checkout's .venv).
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
MAILKEEP_BIN="${MAILKEEP_BIN:-$REPO/.venv/bin/mailkeep}"
DOMAIN=customer.test

usage() {
  echo "usage: $0 serve SMTP_PORT RELAY_PORT WORKDIR HOLD | queued WORKDIR | release WORKDIR" >&2
  exit 2
}

[ $# -ge 2 ] || usage
action="$1"
case "$action" in
  serve)
    [ $# -ge 5 ] || usage
    smtp_port="$2"; relay_port="$3"; workdir="$4"; hold="$5"
    # The perf harness's Mailkeep template appends its own default flags after
    # MAILKEEP_CMD, because a "}" in the default value of ${MAILKEEP_CMD:-...}
    # ends the expansion early. Arguments after HOLD are therefore reported and ignored.
    if [ $# -gt 5 ]; then
      shift 5
      echo "perf-contestant: ignoring extra arguments: $*" >&2
    fi ;;
  queued|release)
    workdir="$2" ;;
  *) usage ;;
esac
mkdir -p "$workdir"
workdir="$(cd "$workdir" && pwd)"
config="$workdir/mailkeep.toml"
database="$workdir/data/mailkeep.sqlite3"

case "$action" in
  serve)
    # Every load session comes from 127.0.0.1, so Mailkeep's default limit of
    # 50 connections per client address would reject the 51st.
    cat > "$config" <<EOF
hostname = "mx.bench.test"
data_dir = "$workdir/data"
[listen]
smtp = ["127.0.0.1:$smtp_port"]
[limits]
max_connections = 1000
max_connections_per_client = 1000
EOF
    mode=smtp
    [ "$hold" = 1 ] && mode=etrn
    echo bench-password | "$MAILKEEP_BIN" --config "$config" account add bench --password-stdin
    "$MAILKEEP_BIN" --config "$config" domain add "$DOMAIN" --account bench --mode "$mode" \
      --host 127.0.0.1 --port "$relay_port"
    exec "$MAILKEEP_BIN" --config "$config" serve --no-tui ;;
  queued)
    if [ ! -f "$database" ]; then
      echo "0 0"
    elif command -v sqlite3 >/dev/null; then
      sqlite3 -separator ' ' "file:$database?mode=ro" \
        "SELECT COUNT(*), COALESCE(SUM(delivering), 0) FROM message"
    else
      python3 - "$database" <<'EOF'
import sqlite3, sys
conn = sqlite3.connect(f"file:{sys.argv[1]}?mode=ro", uri=True, timeout=10)
print(*conn.execute("SELECT COUNT(*), COALESCE(SUM(delivering), 0) FROM message").fetchone())
EOF
    fi ;;
  release)
    "$MAILKEEP_BIN" --config "$config" queue flush "$DOMAIN" ;;
esac
