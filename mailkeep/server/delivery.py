"""Delivery: the scheduler that claims due mail, and the code that sends it.

The scheduler claims due recipients from the store (marking their messages
as in delivery, so nothing is claimed twice), groups them by destination and
feeds one queue per destination. Each destination runs a few connections that
carry message after message. ``deliver_jobs`` does the sending over any
connected ``SMTPClient``, so ETRN and ODMR deliveries reuse it, with its
outcomes, bounces and log lines.

A recipient leaves the queue only when the customer's server accepted it
with 250 after DATA, or when a delivery status notification went back for it.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import time
from dataclasses import dataclass
from typing import Callable, Iterable

from ..config import parse_hostport
from ..events import next_session
from ..store.models import HELD_MODES
from ..store.queue import Job, NewMessage, Outcome, claim_due, enqueue, load_data, new_queue_id
from ..store.queue import record_outcomes, release_delivering
from . import dsn
from .client import SMTPClient, SMTPClientError
from .context import Context
from .tls import client_context

log = logging.getLogger("mailkeep.delivery")

CLAIM_BATCH = 500
LOAD_BATCH = 16
HIGH_WATER = 5000
"""Claimed jobs waiting for a connection beyond which the scheduler stops claiming."""
SWEEP_INTERVAL = 300.0
"""Seconds between checks for held mail that outlived its domain's retention."""


@dataclass(frozen=True)
class Target:
    """The destination of a group of recipients.

    Attributes:
        host: a host name or address; with ``mx`` true, the domain whose MX
            records are looked up.
        port: the TCP port.
        mx: look up MX records for ``host``.
        fail_state: state for recipients that fail temporarily: ``deferred``
            (retried with backoff) or ``held`` (waits for the next trigger).
    """

    host: str
    port: int = 25
    mx: bool = False
    fail_state: str = "deferred"


def format_seconds(value: float) -> str:
    """Format a duration with about two significant digits, as Postfix's delay= does."""
    if value >= 10:
        return str(int(round(value)))
    if value >= 1:
        return f"{value:.1f}"
    if value >= 0.1:
        return f"{value:.2f}".rstrip("0").rstrip(".")
    rounded = round(value, 2)
    return "0" if rounded == 0 else f"{rounded:.2f}".rstrip("0")


def backoff(settings_queue, attempts: int) -> float:
    """Return the seconds to wait before retry number ``attempts + 1``."""
    return min(settings_queue.retry_max, settings_queue.retry_min * (2 ** min(attempts, 20)))


@dataclass
class BounceRequest:
    """A notification to build inside the commit that records the failures."""

    job: Job
    failures: list[dsn.Failure]
    hostname: str
    state: str
    """Queue state of the notification's recipient: ``queued`` or ``held``."""
    notice_id: str = ""
    """Queue id of the notification."""


def _record_with_bounces(conn, outcomes: list[Outcome], message_ids: list[int],
                         bounces: list[BounceRequest], release_ids: list[int]) -> None:
    # The notification is queued in the same transaction that drops the failed
    # recipients, so a crash cannot lose one without the other.
    for request in bounces:
        job = request.job
        row = conn.execute("SELECT data FROM message WHERE id = ?", (job.message_id,)).fetchone()
        original = bytes(row[0]) if row else b""
        body = dsn.build(request.hostname, job.queue_id, job.sender, job.arrived,
                         request.failures, original)
        domain = job.sender.rpartition("@")[2].lower()
        enqueue(conn, NewMessage(queue_id=request.notice_id, sender="", data=body,
                                 recipients=[(job.sender, domain, request.state)],
                                 client="local", helo=request.hostname, is_bounce=True))
    record_outcomes(conn, outcomes, message_ids, release_ids)


