"""Starting and stopping the whole server: store, listeners and delivery in one loop."""

from __future__ import annotations

import asyncio
import errno
import logging
import signal
import ssl
from dataclasses import dataclass, field
from typing import Callable

from ..config import Settings, parse_hostport
from ..events import Bus, bus as default_bus
from ..store.db import Database
from .context import Context
from .delivery import Scheduler
from .limiter import ConnectionLimiter, LoginThrottle
from .routes import Routes
from .odmr import ODMRSession, running_drains as odmr_drains
from .pop3 import Pop3Service
from .smtpd import SMTPSession
from .tls import certificate_paths, server_context

log = logging.getLogger("mailkeep.master")

TLS_HANDSHAKE_TIMEOUT = 10.0
"""Seconds a client on an implicit-TLS port (POP3S) gets to finish the handshake."""
SHUTDOWN_WAIT = 10.0
"""Seconds that sessions in DATA and running deliveries get to finish at shutdown."""


class StartupError(Exception):
    """The server cannot start; the message names the value and the fix."""


@dataclass
class Listener:
    """One bound listening socket."""

    service: str
    address: str
    server: asyncio.AbstractServer


@dataclass
class Server:
    """A running Mailkeep: call :meth:`start`, then :meth:`stop`."""

    settings: Settings
    bus: Bus = field(default_factory=lambda: default_bus)
    context: Context | None = None
    listeners: list[Listener] = field(default_factory=list)
    tasks: list[asyncio.Task] = field(default_factory=list)
    deliver: bool = True
    """Run the delivery scheduler; console snapshot tests turn it off for a still queue."""

    async def start(self) -> None:
        """Open the store, bind every listener and start delivery.

        Raises:
            StartupError: a listener cannot bind or TLS cannot be set up.
        """
        settings = self.settings
        db = Database(settings.database)
        limits = settings.limits
        context = Context(
            settings=settings, db=db, bus=self.bus, routes=Routes(db),
            limiter=ConnectionLimiter(limits.max_connections, limits.max_connections_per_client),
            logins=LoginThrottle(settings.auth.failure_delay, settings.auth.max_failures,
                                 settings.auth.lockout),
        )
        self.context = context
        try:
            cert, key = certificate_paths(settings.hostname, settings.data_dir, settings.tls.cert,
                                          settings.tls.key)
            context.tls = server_context(cert, key)
        except (OSError, ValueError) as exc:
            db.close()
            raise StartupError(f"TLS set-up failed: {exc}; check [tls] cert and key in the config") from None
        await context.routes.load()
        try:
            for address in settings.listen.smtp:
                await self._listen("smtp", address, lambda: SMTPSession(context))
            for address in settings.listen.odmr:
                await self._listen("odmr", address, lambda: ODMRSession(context))
            pop3 = Pop3Service(context)
            for address in settings.listen.pop3:
                await self._listen("pop3", address, pop3.factory(implicit_tls=False))
            for address in settings.listen.pop3s:
                await self._listen("pop3s", address, pop3.factory(implicit_tls=True),
                                   tls=context.tls)
        except StartupError:
            await self._close_listeners()
            db.close()
            raise
        context.scheduler = Scheduler(context)
        context.routes.on_commit = context.scheduler.wake
        if self.deliver:
            self.tasks.append(asyncio.create_task(context.scheduler.run(), name="scheduler"))
        self.tasks.append(asyncio.create_task(context.routes.watch(), name="routes"))
        self.tasks.append(asyncio.create_task(pop3.sweep(), name="pop3-sweep"))
        for task in self.tasks:
            task.add_done_callback(self._task_ended)
        self.bus.emit("master", 0, f"daemon started -- Mailkeep, data in {settings.data_dir}", "start")

    def _task_ended(self, task: asyncio.Task) -> None:
        """Log a background task that stopped with an error: the server would go on without it."""
        if task.cancelled() or task.exception() is None:
            return
        error = task.exception()
        self.bus.emit("master", 0, f"{task.get_name()} stopped with {type(error).__name__}: {error}; "
                      "restart mailkeep", "error", logging.ERROR)

    async def _listen(self, service: str, address: str, factory: Callable,
                      tls: ssl.SSLContext | None = None) -> None:
        """Bind one listener; with ``tls``, every connection starts with the handshake."""
        host, port = parse_hostport(address, f"listen.{service}")
        loop = asyncio.get_running_loop()
        try:
            # Implicit-TLS connections count against the limits only once the handshake is
            # done, so a short handshake timeout bounds how long idle ones can pile up.
            server = await loop.create_server(
                factory, host or None, port, ssl=tls, reuse_address=True, backlog=512,
                ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT if tls else None)
        except PermissionError:
            raise StartupError(
                f"cannot listen on {address} ({service}): permission denied. Ports below 1024 need "
                "root or CAP_NET_BIND_SERVICE (e.g. `setcap cap_net_bind_service=+ep` on the Python "
                f"binary, or AmbientCapabilities= in a systemd unit); or choose a port above 1023 "
                f"in [listen] {service} of {self.settings.path or 'the config file'}"
            ) from None
        except OSError as exc:
            reason = "address already in use by another program" if exc.errno == errno.EADDRINUSE \
                else (exc.strerror or str(exc))
            raise StartupError(
                f"cannot listen on {address} ({service}): {reason}; change [listen] {service} "
                f"in {self.settings.path or 'the config file'}"
            ) from None
        for sock in server.sockets:
            name = sock.getsockname()
            shown = f"[{name[0]}]:{name[1]}" if ":" in name[0] else f"{name[0]}:{name[1]}"
            self.listeners.append(Listener(service, shown, server))
            self.bus.emit("master", 0, f"listening for {service} on {shown}", "listen",
                          service_name=service, address=shown)

    async def _close_listeners(self) -> None:
        for listener in self.listeners:
            listener.server.close()

    async def stop(self) -> None:
        """Stop accepting, let work in flight finish within a bounded wait, then close the store."""
        context = self.context
        if context is None:
            return
        context.stopping = True
        self.bus.emit("master", 0, "terminating on request", "stop")
        for listener in self.listeners:
            listener.server.close()
        deadline = asyncio.get_running_loop().time() + SHUTDOWN_WAIT
        while asyncio.get_running_loop().time() < deadline:
            for session in list(context.sessions.values()):
                await session.close_idle()
            if not context.sessions:
                break
            await asyncio.sleep(0.1)
        for session in list(context.sessions.values()):
            if session.transport is not None:
                session.transport.close()
        if context.scheduler is not None:
            await context.scheduler.stop(max(1.0, deadline - asyncio.get_running_loop().time()))
        drains = list(odmr_drains())
        if drains:  # ODMR deliveries record their results before the store closes
            await asyncio.wait(drains, timeout=max(1.0, deadline - asyncio.get_running_loop().time()))
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await asyncio.to_thread(context.db.close)
        self.bus.emit("master", 0, "daemon stopped", "stop")


async def serve(settings: Settings, ready: Callable[[Server], None] | None = None) -> int:
    """Run the server until SIGTERM or SIGINT; return the exit status."""
    server = Server(settings)
    await server.start()
    if ready is not None:
        ready(server)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        await server.stop()
    return 0
