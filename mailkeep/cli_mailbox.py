"""``mailkeep mailbox``: POP3 mailboxes of the domains in mode ``pop3``.

A mailbox's login name is its address; ``@DOMAIN`` is the domain's
catch-all mailbox, which takes the mail of every address without a mailbox
of its own. Changes reach a running server at once.
"""

from __future__ import annotations

import argparse
import secrets
import sys

from . import cli
from .config import ConfigError, Settings, parse_size
from .store import mailboxes


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Add the ``mailbox`` command and its actions to the top-level parser."""
    mailbox = commands.add_parser(
        "mailbox", help="manage POP3 mailboxes",
        description="POP3 mailboxes of domains in mode pop3. The login name is the address; "
                    "@DOMAIN is the catch-all mailbox for the domain's other addresses.")
    actions = mailbox.add_subparsers(dest="action", metavar="ACTION", required=True)

    add = actions.add_parser("add", help="add a mailbox (ADDRESS, or @DOMAIN for the catch-all)")
    add.add_argument("address", metavar="ADDRESS|@DOMAIN")
    add.add_argument("--account", required=True, help="the account that owns the domain")
    add.add_argument("--password-stdin", action="store_true",
                     help="read the password from the first line of standard input")
    _quota_options(add)

    passwd = actions.add_parser("passwd", help="change a mailbox's password")
    passwd.add_argument("address", metavar="ADDRESS|@DOMAIN")
    passwd.add_argument("--password-stdin", action="store_true",
                        help="read the password from the first line of standard input")

    apop = actions.add_parser(
        "apop", help="make (and print once) or set the APOP and CRAM-MD5 secret",
        description="Without options, make a random secret, store it and print it once. The "
                    "secret is stored readable, because APOP and CRAM-MD5 need it; use one that "
                    "is not used anywhere else.")
    apop.add_argument("address", metavar="ADDRESS|@DOMAIN")
    apop.add_argument("--secret-stdin", action="store_true",
                      help="read the secret from the first line of standard input")
    apop.add_argument("--clear", action="store_true",
                      help="remove the secret: APOP and CRAM-MD5 logins stop working")

    quota = actions.add_parser(
        "quota", help="show or change the quota of a mailbox, or of all an account's mailboxes",
        description="A full mailbox gets 452 4.2.2 at RCPT. 0 means no limit.")
    quota.add_argument("address", nargs="?", metavar="ADDRESS|@DOMAIN")
    quota.add_argument("--account", help="the limit over all mailboxes of this account")
    _quota_options(quota)

    remove = actions.add_parser("remove", help="remove a mailbox")
    remove.add_argument("address", metavar="ADDRESS|@DOMAIN")
    remove.add_argument("--force", action="store_true", help="remove it with the mail it holds")

    listing = actions.add_parser("list", help="list mailboxes with their use and quota")
    listing.add_argument("--account", help="only this account's mailboxes")
    listing.add_argument("--domain", help="only this domain's mailboxes")


def _quota_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--max-messages", type=int, metavar="N",
                        help="most messages (0: no limit)")
    parser.add_argument("--max-size", metavar="SIZE",
                        help="most bytes, e.g. 500M or 2G (0: no limit)")


def _size(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return parse_size(value, "--max-size")
    except ConfigError as exc:
        raise cli.CommandError(str(exc)) from None


def _count(value: int | None) -> int | None:
    if value is not None and value < 0:
        raise cli.CommandError("--max-messages: use 0 or more")
    return value


def _limit(used: int, limit: int) -> str:
    return f"{used}/{limit}" if limit else f"{used}/-"


def cmd_mailbox(settings: Settings, args: argparse.Namespace) -> int:
    """Run one ``mailkeep mailbox`` action; return the exit status."""
    action = args.action
    if action == "list":
        return _list(settings, args)
    if action == "quota":
        return _quota(settings, args)
    if action in ("add", "passwd"):
        password_hash = cli._hash(cli._read_secret(args.password_stdin, "password"))
        with cli._connection(settings, write=True) as conn:
            if action == "passwd":
                address = mailboxes.set_password(conn, args.address, password_hash)
                print(f"password of mailbox {address} changed", file=sys.stderr)
                return 0
            address, mode = mailboxes.add_mailbox(
                conn, args.address, args.account, password_hash,
                _count(args.max_messages) or 0, _size(args.max_size) or 0)
        print(f"mailbox {address} added", file=sys.stderr)
        if mode != "pop3":
            print(f"note: {address.rpartition('@')[2]} is in mode {mode}; mail reaches the "
                  "mailbox once it is in mode pop3 (`mailkeep domain set DOMAIN --mode pop3`)",
                  file=sys.stderr)
        return 0
    if action == "apop":
        return _apop(settings, args)
    with cli._connection(settings, write=True) as conn:
        address, count = mailboxes.remove_mailbox(conn, args.address, force=args.force)
    print(f"mailbox {address} removed with {count} message(s)", file=sys.stderr)
    return 0


def _apop(settings: Settings, args: argparse.Namespace) -> int:
    if args.clear:
        secret = ""
    elif args.secret_stdin:
        secret = cli._read_secret(True, "secret")
    else:
        secret = secrets.token_urlsafe(18)
    with cli._connection(settings, write=True) as conn:
        address = mailboxes.set_apop_secret(conn, args.address, secret)
    if args.clear:
        print(f"APOP secret of {address} removed", file=sys.stderr)
    elif args.secret_stdin:
        print(f"APOP secret of {address} set", file=sys.stderr)
    else:
        print(secret)
        print(f"new APOP secret of {address} printed above; it is shown only once",
              file=sys.stderr)
    return 0


def _quota(settings: Settings, args: argparse.Namespace) -> int:
    count, size = _count(args.max_messages), _size(args.max_size)
    if bool(args.address) == bool(args.account):
        raise cli.CommandError("give a mailbox ADDRESS or --account NAME")
    with cli._connection(settings, write=True) as conn:
        if args.account:
            mailboxes.set_account_quota(conn, args.account, count, size)
            used, used_bytes, limit, limit_bytes = mailboxes.account_usage(conn, args.account)
            name = f"account {args.account}"
        else:
            address, limit, limit_bytes = mailboxes.set_quota(conn, args.address, count, size)
            info = next(m for m in mailboxes.list_mailboxes(conn) if m.address == address)
            used, used_bytes, name = info.messages, info.bytes, address
    print(f"{name}\tmessages {_limit(used, limit)}\tbytes {_limit(used_bytes, limit_bytes)}")
    return 0


def _list(settings: Settings, args: argparse.Namespace) -> int:
    with cli._connection(settings) as conn:
        rows = mailboxes.list_mailboxes(conn, account=args.account, domain=args.domain)
    if not rows:
        print("no mailboxes; add one with `mailkeep mailbox add ADDRESS --account NAME`",
              file=sys.stderr)
    for m in rows:
        print(f"{m.address}\t{m.account}\tmessages {_limit(m.messages, m.max_messages)}\t"
              f"bytes {_limit(m.bytes, m.max_bytes)}\tapop {'yes' if m.has_apop else 'no'}\t"
              f"mode {m.domain_mode}")
    return 0