class Delivery:
    """Sends jobs over one connected client and records what happened.

    Args:
        context: the running server's shared state.
        client: a session that has greeted and said EHLO.
        relay: how log lines name the peer, e.g. ``mx.example.org[192.0.2.1]:25``.
        fail_state: ``deferred`` or ``held`` for temporary failures.
        session: the number that tags this connection's log lines.
    """

    def __init__(self, context: Context, client: SMTPClient, relay: str, fail_state: str,
                 session: int, setup_seconds: float = 0.0):
        self.context = context
        self.client = client
        self.relay = relay
        self.fail_state = fail_state
        self.session = session
        self.setup_seconds = setup_seconds
        self.pending: set[asyncio.Future] = set()
        self._unlogged: list[tuple] = []
        self.sent = 0

    async def run(self, jobs: list[Job],
                  give_back: Callable[[list[Job]], None] | None = None) -> list[Job]:
        """Deliver the jobs in order.

        Args:
            jobs: the claimed jobs.
            give_back: when the session fails, receives the jobs not yet tried, so
                another connection can take them; without it they are recorded as
                failed like the job in flight.

        Raises:
            SMTPClientError: the session failed. The job in flight has been
                recorded with its temporary failure before this is raised.
        """
        index = 0
        while index < len(jobs):
            batch = jobs[index:index + LOAD_BATCH]
            contents = await self.context.db.read(load_data, [job.message_id for job in batch])
            for position, job in enumerate(batch):
                data = contents.get(job.message_id)
                if data is None:  # deleted by the administrator meanwhile
                    self._record([], [job], [])
                    continue
                try:
                    await self._deliver(job, data)
                except SMTPClientError as exc:
                    untried = batch[position + 1:] + jobs[index + len(batch):]
                    if give_back is not None:
                        self.fail([job], exc.reply)
                        give_back(untried)
                    else:
                        self.fail([job, *untried], exc.reply)
                    raise
                except Exception as exc:
                    # Whatever went wrong, the jobs taken must be recorded, or they would
                    # stay marked in delivery until a restart.
                    rest = batch[position:] + jobs[index + len(batch):]
                    log.exception("delivering %s failed", job.queue_id,
                                  extra={"service": "smtp", "session": self.session})
                    self.fail(rest, f"local error: {type(exc).__name__}")
                    raise SMTPClientError(f"local error: {type(exc).__name__}") from exc
            index += len(batch)
        return []

    async def _deliver(self, job: Job, data: bytes) -> None:
        started = time.time()
        addresses = [address for _rid, address, _domain, _attempts in job.recipients]
        result = await self.client.send(job.sender, addresses, data, job.body_8bit,
                                        smtputf8=not (job.sender + "".join(addresses)).isascii())
        finished = time.time()
        delays = (f"{format_seconds(started - job.arrived)}/0/"
                  f"{format_seconds(self.setup_seconds)}/{format_seconds(finished - started)}")
        outcomes, failures = [], []
        for rid, address, _domain, attempts in job.recipients:
            reply = result.recipients[address]
            if reply.ok:
                status = "sent"
            elif reply.code >= 500:
                status = "bounced"
            else:  # 4xx, and codes that are never a final reply (1xx, 3xx)
                status = self.fail_state
            outcome, failure = self._settle_outcome(job, rid, address, attempts, status, reply.text,
                                                    reply.enhanced, finished, delays)
            outcomes.append(outcome)
            if failure:
                failures.append(failure)
        self.sent += 1
        self._record(outcomes, [job], failures)

    def _settle_outcome(self, job: Job, rid: int, address: str, attempts: int, status: str,
                        reply: str, code: str, now: float,
                        delays: str) -> tuple[Outcome, dsn.Failure | None]:
        """Turn one recipient's result into an outcome, bouncing it when its time is up."""
        lifetime = self.context.settings.queue.lifetime
        expired = status == "deferred" and now - job.arrived > lifetime
        self._log(job, address, code, status, reply, now, delays)
        failure = None
        if status == "bounced":
            failure = dsn.Failure(address, code if code[0] == "5" else "5.0.0", reply,
                                  self.client.peer_name or self.relay)
        elif expired:
            status = "bounced"
            failure = dsn.Failure(address, "4.4.7", f"delivery time expired; last error: {reply}")
            self._emit_later("qmgr", f"{job.queue_id}: to=<{address}>, "
                             f"status=expired, returned to sender", "expired")
        next_attempt = 0.0
        if status == "deferred":
            next_attempt = now + backoff(self.context.settings.queue, attempts)
        return Outcome(rid, job.message_id, address, status, reply, self.relay, next_attempt), failure

    def fail(self, jobs: Iterable[Job], reason: str) -> None:
        """Record a temporary failure for every recipient of ``jobs``."""
        now = time.time()
        for job in jobs:
            outcomes, failures = [], []
            for rid, address, _domain, attempts in job.recipients:
                outcome, failure = self._settle_outcome(job, rid, address, attempts,
                                                        self.fail_state, reason, "4.4.1", now, "")
                outcomes.append(outcome)
                if failure:
                    failures.append(failure)
            self._record(outcomes, [job], failures)

    def expire(self, jobs: Iterable[Job], reason: str) -> None:
        """Return every recipient of ``jobs`` to its sender without an attempt."""
        now = time.time()
        for job in jobs:
            outcomes, failures = [], []
            for rid, address, _domain, _attempts in job.recipients:
                self._log(job, address, "4.4.7", "expired", reason, now, "")
                outcomes.append(Outcome(rid, job.message_id, address, "bounced", reason, self.relay))
                failures.append(dsn.Failure(address, "4.4.7", reason))
            self._record(outcomes, [job], failures)

    def _log(self, job: Job, address: str, code: str, status: str, reply: str, now: float,
             delays: str) -> None:
        fields = [f"to=<{address}>", f"relay={self.relay}"]
        if self.client.messages_sent > 1:
            fields.append(f"conn_use={self.client.messages_sent}")
        fields.append(f"delay={format_seconds(now - job.arrived)}")
        if delays:
            fields.append(f"delays={delays}")
        fields += [f"dsn={code}", f"status={status} ({reply})"]
        self._emit_later("smtp", f"{job.queue_id}: " + ", ".join(fields), status,
                         queue_id=job.queue_id, to=address, relay=self.relay)

    def _emit_later(self, service: str, text: str, kind: str, **data) -> None:
        """Keep an event until the commit that records it, so that a "status=sent" line
        is never read while the message still shows in the queue."""
        self._unlogged.append((service, text, kind, data))

    def _record(self, outcomes: list[Outcome], jobs: list[Job], failures: list[dsn.Failure]) -> None:
        bounces = []
        if failures:
            request = bounce_request(self.context, jobs[0], failures, self.session,
                                     self._emit_later)
            if request:
                bounces.append(request)
        events, self._unlogged = self._unlogged, []
        release = []
        for job in jobs:
            job.parts[0] -= 1
            if job.parts[0] <= 0:
                release.append(job.message_id)
        future = self.context.db.write(_record_with_bounces, outcomes, [j.message_id for j in jobs],
                                       bounces, release)
        self.pending.add(future)
        future.add_done_callback(lambda done: self._recorded(done, events))

    def _recorded(self, future: asyncio.Future, events: list[tuple]) -> None:
        self.pending.discard(future)
        for service, text, kind, data in events:
            self.context.bus.emit(service, self.session, text, kind, **data)
        if future.cancelled():
            return
        exc = future.exception()
        if exc is not None:
            log.error("recording delivery results failed: %s; the messages above stay queued",
                      exc, extra={"service": "smtp", "session": self.session})
        elif self.context.scheduler is not None:
            self.context.scheduler.wake()

    async def settle(self) -> None:
        """Wait until every result of this delivery is on disk."""
        if self.pending:
            await asyncio.gather(*list(self.pending), return_exceptions=True)


