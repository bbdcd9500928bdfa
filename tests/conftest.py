"""Fixtures that run Mailkeep against real peers on loopback.

The classes behind them live in ``helpers.py``:

- ``make_mailkeep(**tables)`` returns a :class:`helpers.Mailkeep` with its own
  config and data dir under ``tmp_path``, and ``mailkeep`` is one with the
  default config. Its ``.cli(...)`` and ``.cli_ok(...)`` run the CLI as a
  separate process, and ``.admin(...)`` runs it inside the test process for
  faster set-up. ``.start()`` runs ``mailkeep serve --no-tui``, ``.kill()``
  sends SIGKILL and ``.restart()`` starts again on the same data dir. Every
  server still running at teardown gets SIGTERM, then SIGKILL.
- ``make_sink()`` returns a started :class:`helpers.Sink`, an aiosmtpd server
  that records what it receives. ``make_sink(start=False)`` only reserves a
  port, for a customer server that is down. ``sink`` is a started one. Sinks
  are stopped at teardown.
- ``mx`` is the usual set-up: account ``acme`` owns ``customer.test``, whose
  mail goes to ``sink``, and the server is running.

Tests for other listeners (ETRN, ODMR, POP3) can add theirs with
``mailkeep.add_listener("pop3")`` before ``start()``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from helpers import Mailkeep, Sink

CUSTOMER = "customer.test"
"""The hosted domain of the ``mx`` fixture."""


@pytest.fixture
def make_mailkeep(tmp_path: Path) -> Iterator[Callable[..., Mailkeep]]:
    """Return a factory of Mailkeep installations; each gets its own directory."""
    instances: list[Mailkeep] = []

    def make(**tables: Any) -> Mailkeep:
        instance = Mailkeep(tmp_path / f"mailkeep{len(instances)}", **tables)
        instances.append(instance)
        return instance

    yield make
    for instance in instances:
        instance.stop()


@pytest.fixture
def mailkeep(make_mailkeep: Callable[..., Mailkeep]) -> Mailkeep:
    """A Mailkeep installation with the default test config, not started."""
    return make_mailkeep()


@pytest.fixture
def make_sink() -> Iterator[Callable[..., Sink]]:
    """Return a factory of sinks, each on its own free port, started unless ``start=False``."""
    sinks: list[Sink] = []

    def make(start: bool = True, **options: Any) -> Sink:
        sink = Sink(**options)
        sinks.append(sink)
        return sink.start() if start else sink

    yield make
    for sink in sinks:
        sink.stop()


@pytest.fixture
def sink(make_sink: Callable[..., Sink]) -> Sink:
    """A started sink that plays the customer's SMTP server."""
    return make_sink()


@pytest.fixture
def mx(mailkeep: Mailkeep, sink: Sink) -> Mailkeep:
    """A running server hosting ``customer.test``, whose mail goes to ``sink``."""
    mailkeep.add_account()
    mailkeep.add_domain(CUSTOMER, sink.port)
    mailkeep.start()
    return mailkeep
