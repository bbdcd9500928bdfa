"""Accounts and domains: administration through SQLModel, lookups for the server."""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass

from sqlmodel import Session, func, select

from .models import HELD_MODES, MODES, Account, Domain, Mailbox, MailboxEntry, Recipient


class NotFound(LookupError):
    """An account or domain named on the command line does not exist."""


class Conflict(ValueError):
    """The change would break a rule, such as a duplicate name."""


def normalize_domain(name: str) -> str:
    """Lower-case a domain name and drop a trailing dot."""
    return name.strip().rstrip(".").lower()


def get_account(session: Session, name: str) -> Account:
    account = session.exec(select(Account).where(Account.name == name)).first()
    if account is None:
        raise NotFound(f"account {name!r} not found; `mailkeep account list` shows the accounts")
    return account


def add_account(session: Session, name: str, password_hash: str) -> Account:
    if not name or any(c.isspace() or c in ";:" for c in name):
        raise Conflict(f"invalid account name {name!r}: use letters, digits, '.', '-', '_' or '@'")
    if session.exec(select(Account).where(Account.name == name)).first():
        raise Conflict(f"account {name!r} already exists; use `mailkeep account passwd {name}` to change its password")
    account = Account(name=name, password_hash=password_hash, created=time.time())
    session.add(account)
    session.commit()
    session.refresh(account)
    return account


def remove_account(session: Session, name: str) -> None:
    account = get_account(session, name)
    owned = session.exec(select(Domain.name).where(Domain.account_id == account.id)).all()
    if owned:
        raise Conflict(
            f"account {name!r} still owns {', '.join(sorted(owned))}; remove those domains first"
        )
    session.delete(account)
    session.commit()


def list_accounts(session: Session) -> list[tuple[Account, list[str]]]:
    accounts = session.exec(select(Account).order_by(Account.name)).all()
    result = []
    for account in accounts:
        names = session.exec(
            select(Domain.name).where(Domain.account_id == account.id).order_by(Domain.name)
        ).all()
        result.append((account, list(names)))
    return result


def accounts_by_id(session: Session) -> dict[int, str]:
    return {account.id: account.name for account in session.exec(select(Account)).all()}


def get_domain(session: Session, name: str) -> Domain:
    domain = session.exec(select(Domain).where(Domain.name == normalize_domain(name))).first()
    if domain is None:
        raise NotFound(f"domain {name!r} not found; `mailkeep domain list` shows the hosted domains")
    return domain


def check_host(host: str) -> None:
    """Reject a host that cannot be a host name or address (spaces, control characters)."""
    if host and (any(c.isspace() or not c.isprintable() for c in host) or host.startswith("-")):
        raise Conflict(f"invalid host {host!r}: give a host name or IP address, e.g. mail.example.org")


def check_domain_settings(mode: str, port: int, retention_days: int) -> None:
    if mode not in MODES:
        raise Conflict(f"invalid mode {mode!r}: choose one of {', '.join(MODES)}")
    if not 0 < port < 65536:
        raise Conflict(f"invalid port {port}: use a number from 1 to 65535")
    if retention_days < 1:
        raise Conflict(f"invalid retention {retention_days}: use at least 1 day")


def normalize_recipients(text: str) -> str:
    """Turn ``"Alice, bob ,,"`` into ``"alice,bob"``: lower-case local parts, no blanks.

    Raises:
        Conflict: an entry has a space or an ``@``.
    """
    parts = [part.strip().lower() for part in text.replace("\n", ",").split(",")]
    parts = [part for part in parts if part]
    for part in parts:
        if "@" in part or any(c.isspace() for c in part):
            raise Conflict(f"invalid recipient {part!r}: give local parts only, e.g. alice,bob")
    return ",".join(dict.fromkeys(parts))


def describe_target(mode: str, host: str, port: int) -> str:
    """Say where a domain's mail goes, for listings: ``host:port`` or how it is collected."""
    if mode == "pop3":
        return "(POP3 mailboxes)"
    if host:
        return f"{host}:{port}"
    if mode == "odmr":
        return "(ATRN connection)"
    return f"(requester):{port}"