def bounce_request(context: Context, job: Job, failures: list[dsn.Failure],
                   session: int = 0, emit=None) -> BounceRequest | None:
    """Prepare the notification for ``failures``, or None when the sender must not get one.

    ``emit(service, text, kind)`` logs the decision; by default it goes to the bus at once.
    """
    if emit is None:
        def emit(service: str, text: str, kind: str) -> None:
            context.bus.emit(service, session, text, kind)
    if job.is_bounce or not job.sender:
        # No notification to the null sender, and none about a notification, so bounces never loop.
        why = "sender is <>" if not job.sender else "message is itself a notification"
        emit("bounce", f"{job.queue_id}: no notification: {why}", "bounce-dropped")
        return None
    domain = job.sender.rpartition("@")[2].lower()
    route = context.routes.get(domain)
    state = "held" if route is not None and route.mode != "smtp" else "queued"
    request = BounceRequest(job, failures, context.settings.hostname, state, new_queue_id())
    emit("bounce", f"{job.queue_id}: sender non-delivery notification: {request.notice_id}",
         "bounce")
    return request


async def open_client(context: Context, target: Target, use_tls: bool = True) -> tuple[SMTPClient, str]:
    """Connect to a target, read its greeting and say EHLO (and STARTTLS when offered).

    Returns:
        The client and the relay text for log lines.

    Raises:
        SMTPClientError: no address of the target accepted a session.
    """
    settings = context.settings
    hosts = await _target_hosts(target)
    last_error = f"no address for {target.host}"
    for host in hosts:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(host, target.port), settings.delivery.connect_timeout
            )
        except asyncio.TimeoutError:
            last_error = f"connect to {host}:{target.port}: timed out"
            continue
        except OSError as exc:
            reason = os.strerror(exc.errno) if exc.errno else str(exc)
            last_error = f"connect to {host}[{host}]:{target.port}: {reason}"
            continue
        peer = writer.get_extra_info("peername") or (host, target.port)
        relay = f"{host}[{peer[0]}]:{peer[1]}"
        client = SMTPClient(reader, writer, settings.delivery.reply_timeout)
        try:
            await client.greeting()
            await client.hello(settings.hostname)
            if use_tls and await client.starttls(client_context(), host):
                await client.hello(settings.hostname)
            return client, relay
        except SMTPClientError as exc:
            client.close()
            last_error = f"{relay}: {exc.reply}"
            if "TLS handshake" in exc.reply and use_tls:
                return await open_client(context, target, use_tls=False)
    raise SMTPClientError(last_error)


