"""On-Demand Mail Relay (RFC 2645): ATRN and the reversed session.

The customer's server connects, says EHLO, authenticates (CRAM-MD5, or
PLAIN and LOGIN after STARTTLS) and sends ``ATRN [domain,...]``. After our
250 the roles swap on the same connection: the customer's server greets
with 220, and Mailkeep, now the client, delivers the held mail through the
same ``Delivery`` code that push and ETRN use, then sends QUIT and closes.

The ODMR listener (port 366) speaks only this profile: EHLO, AUTH, ATRN,
QUIT, and the harmless RSET, NOOP, HELP and STARTTLS. Mail transactions get
502, because RFC 2645 section 5.4 leaves the ODMR port to ATRN alone. The
SMTP listeners accept ATRN after AUTH too, so a customer can drain over
port 2525.
"""

from __future__ import annotations

import asyncio
import logging
import time

from ..store.models import HELD_MODES
from ..store.queue import claim_domains
from .client import SMTPClient, SMTPClientError
from .delivery import Delivery
from .smtpd import SMTPSession

OK = "250 2.0.0 OK, now reversing the connection: send your greeting"
AUTH_REQUIRED = "530 5.7.0 Authentication required"
NOT_OWNED = "450 4.7.1 ATRN refused: {domain} does not belong to account {account}"
BUSY = "451 4.3.0 Another session of this account is already delivering {domains}; try again later"
NO_MAIL = "453 4.3.0 You have no mail"
LOCAL_ERROR = "451 4.3.0 Unable to process ATRN now, try again later"
SYNTAX = "501 5.5.4 Syntax: ATRN [domain[,domain...]]"
NOT_HERE = "502 5.5.1 Command not implemented on the ODMR service: use EHLO, AUTH and ATRN"
NEED_EHLO = "503 5.5.1 Send EHLO first"


def parse_domains(arg: str | None) -> list[str] | None:
    """Split the ATRN argument into lower-case domain names; [] means all; None when invalid."""
    if not arg or not arg.strip():
        return []
    names = [part.strip().rstrip(".").lower() for part in arg.replace(" ", ",").split(",")]
    names = [name for name in names if name]
    if not names or any(not _valid_domain(name) for name in names):
        return None
    return list(dict.fromkeys(names))


def _valid_domain(name: str) -> bool:
    labels = name.split(".")
    return len(name) <= 255 and name.isascii() and all(
        label and len(label) <= 63 and label.replace("-", "").isalnum()
        and not label.startswith("-") and not label.endswith("-") for label in labels
    )


async def atrn(session: SMTPSession, arg: str | None) -> None:
    """Handle ATRN on any listener: check it, reply, and on 250 deliver over the connection."""
    context = session.context
    if not session.session.host_name or not session.session.extended_smtp:
        await session.push(NEED_EHLO)
        return
    if session.login is None:
        await session.push(AUTH_REQUIRED)
        return
    if session._sender is not None:
        await session.push(SYNTAX)
        return
    domains = parse_domains(arg)
    if domains is None:
        await session.push(SYNTAX)
        return
    login = session.login
    owned = {name: route for name, route in context.routes.routes.items()
             if route.account_id == login.account_id}
    if domains:
        for name in domains:
            route = owned.get(name) or await _fresh_route(session, name, login.account_id)
            if route is None:
                _log(session, domains, f"refused: {name} is not the account's")
                await session.push(NOT_OWNED.format(domain=name, account=login.name))
                return
    else:
        domains = sorted(name for name, route in owned.items() if route.mode in HELD_MODES)
    busy = context.atrn_domains.intersection(domains)
    if busy:
        _log(session, domains, "refused: already being drained")
        await session.push(BUSY.format(domains=",".join(sorted(busy))))
        return
    context.atrn_domains.update(domains)
    # aiosmtpd cancels the session's task when the customer hangs up. A
    # cancellation inside a delivery would leave the claimed mail marked as in
    # delivery, so the drain runs as a task of its own, which always ends by
    # putting back on hold whatever it did not deliver.
    drain = asyncio.get_running_loop().create_task(_drain(session, domains))
    _DRAINS.add(drain)
    drain.add_done_callback(_DRAINS.discard)
    await asyncio.shield(drain)


