"""The ``mailkeep`` command: run the server and administer accounts, domains and the queue.

The config file comes from ``--config PATH``, else the ``MAILKEEP_CONFIG``
environment variable, else ``/etc/mailkeep/mailkeep.toml``. Commands that
change the store act on the running server without a restart. Data goes to
standard output; messages and errors go to standard error.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import os
import secrets
import sqlite3
import sys
import time
from contextlib import contextmanager
from typing import Iterator

from argon2 import PasswordHasher
from sqlmodel import Session

from . import __version__, cli_mailbox, mailq
from .config import DEFAULT_PATH, ConfigError, Settings, load
from .store import accounts, inspect
from .store.accounts import Conflict, NotFound
from .store.db import connect, create_schema, make_engine
from .store.models import MODES


class CommandError(Exception):
    """A command failed in a way the user can fix; the message explains how."""


def _print_error(text: str) -> None:
    print(f"mailkeep: {text}", file=sys.stderr)


# -- store access -------------------------------------------------------------------


@contextmanager
def _session(settings: Settings) -> Iterator[Session]:
    create_schema(settings.database)
    engine = make_engine(settings.database)
    try:
        with Session(engine) as session:
            yield session
    finally:
        engine.dispose()


@contextmanager
def _connection(settings: Settings, write: bool = False) -> Iterator:
    create_schema(settings.database)
    conn = connect(settings.database)
    try:
        if write:
            conn.execute("BEGIN IMMEDIATE")
        yield conn
        if write:
            conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    finally:
        conn.close()


def _read_secret(from_stdin: bool, what: str, confirm: bool = True) -> str:
    if from_stdin:
        value = sys.stdin.readline().rstrip("\r\n")
    else:
        if not sys.stdin.isatty():
            raise CommandError(f"no terminal to ask for the {what}; pass --{what.split()[0]}-stdin "
                               f"and write it to standard input")
        value = getpass.getpass(f"New {what}: ")
        if confirm and getpass.getpass(f"Repeat the {what}: ") != value:
            raise CommandError(f"the two {what}s differ; nothing was changed")
    if not value:
        raise CommandError(f"empty {what}; nothing was changed")
    return value


def _hash(password: str) -> str:
    return PasswordHasher().hash(password)


# -- serve --------------------------------------------------------------------------


def cmd_serve(settings: Settings, args: argparse.Namespace) -> int:
    from .events import bus, log_events, setup_logging
    from .server.app import StartupError, serve

    setup_logging(settings.hostname)
    bus.subscribe(log_events)

    def ready(server) -> None:
        for listener in server.listeners:
            print(f"mailkeep: {listener.service} listening on {listener.address}", file=sys.stderr,
                  flush=True)
        smtp = next((l.address for l in server.listeners if l.service == "smtp"), None)
        if smtp and args.hint:
            host, _, port = smtp.rpartition(":")
            host = "127.0.0.1" if host in ("0.0.0.0", "[::]") else host.strip("[]")
            config = f" --config {settings.path}" if settings.path else ""
            print("mailkeep: send a first message (to the postmaster, which every MX accepts) with:\n"
                  f"  python3 -c \"import smtplib; smtplib.SMTP('{host}', {port}).sendmail("
                  f"'you@example.net', ['postmaster'], 'Subject: hello\\r\\n\\r\\nfirst message\\r\\n')\"\n"
                  f"mailkeep: then see it queued with: .venv/bin/mailkeep{config} queue list",
                  file=sys.stderr, flush=True)

    if _console_wanted(args):
        from .tui.app import run_console
        from .server.app import Server

        setup_logging(settings.hostname, stream=_console_log(settings))
        try:
            return asyncio.run(run_console(Server(settings)))
        except StartupError as exc:
            _print_error(str(exc))
            return 1
    try:
        return asyncio.run(serve(settings, ready))
    except StartupError as exc:
        _print_error(str(exc))
        return 1
    except KeyboardInterrupt:
        return 0


def _console_wanted(args: argparse.Namespace) -> bool:
    """Run the console unless --no-tui, no terminal, or a systemd service (INVOCATION_ID)."""
    if args.no_tui or os.environ.get("INVOCATION_ID"):
        return False
    return sys.stdin.isatty() and sys.stdout.isatty()


def _console_log(settings: Settings):
    """Open the log file used while the console owns the terminal."""
    path = os.path.join(settings.data_dir, "mailkeep.log")
    os.makedirs(settings.data_dir, exist_ok=True)
    print(f"mailkeep: starting the console; the log goes to {path}", file=sys.stderr)
    return open(path, "a", buffering=1, encoding="utf-8")


# -- account ------------------------------------------------------------------------


def cmd_account(settings: Settings, args: argparse.Namespace) -> int:
    with _session(settings) as session:
        if args.action == "add":
            password = _read_secret(args.password_stdin, "password")
            accounts.add_account(session, args.name, _hash(password))
            print(f"account {args.name} added", file=sys.stderr)
        elif args.action == "passwd":
            account = accounts.get_account(session, args.name)
            account.password_hash = _hash(_read_secret(args.password_stdin, "password"))
            session.add(account)
            session.commit()
            print(f"password of {args.name} changed", file=sys.stderr)
        elif args.action == "secret":
            account = accounts.get_account(session, args.name)
            if args.secret_stdin:
                secret = _read_secret(True, "secret")
            else:
                secret = secrets.token_urlsafe(18)
            account.shared_secret = secret
            session.add(account)
            session.commit()
            if args.secret_stdin:
                print(f"CRAM-MD5 secret of {args.name} set", file=sys.stderr)
            else:
                print(secret)
                print(f"new CRAM-MD5 secret of {args.name} printed above; it is shown only once",
                      file=sys.stderr)
        elif args.action in ("enable", "disable"):
            account = accounts.get_account(session, args.name)
            account.enabled = args.action == "enable"
            session.add(account)
            session.commit()
            print(f"account {args.name} {args.action}d", file=sys.stderr)
        elif args.action == "remove":
            accounts.remove_account(session, args.name)
            print(f"account {args.name} removed", file=sys.stderr)
        else:
            rows = accounts.list_accounts(session)
            if not rows:
                print("no accounts; add one with `mailkeep account add NAME`", file=sys.stderr)
            for account, domains in rows:
                state = "enabled" if account.enabled else "disabled"
                print(f"{account.name}\t{state}\t{','.join(domains) or '-'}")
    return 0


# -- domain -------------------------------------------------------------------------


def _show_domain(domain, owner: str) -> str:
    target = accounts.describe_target(domain.mode, domain.host, domain.port)
    return (f"domain:     {domain.name}\naccount:    {owner}\nmode:       {domain.mode}\n"
            f"target:     {target}\nretention:  {domain.retention_days} days\n"
            f"recipients: {domain.recipients or '(any local part)'}\n")


def cmd_domain(settings: Settings, args: argparse.Namespace) -> int:
    with _session(settings) as session:
        if args.action == "add":
            domain = accounts.add_domain(session, args.domain, args.account, args.mode,
                                         args.host or "",
                                         25 if args.port is None else args.port,
                                         30 if args.retention is None else args.retention,
                                         "" if args.recipients is None else args.recipients)
            print(f"domain {domain.name} added (mode {domain.mode})", file=sys.stderr)
        elif args.action == "set":
            domain = accounts.set_domain(session, args.domain, account=args.account, mode=args.mode,
                                         host=args.host, port=args.port,
                                         retention_days=args.retention,
                                         recipients="" if args.accept_all else args.recipients)
            print(f"domain {domain.name} changed", file=sys.stderr)
        elif args.action == "remove":
            accounts.remove_domain(session, args.domain, force=args.force)
            print(f"domain {accounts.normalize_domain(args.domain)} removed", file=sys.stderr)
        elif args.action == "show":
            domain = accounts.get_domain(session, args.domain)
            owner = accounts.accounts_by_id(session).get(domain.account_id, "?")
            sys.stdout.write(_show_domain(domain, owner))
        else:
            rows = accounts.list_domains(session)
            if not rows:
                print("no domains; add one with `mailkeep domain add DOMAIN --account NAME "
                      "--mode smtp --host HOST`", file=sys.stderr)
            for domain, owner in rows:
                target = accounts.describe_target(domain.mode, domain.host, domain.port)
                print(f"{domain.name}\t{owner}\t{domain.mode}\t{target}\t{domain.retention_days}d")
    return 0


# -- queue --------------------------------------------------------------------------


def _modes(settings: Settings) -> dict[str, str]:
    with _connection(settings) as conn:
        return {name: route.mode for name, route in accounts.load_routes(conn).items()}


def _queue_ids(args: argparse.Namespace) -> list[str]:
    ids = list(args.ids)
    if ids == ["-"]:
        ids = [line.strip() for line in sys.stdin if line.strip()]
    return [qid.rstrip("*!#") for qid in ids]


def _resolve(conn, ids: list[str]) -> list[int]:
    if ids == ["ALL"]:
        return [row[0] for row in conn.execute("SELECT id FROM message")]
    found = inspect.resolve_ids(conn, ids)
    missing = [qid for qid in ids if qid not in found]
    if missing and not found:
        raise CommandError(f"{', '.join(missing)}: no such message in the queue "
                           "(`mailkeep queue list` shows the ids); no message was changed")
    for qid in missing:
        _print_error(f"{qid}: no such message in the queue (`mailkeep queue list` shows the ids)")
    return list(found.values())


def cmd_queue(settings: Settings, args: argparse.Namespace) -> int:
    action = args.action
    if action == "list":
        return _queue_list(settings, args)
    if action == "show":
        return _queue_show(settings, args)
    if action == "flush":
        return _queue_flush(settings, args)
    if action == "retry" and args.domain:
        domain = accounts.normalize_domain(args.domain)
        with _connection(settings, write=True) as conn:
            count = inspect.retry_domain(conn, domain)
            hosted = domain in accounts.load_routes(conn)
        if not hosted and not count:
            # A domain removed with --force may still have mail queued, so only
            # a name with neither a route nor mail is an error.
            raise CommandError(f"domain {domain!r} not found; `mailkeep domain list` shows the "
                               "hosted domains")
        print(f"{domain}: {count} recipient(s) scheduled for delivery now", file=sys.stderr)
        return 0
    if not args.ids:
        raise CommandError(f"give queue ids, ALL, or - to read ids from standard input")
    ids = _queue_ids(args)
    with _connection(settings, write=True) as conn:
        message_ids = _resolve(conn, ids)
        names = {v: k for k, v in inspect.resolve_ids(conn, ids).items()} if ids != ["ALL"] else {}
        unchanged: dict[int, str] = {}
        if action == "retry":
            unchanged = inspect.retry(conn, message_ids)
            verb = "requeued"
        elif action == "hold":
            unchanged = inspect.set_hold(conn, message_ids, True)
            verb = "placed on hold"
        elif action == "release":
            unchanged = inspect.set_hold(conn, message_ids, False)
            verb = "released from hold"
        elif action == "bounce":
            from .server.dsn import return_to_sender

            held = {name for name, route in accounts.load_routes(conn).items() if route.mode != "smtp"}
            notices = return_to_sender(conn, message_ids, settings.hostname,
                                       "returned to the sender by the administrator", held)
            verb = "returned to sender"
            if notices:
                print(f"notifications queued: {' '.join(notices)}", file=sys.stderr)
        else:
            inspect.delete(conn, message_ids)
            verb = "removed"
    for mid in message_ids:
        name = names.get(mid, str(mid))
        if mid in unchanged:
            print(f"{name}: not changed: {unchanged[mid]}", file=sys.stderr)
        elif mid in names:
            print(f"{name}: {verb}", file=sys.stderr)
    done = len(message_ids) - len(unchanged)
    print(f"{verb.capitalize()}: {done} message{'s' if done != 1 else ''}", file=sys.stderr)
    return 0


def _queue_list(settings: Settings, args: argparse.Namespace) -> int:
    domain = accounts.normalize_domain(args.domain) if args.domain else None
    with _connection(settings) as conn:
        messages = inspect.list_messages(conn, domain=domain, state=args.state)
        modes = {name: route.mode for name, route in accounts.load_routes(conn).items()}
    if args.json:
        for message in messages:
            print(mailq.to_json(message, modes))
    else:
        sys.stdout.write(mailq.format_listing(messages, modes))
    return 0


def _queue_show(settings: Settings, args: argparse.Namespace) -> int:
    with _connection(settings) as conn:
        found = inspect.list_messages(conn, queue_id=args.id.rstrip("*!#"))
        if not found:
            raise CommandError(f"{args.id}: no such message in the queue (`mailkeep queue list` shows the ids)")
        message = found[0]
        tries = inspect.attempts(conn, message.id)
        head = inspect.headers(conn, message.id)
        body = None
        if args.body:
            body = conn.execute("SELECT data FROM message WHERE id = ?", (message.id,)).fetchone()[0]
    if args.json:
        print(mailq.to_json(message, {}))
        return 0
    out = [
        f"queue id:  {message.queue_id}",
        f"state:     {message.state}",
        f"arrived:   {time.strftime('%Y-%m-%d %H:%M:%S %z', time.localtime(message.arrived))}",
        f"size:      {message.size} bytes",
        f"sender:    <{message.sender}>",
        f"client:    {message.client} helo={message.helo}",
        "recipients:",
    ]
    for r in message.recipients:
        due = ""
        if r.state == "deferred" and r.next_attempt:
            due = f", next attempt {time.strftime('%H:%M:%S', time.localtime(r.next_attempt))}"
        out.append(f"  <{r.address}> {r.state}, attempts={r.attempts}{due}")
        if r.last_error:
            out.append(f"    last error: {r.last_error}")
    if tries:
        out.append("attempts:")
        for at, address, relay, status, reply in tries:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))
            out.append(f"  {stamp} <{address}> relay={relay or 'none'} status={status} ({reply})")
    print("\n".join(out))
    if args.headers or args.body:
        print()
        sys.stdout.write((body if body is not None else head).decode("utf-8", "replace"))
    return 0


def _queue_flush(settings: Settings, args: argparse.Namespace) -> int:
    domain = accounts.normalize_domain(args.domain)
    with _connection(settings, write=True) as conn:
        routes = accounts.load_routes(conn)
        route = routes.get(domain)
        if route is None:
            raise CommandError(f"domain {domain!r} not found; `mailkeep domain list` shows the hosted domains")
        if route.mode != "smtp" and not route.host:
            raise CommandError(
                f"{domain} (mode {route.mode}) has no host to deliver to; set one with "
                f"`mailkeep domain set {domain} --host HOST`, or let the customer send "
                f"ETRN account;password from its own address"
            )
        count = inspect.flush_domain(conn, domain)
    print(f"{domain}: delivery of {count} recipient(s) starts within a second", file=sys.stderr)
    return 0


# -- etrn client --------------------------------------------------------------------


def cmd_etrn(settings: Settings, args: argparse.Namespace) -> int:
    """Send ETRN to a server, print its reply, and fail on 4xx and 5xx."""
    import smtplib
    import ssl

    from .config import parse_hostport

    host, port = parse_hostport(args.server, "--server", default_port=25)
    if args.account:
        if not args.password_stdin and not sys.stdin.isatty():
            raise CommandError("no terminal to ask for the password; pass --password-stdin")
        password = _read_secret(args.password_stdin, "password", confirm=False) \
            if args.password_stdin else getpass.getpass(f"Password of {args.account}: ")
        argument = f"{args.account};{password}"
    elif args.domain:
        argument = args.domain
    else:
        raise CommandError("give a DOMAIN, or --account NAME for the authenticated form")
    try:
        with smtplib.SMTP(host, port, local_hostname=args.helo, timeout=args.timeout) as smtp:
            smtp.ehlo()
            if args.starttls:
                context = ssl.create_default_context(cafile=args.cafile) if args.cafile \
                    else ssl._create_unverified_context()
                smtp.starttls(context=context)
                smtp.ehlo()
            code, text = smtp.docmd("ETRN", argument)
    except (OSError, smtplib.SMTPException) as exc:
        raise CommandError(f"ETRN to {host}:{port} failed: {exc}") from None
    print(f"{code} {text.decode('utf-8', 'replace')}")
    if code < 400:
        return 0
    return 4 if code < 500 else 5


# -- argument parsing ---------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mailkeep",
        description="Mailkeep: an MX that stores mail and hands it on to customers' servers.",
        epilog="The config file is --config PATH, else $MAILKEEP_CONFIG, else "
               "/etc/mailkeep/mailkeep.toml; settings missing from it keep their defaults.",
    )
    parser.add_argument("--config", metavar="PATH", help="TOML config file")
    parser.add_argument("--version", action="version", version=f"mailkeep {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    serve = commands.add_parser("serve", help="run every listener and the delivery workers")
    serve.add_argument("--no-tui", action="store_true",
                       help="run headless and log to standard error (the default without a terminal)")
    serve.add_argument("--hint", action="store_true", help=argparse.SUPPRESS)

    account = commands.add_parser("account", help="manage customer accounts")
    account_actions = account.add_subparsers(dest="action", metavar="ACTION", required=True)
    for name, text in (("add", "add an account"), ("passwd", "change an account's password")):
        sub = account_actions.add_parser(name, help=text)
        sub.add_argument("name")
        sub.add_argument("--password-stdin", action="store_true",
                         help="read the password from the first line of standard input")
    secret = account_actions.add_parser(
        "secret", help="generate and print a new CRAM-MD5 secret (ODMR, AUTH), or set one")
    secret.add_argument("name")
    secret.add_argument("--secret-stdin", action="store_true",
                        help="read the secret from the first line of standard input")
    account_actions.add_parser("enable", help="allow the account's logins again").add_argument("name")
    account_actions.add_parser(
        "disable", help="refuse the account's logins (ETRN, AUTH, ATRN); its mail is still accepted"
    ).add_argument("name")
    account_actions.add_parser("remove", help="remove an account that owns no domain").add_argument("name")
    account_actions.add_parser("list", help="list accounts and their domains")

    domain = commands.add_parser("domain", help="manage hosted domains")
    domain_actions = domain.add_subparsers(dest="action", metavar="ACTION", required=True)
    for name, text in (("add", "host a new domain"), ("set", "change a domain's settings")):
        sub = domain_actions.add_parser(name, help=text)
        sub.add_argument("domain")
        sub.add_argument("--account", required=name == "add", help="owning account")
        sub.add_argument("--mode", choices=MODES, default="smtp" if name == "add" else None,
                         help="delivery mode (default for add: smtp)")
        sub.add_argument("--host", help="customer server to deliver to")
        sub.add_argument("--port", type=int, help="its TCP port (default 25)")
        sub.add_argument("--retention", type=int, metavar="DAYS",
                         help="days held mail is kept before it is returned (default 30)")
        policy = sub.add_mutually_exclusive_group()
        policy.add_argument("--recipients", metavar="LOCAL,...",
                            help="accept only these local parts at RCPT (postmaster always); "
                                 "others get 550 5.1.1")
        if name == "set":
            policy.add_argument("--accept-all", action="store_true",
                                help="accept every local part again (clears --recipients)")
    remove = domain_actions.add_parser("remove", help="stop hosting a domain")
    remove.add_argument("domain")
    remove.add_argument("--force", action="store_true", help="remove it even with mail queued")
    domain_actions.add_parser("show", help="show one domain").add_argument("domain")
    domain_actions.add_parser("list", help="list hosted domains")

    queue = commands.add_parser("queue", help="inspect and control the mail queue")
    queue_actions = queue.add_subparsers(dest="action", metavar="ACTION", required=True)
    listing = queue_actions.add_parser("list", help="list queued mail like `postqueue -p`")
    listing.add_argument("--domain", help="only mail with a recipient in this domain")
    listing.add_argument("--state", choices=inspect.STATES, help="only mail in this state")
    listing.add_argument("--json", action="store_true", help="one JSON object per message")
    show = queue_actions.add_parser("show", help="show one message's envelope and attempts")
    show.add_argument("id")
    show.add_argument("--headers", action="store_true", help="also print the header section")
    show.add_argument("--body", action="store_true", help="also print the whole message")
    show.add_argument("--json", action="store_true", help="print it as JSON")
    retry = queue_actions.add_parser("retry", help="try deferred mail again now")
    retry.add_argument("ids", nargs="*", metavar="ID", help="queue ids, ALL, or - for standard input")
    retry.add_argument("--domain", help="retry every deferred message for this domain")
    for name, text in (("hold", "stop delivering messages until released"),
                       ("release", "release held messages"),
                       ("bounce", "return messages to their senders with a notification"),
                       ("delete", "delete messages without notifying anyone")):
        sub = queue_actions.add_parser(name, help=text)
        sub.add_argument("ids", nargs="+", metavar="ID", help="queue ids, ALL, or - for standard input")
    flush = queue_actions.add_parser("flush", help="deliver a domain's held and deferred mail now")
    flush.add_argument("domain")

    trigger = commands.add_parser(
        "etrn", help="ask a server to deliver held mail (ETRN client)",
        description="Send ETRN DOMAIN, or ETRN ACCOUNT;PASSWORD with --account, print the "
                    "server's reply, and exit 0 on 2xx, 4 on 4xx, 5 on 5xx and 1 when the "
                    "server cannot be reached.")
    trigger.add_argument("domain", nargs="?", help="domain whose mail to deliver")
    trigger.add_argument("--server", required=True, metavar="HOST[:PORT]",
                         help="the Mailkeep server (port 25 when omitted)")
    trigger.add_argument("--account", help="use the authenticated form for this account")
    trigger.add_argument("--password-stdin", action="store_true",
                         help="read the account's password from standard input")
    trigger.add_argument("--starttls", action="store_true",
                         help="encrypt the session first (the password then travels inside TLS)")
    trigger.add_argument("--cafile", help="CA file that verifies the server's certificate with --starttls")
    trigger.add_argument("--helo", default=None, help="name to send in EHLO (default: this host's name)")
    trigger.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the server")
    cli_mailbox.add_parser(commands)
    return parser


HANDLERS = {"serve": cmd_serve, "account": cmd_account, "domain": cmd_domain, "queue": cmd_queue,
            "etrn": cmd_etrn,
            "mailbox": lambda settings, args: cli_mailbox.cmd_mailbox(settings, args)}


def _hoist_config(argv: list[str]) -> list[str]:
    """Move ``--config PATH`` given after the command to the front, where argparse expects it."""
    rest, hoisted = [], []
    index = 0
    while index < len(argv):
        item = argv[index]
        if item == "--config" and index + 1 < len(argv):
            hoisted = [item, argv[index + 1]]
            index += 2
            continue
        if item.startswith("--config="):
            hoisted = [item]
        else:
            rest.append(item)
        index += 1
    return hoisted + rest


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    args = _parser().parse_args(_hoist_config(sys.argv[1:] if argv is None else list(argv)))
    settings = Settings()
    try:
        settings = load(args.config)
        if not settings.path and args.command != "etrn":
            print(f"mailkeep: no config file (--config, $MAILKEEP_CONFIG or {DEFAULT_PATH}); "
                  f"using the defaults, data in {settings.data_dir}", file=sys.stderr)
        return HANDLERS[args.command](settings, args) or 0
    except (ConfigError, CommandError, NotFound, Conflict) as exc:
        _print_error(str(exc))
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except sqlite3.Error as exc:
        _print_error(f"database {settings.database}: {exc}")
        return 1
    except OSError as exc:
        text = f"{exc.filename or ''}: {exc.strerror or exc}".lstrip(": ")
        if exc.filename and str(exc.filename).startswith(settings.data_dir):
            text += f"; check data_dir in {settings.path or 'the config file'}"
        _print_error(text)
        return 1


if __name__ == "__main__":
    sys.exit(main())