async def _target_hosts(target: Target) -> list[str]:
    if not target.mx:
        return [target.host]
    try:
        import dns.asyncresolver
        import dns.exception
        import dns.resolver
    except ImportError:  # pragma: no cover - dnspython is a dependency
        return [target.host]
    resolver = dns.asyncresolver.Resolver()
    resolver.lifetime = 10.0
    try:
        answer = await resolver.resolve(target.host, "MX")
        records = sorted(answer, key=lambda r: r.preference)
        hosts = [str(r.exchange).rstrip(".") for r in records if str(r.exchange) != "."]
        return hosts
    except dns.resolver.NoAnswer:
        return [target.host]  # no MX: the domain itself (RFC 5321 section 5.1)
    except (dns.exception.DNSException, OSError) as exc:
        raise SMTPClientError(f"MX lookup for {target.host} failed: {exc}") from None


class Destination:
    """The queue of claimed jobs for one target and the connections that drain it."""

    def __init__(self, scheduler: "Scheduler", target: Target):
        self.scheduler = scheduler
        self.target = target
        self.pending: collections.deque[Job] = collections.deque()
        self.connections = 0
        """Connection tasks running, whether connected yet or not."""
        self.connected = 0
        """Connections that opened and are delivering now."""

    def add(self, job: Job) -> None:
        self.pending.append(job)
        self.start_connections()

    def start_connections(self) -> None:
        limit = self.scheduler.context.settings.delivery.connections_per_destination
        while self.pending and self.connections < min(limit, len(self.pending)):
            self.connections += 1
            self.scheduler.spawn(self._connection())

    def give_back(self, jobs: list[Job]) -> None:
        """Put untried jobs back at the head of the queue, in their order."""
        self.pending.extendleft(reversed(jobs))

    def take(self, count: int) -> list[Job]:
        batch = []
        while self.pending and len(batch) < count:
            batch.append(self.pending.popleft())
        return batch

    async def _connection(self) -> None:
        context = self.scheduler.context
        session = next_session()
        failed = False
        try:
            async with self.scheduler.connection_slots:
                if not self.pending:
                    return
                started = time.monotonic()
                try:
                    client, relay = await open_client(context, self.target)
                except SMTPClientError as exc:
                    failed = True
                    if self.connected == 0:
                        # No open connection can carry the waiting mail: defer all of it,
                        # so it waits for its retry time instead of a new attempt at once.
                        Delivery(context, _NoClient(), f"{self.target.host}:{self.target.port}",
                                 self.target.fail_state, session).fail(self.take(len(self.pending)),
                                                                       exc.reply)
                    return
                self.connected += 1
                try:
                    delivery = Delivery(context, client, relay, self.target.fail_state, session,
                                        time.monotonic() - started)
                    try:
                        while self.pending:
                            await delivery.run(self.take(LOAD_BATCH), self.give_back)
                        await client.quit()
                    except SMTPClientError:
                        # A connection that delivered something before it broke is replaced at
                        # once. One that delivered nothing is not, because a server that drops
                        # every session would otherwise be reconnected to in a loop.
                        failed = delivery.sent == 0
                        client.close()
                    await delivery.settle()
                finally:
                    self.connected -= 1
        except Exception:
            failed = True
            log.exception("delivery to %s:%s failed", self.target.host, self.target.port,
                          extra={"service": "smtp", "session": session})
        finally:
            self.connections -= 1
            if self.pending and not failed:
                self.start_connections()
            elif self.pending and self.connections == 0:
                # The last connection failed with mail still waiting: defer it rather than
                # reconnecting in a loop.
                Delivery(context, _NoClient(), f"{self.target.host}:{self.target.port}",
                         self.target.fail_state, session).fail(self.take(len(self.pending)),
                                                               "connection to the server failed")


class _NoClient:
    """Stands in for a client when no connection could be opened."""

    messages_sent = 0
    peer_name = ""


