"""Triggered delivery: what ETRN, the authenticated ETRN form and a flush start.

A trigger claims the domain's held mail at once (so the reply can say how
many messages are pending, and two triggers never carry the same message),
then delivers it in the background over a new connection, as RFC 1985
requires. Mail that fails temporarily goes back to held, with the attempt
and its error recorded, and waits for the next trigger.
"""

from __future__ import annotations

import time

from ..events import next_session
from ..store.accounts import Route
from ..store.models import HELD_MODES
from ..store.queue import Job, claim_domains, claim_expired_held, held_domains, retry_domain
from .client import SMTPClientError
from .context import Context
from .delivery import Delivery, Target, _NoClient, open_client


DEFAULT_RETENTION_DAYS = 30
"""Retention of held mail whose domain is no longer hosted, as for a new domain."""


def held_target(route: Route, requester: str | None) -> Target | None:
    """Return where a held domain's mail goes when triggered.

    The domain's configured host wins; otherwise the address the trigger
    came from, but only for an authenticated trigger (``requester`` given).
    """
    host = route.host or requester
    if not host:
        return None
    return Target(host, route.port, fail_state="held")


async def trigger(context: Context, route: Route, requester: str | None = None,
                  session: int = 0) -> int:
    """Start delivery of one domain's waiting mail; return the number of messages started.

    Args:
        context: the running server's shared state.
        route: the domain.
        requester: the client address of an authenticated trigger, used when
            the domain has no host of its own.
        session: the session number for log lines.

    Raises:
        LookupError: a held domain with no host and no requester address.
    """
    if route.mode == "smtp":
        count = await context.db.write(retry_domain, route.domain)
        if context.scheduler is not None:
            context.scheduler.wake()
        return count
    if route.mode not in HELD_MODES:
        raise LookupError(f"{route.domain} is in mode {route.mode}")
    target = held_target(route, requester)
    if target is None:
        raise LookupError(f"{route.domain} has no host")
    jobs = await context.db.write(claim_domains, [route.domain], ("held", "deferred", "queued"))
    if jobs:
        context.bus.emit("qmgr", session, f"{route.domain}: delivery of {len(jobs)} held "
                         f"message(s) to {target.host}:{target.port} started", "trigger",
                         domain=route.domain)
        spawn = context.scheduler.spawn if context.scheduler else None
        coro = deliver_held(context, target, jobs)
        if spawn:
            spawn(coro)
        else:  # pragma: no cover - the server always has a scheduler
            import asyncio
            asyncio.get_running_loop().create_task(coro)
    return len(jobs)


async def deliver_held(context: Context, target: Target, jobs: list[Job]) -> None:
    """Deliver claimed held mail to ``target``; failures go back to held."""
    session = next_session()
    started = time.monotonic()
    try:
        client, relay = await open_client(context, target)
    except SMTPClientError as exc:
        delivery = Delivery(context, _NoClient(), f"{target.host}:{target.port}", "held", session)
        delivery.fail(jobs, exc.reply)
        await delivery.settle()
        return
    delivery = Delivery(context, client, relay, "held", session, time.monotonic() - started)
    try:
        await delivery.run(jobs)
        await client.quit()
    except SMTPClientError:
        client.close()
    await delivery.settle()


async def expire_held(context: Context) -> int:
    """Return held mail that outlived its domain's retention to its senders; return how many messages."""
    total = 0
    now = time.time()
    retention = {name: route.retention_days for name, route in context.routes.routes.items()
                 if route.mode != "smtp"}
    # Held mail of a domain removed with --force keeps the default retention.
    for domain in await context.db.read(held_domains):
        if domain and domain not in context.routes.routes:
            retention[domain] = DEFAULT_RETENTION_DAYS
    for domain, days in retention.items():
        jobs = await context.db.write(claim_expired_held, domain, now - days * 86400)
        if not jobs:
            continue
        total += len(jobs)
        delivery = Delivery(context, _NoClient(), "none", "held", 0)
        delivery.expire(jobs, f"held for more than {days} days without being collected")
        await delivery.settle()
    return total
