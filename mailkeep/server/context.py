"""What every listener and worker of one running server shares."""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..config import Settings
from ..events import Bus
from ..store.db import Database
from .limiter import ConnectionLimiter, LoginThrottle
from .routes import Routes

if TYPE_CHECKING:
    from .delivery import Scheduler


@dataclass
class Context:
    """The running server's shared state.

    Attributes:
        sessions: open sessions by number, for the console and for shutdown.
    """

    settings: Settings
    db: Database
    bus: Bus
    routes: Routes
    limiter: ConnectionLimiter
    logins: LoginThrottle
    tls: ssl.SSLContext | None = None
    scheduler: "Scheduler | None" = None
    sessions: dict[int, Any] = field(default_factory=dict)
    atrn_domains: set[str] = field(default_factory=set)
    """Domains an ATRN session is draining now; a second session for them gets 451."""
    stopping: bool = False