_DRAINS: set[asyncio.Task] = set()
"""Drains that are running: the reference keeps each task alive until it ends."""


def running_drains() -> set[asyncio.Task]:
    """Return the ODMR drains in progress, for a shutdown that waits for them."""
    return set(_DRAINS)


async def _drain(session: SMTPSession, domains: list[str]) -> None:
    try:
        await _claim_and_deliver(session, domains)
    finally:
        session.context.atrn_domains.difference_update(domains)


async def _fresh_route(session: SMTPSession, name: str, account_id: int):
    route = await session.context.routes.lookup(name)
    return route if route is not None and route.account_id == account_id else None


def _log(session: SMTPSession, domains: list[str], text: str) -> None:
    account = session.login.name if session.login else "-"
    session.emit(f"ATRN {','.join(domains) or '(all)'} from {session.client} "
                 f"sasl_username={account}: {text}", "atrn")


async def _claim_and_deliver(session: SMTPSession, domains: list[str]) -> None:
    context = session.context
    try:
        jobs = await context.db.write(claim_domains, domains, ("held", "deferred", "queued"))
    except Exception as exc:
        session.emit(f"ATRN claim failed: {exc}", "error", logging.ERROR)
        await session.push(LOCAL_ERROR)
        return
    if not jobs:
        _log(session, domains, "no mail")
        await session.push(NO_MAIL)
        return
    _log(session, domains, f"turnaround, {len(jobs)} message{'s' if len(jobs) != 1 else ''}")
    session.stats["atrn"] += 1  # the session ends inside ATRN, so the usual count never runs
    try:
        await session.push(OK)
    except ConnectionError:
        pass  # the customer hung up, so reading its greeting fails and the mail is held again
    await _reversed(session, jobs)


async def _reversed(session: SMTPSession, jobs) -> None:
    """Play the SMTP client over the customer's connection (RFC 2645 section 5.3)."""
    context = session.context
    if session._timeout_handle is not None:
        session._timeout_handle.cancel()  # the client's own reply timeout takes over
    session.state = "reversed"
    session.busy = True
    client = SMTPClient(session._reader, session._writer, context.settings.delivery.reply_timeout)
    relay = f"odmr:{session.login.name}[{session.client_ip}]"
    delivery = Delivery(context, client, relay, "held", session.number)
    started = time.monotonic()
    try:
        try:
            await client.greeting()
            await client.hello(context.settings.hostname)
        except SMTPClientError as exc:
            delivery.fail(jobs, exc.reply)
            raise
        delivery.setup_seconds = time.monotonic() - started
        await delivery.run(jobs)  # records the failure of every undelivered job itself
        await client.command("QUIT")
    except SMTPClientError as exc:
        session.emit(f"reversed session with {session.client} ended early: {exc.reply}",
                     "atrn-dropped", logging.WARNING)
    finally:
        await delivery.settle()
        session.busy = False
        if session.transport is not None:
            session.transport.close()
        session._handler_coroutine.cancel()


class ODMRSession(SMTPSession):
    """A session on the ODMR port: the RFC 2645 profile only."""

    def __init__(self, context):
        super().__init__(context, service="odmrd")

    def ehlo_keywords(self) -> list[str]:
        keywords = ["ATRN"]
        mechanisms = self.auth_mechanisms()
        keywords.append("AUTH " + " ".join(mechanisms))
        if self.tls_context and not self._tls_protocol:
            keywords.append("STARTTLS")
        keywords += ["ENHANCEDSTATUSCODES", "PIPELINING"]
        return keywords

    async def smtp_HELO(self, hostname: str | None) -> None:
        await self.push(NOT_HERE)

    async def smtp_MAIL(self, arg: str | None) -> None:
        await self.push(NOT_HERE)

    async def smtp_RCPT(self, arg: str | None) -> None:
        await self.push(NOT_HERE)

    async def smtp_DATA(self, arg: str | None) -> None:
        await self.push(NOT_HERE)

    async def smtp_ETRN(self, arg: str | None) -> None:
        await self.push(NOT_HERE)

    async def smtp_VRFY(self, arg: str | None) -> None:
        await self.push(NOT_HERE)

    async def smtp_EXPN(self, arg: str | None) -> None:
        await self.push(NOT_HERE)