class Scheduler:
    """Claims due mail and hands it to destinations.

    Args:
        context: the running server's shared state.
        interval: seconds between checks for mail that became due.
    """

    def __init__(self, context: Context, interval: float = 1.0):
        self.context = context
        self.interval = interval
        self.destinations: dict[Target, Destination] = {}
        self.connection_slots = asyncio.Semaphore(context.settings.delivery.max_connections)
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task] = set()
        self.running = True

    def wake(self) -> None:
        """Check for due mail now instead of at the next interval."""
        self._wake.set()

    def spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @property
    def waiting(self) -> int:
        return sum(len(d.pending) for d in self.destinations.values())

    async def run(self) -> None:
        """Claim and dispatch due mail until cancelled."""
        while True:
            try:
                await self.context.db.write(release_delivering)
                break
            except Exception as exc:  # e.g. another process holds the write lock too long
                log.error("clearing in-delivery marks at start failed: %s; retrying in 5 s", exc,
                          extra={"service": "qmgr", "session": 0})
                await asyncio.sleep(5)
        last_sweep = 0.0
        while self.running:
            if time.monotonic() - last_sweep > SWEEP_INTERVAL:
                last_sweep = time.monotonic()
                await self._sweep()
            try:
                more = await self.dispatch_due()
            except Exception:
                log.exception("claiming due mail failed", extra={"service": "qmgr", "session": 0})
                more = False
            if more:
                await asyncio.sleep(0)
                continue
            try:
                await asyncio.wait_for(self._wake.wait(), self.interval)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()

    async def _sweep(self) -> None:
        from .trigger import expire_held  # trigger builds on this module

        try:
            await expire_held(self.context)
        except Exception:
            log.exception("returning expired held mail failed", extra={"service": "qmgr", "session": 0})

    async def dispatch_due(self) -> bool:
        """Claim one batch of due mail; return whether more may be waiting."""
        if self.waiting >= HIGH_WATER:
            return False
        jobs = await self.context.db.write(claim_due, time.time(), CLAIM_BATCH)
        for job in jobs:
            try:
                parts = self._split(job)
            except Exception as exc:  # one bad route must not strand the rest of the batch
                log.exception("routing %s failed", job.queue_id,
                              extra={"service": "qmgr", "session": 0})
                Delivery(self.context, _NoClient(), "none", "deferred", 0).fail(
                    [job], f"routing failed: {type(exc).__name__}")
                continue
            for target, part in parts:
                if target is None:
                    continue
                destination = self.destinations.get(target)
                if destination is None:
                    destination = self.destinations[target] = Destination(self, target)
                destination.add(part)
        self._forget_idle()
        return sum(len(j.recipients) for j in jobs) >= CLAIM_BATCH

    def _split(self, job: Job) -> list[tuple[Target | None, Job]]:
        groups: dict[Target | None, list] = {}
        held = []
        for recipient in job.recipients:
            target = self.target_for(recipient[2])
            if target is None:
                held.append(recipient)
            else:
                groups.setdefault(target, []).append(recipient)
        # Every part shares one counter, so the message stays marked in delivery until
        # the last part is recorded.
        parts = [len(groups) + (1 if held else 0)]
        if held:
            part = Job(job.message_id, job.queue_id, job.sender, job.size, job.arrived,
                       job.is_bounce, job.body_8bit, held, parts)
            Delivery(self.context, _NoClient(), "none", "held", 0).fail(
                [part], "waiting for a trigger: the domain is held and has no host to push to")
        return [(target, Job(job.message_id, job.queue_id, job.sender, job.size, job.arrived,
                             job.is_bounce, job.body_8bit, recipients, parts))
                for target, recipients in groups.items()]

    def target_for(self, domain: str) -> Target | None:
        """Return where mail for ``domain`` goes now, or None when it must be held."""
        route = self.context.routes.get(domain)
        if route is None:
            relayhost = self.context.settings.delivery.relayhost
            if relayhost:
                host, port = parse_hostport(relayhost, "delivery.relayhost", default_port=25)
                return Target(host, port)
            if not domain:
                return None
            return Target(domain, 25, mx=True)
        if route.mode == "smtp":
            return Target(route.host, route.port)
        if route.mode in HELD_MODES and route.host:
            return Target(route.host, route.port, fail_state="held")
        return None

    def _forget_idle(self) -> None:
        for target in [t for t, d in self.destinations.items() if not d.pending and not d.connections]:
            del self.destinations[target]

    async def stop(self, timeout: float) -> None:
        """Stop claiming, let running deliveries finish for up to ``timeout`` seconds."""
        self.running = False
        self._wake.set()
        for destination in self.destinations.values():
            destination.pending.clear()
        if self._tasks:
            done, running = await asyncio.wait(list(self._tasks), timeout=timeout)
            for task in running:
                task.cancel()