def add_domain(session: Session, name: str, account: str, mode: str, host: str, port: int,
               retention_days: int, recipients: str = "") -> Domain:
    name = normalize_domain(name)
    if not name or "." not in name or any(c.isspace() or c in "@[]%!:" for c in name):
        raise Conflict(f"invalid domain name {name!r}: give a name such as example.org")
    check_domain_settings(mode, port, retention_days)
    check_host(host)
    if mode == "smtp" and not host:
        raise Conflict(f"mode smtp needs the customer's server: add --host HOST [--port N]")
    owner = get_account(session, account)
    if session.exec(select(Domain).where(Domain.name == name)).first():
        raise Conflict(f"domain {name!r} already exists; change it with `mailkeep domain set {name}`")
    domain = Domain(name=name, account_id=owner.id, mode=mode, host=host, port=port,
                    retention_days=retention_days, recipients=normalize_recipients(recipients),
                    created=time.time())
    session.add(domain)
    session.commit()
    session.refresh(domain)
    return domain


def set_domain(session: Session, name: str, *, account: str | None = None, mode: str | None = None,
               host: str | None = None, port: int | None = None,
               retention_days: int | None = None, recipients: str | None = None) -> Domain:
    """Change a domain's settings; mail already queued follows its new mode."""
    domain = get_domain(session, name)
    old_mode = domain.mode
    if account is not None:
        domain.account_id = get_account(session, account).id
    if mode is not None:
        domain.mode = mode
    if host is not None:
        domain.host = host
    if port is not None:
        domain.port = port
    if retention_days is not None:
        domain.retention_days = retention_days
    if recipients is not None:
        domain.recipients = normalize_recipients(recipients)
    check_domain_settings(domain.mode, domain.port, domain.retention_days)
    check_host(domain.host)
    if domain.mode == "smtp" and not domain.host:
        raise Conflict("mode smtp needs the customer's server: add --host HOST [--port N]")
    session.add(domain)
    if old_mode != domain.mode:
        _requeue_for_mode(session, domain)
    session.commit()
    session.refresh(domain)
    return domain


def _requeue_for_mode(session: Session, domain: Domain) -> None:
    recipients = session.exec(select(Recipient).where(Recipient.domain == domain.name)).all()
    for rcpt in recipients:
        if domain.mode in HELD_MODES:
            rcpt.state = "held"
        elif domain.mode == "smtp" and rcpt.state == "held":
            rcpt.state = "queued"
            rcpt.next_attempt = 0.0
        session.add(rcpt)


def remove_domain(session: Session, name: str, force: bool = False) -> None:
    domain = get_domain(session, name)
    queued = session.exec(
        select(func.count()).select_from(Recipient).where(Recipient.domain == domain.name)
    ).one()
    if queued and not force:
        raise Conflict(
            f"domain {domain.name!r} has {queued} queued recipient(s); deliver or delete them, "
            "or pass --force to remove the domain and keep its mail queued until it expires"
        )
    stored = session.exec(
        select(func.count()).select_from(MailboxEntry).join(Mailbox, Mailbox.id == MailboxEntry.mailbox_id)
        .where(Mailbox.domain == domain.name)
    ).one()
    if stored and not force:
        raise Conflict(
            f"domain {domain.name!r} has {stored} message(s) in its POP3 mailboxes; let them be "
            "collected, or pass --force to remove the domain (its mailboxes stay until "
            "`mailkeep mailbox remove`)"
        )
    session.delete(domain)
    session.commit()


def list_domains(session: Session) -> list[tuple[Domain, str]]:
    rows = session.exec(
        select(Domain, Account.name).join(Account, Account.id == Domain.account_id).order_by(Domain.name)
    ).all()
    return [(domain, owner) for domain, owner in rows]


@dataclass(frozen=True)
class Route:
    """The delivery settings of one hosted domain, as the server caches them."""

    domain: str
    mode: str
    host: str
    port: int
    account_id: int
    retention_days: int
    recipients: frozenset[str] = frozenset()
    """Accepted local parts; empty accepts every one."""


def load_routes(conn: sqlite3.Connection) -> dict[str, Route]:
    """Return every hosted domain's route, keyed by domain name."""
    rows = conn.execute(
        "SELECT name, mode, host, port, account_id, retention_days, recipients FROM domain"
    ).fetchall()
    return {row[0]: Route(*row[:6], frozenset(filter(None, (row[6] or "").split(","))))
            for row in rows}


def data_version(conn: sqlite3.Connection) -> int:
    """Return SQLite's counter that changes when another connection commits."""
    return conn.execute("PRAGMA data_version").fetchone()[0]


def find_account(conn: sqlite3.Connection, name: str) -> tuple[int, str, str, bool] | None:
    """Return (id, password hash, shared secret, enabled) of an account, or None."""
    row = conn.execute(
        "SELECT id, password_hash, shared_secret, enabled FROM account WHERE name = ?", (name,)
    ).fetchone()
    return (row[0], row[1], row[2], bool(row[3])) if row else None
