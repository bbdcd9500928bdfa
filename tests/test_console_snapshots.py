"""Snapshots of each console screen at 80x24, from the seeded demo store.

The clock, the listener addresses and the time zone are fixed and delivery
is off, so every run draws the same screen. After an intended change to
the console, refresh the pictures with ``pytest --snapshot-update``.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from helpers import free_port
from mailkeep.config import Listen, Settings
from mailkeep.server.app import Server
from mailkeep.tui import demo
from mailkeep.tui.app import MailkeepApp
from mailkeep.tui.data import ConsoleData

pytestmark = pytest.mark.timeout(60)

NOW = 1_780_000_000.0  # 2026-05-28 20:26:40 UTC
SIZE = (80, 24)


@pytest.fixture
def demo_app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> MailkeepApp:
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    monkeypatch.setattr(ConsoleData, "listeners",
                        lambda self: [("smtp", "127.0.0.1:2525"), ("odmr", "127.0.0.1:366")])
    settings = Settings(hostname="mx.mailkeep.test", data_dir=str(tmp_path / "data"),
                        listen=Listen(smtp=[f"127.0.0.1:{free_port()}"]))
    demo.seed(settings, now=NOW, sink_port=2526)
    yield MailkeepApp(Server(settings, deliver=False), clock=lambda: NOW, manage_server=True)
    time.tzset()


async def settle(pilot) -> None:
    await pilot.pause(1.0)


@pytest.mark.parametrize("key, name", [
    ("1", "dashboard"), ("2", "queue"), ("3", "domains"), ("4", "accounts"), ("5", "help"),
])
def test_console_screen_matches_snapshot(snap_compare, demo_app, key: str, name: str) -> None:
    async def run_before(pilot) -> None:
        await settle(pilot)
        await pilot.press(key)
        await settle(pilot)

    assert snap_compare(demo_app, terminal_size=SIZE, run_before=run_before)


def test_console_message_view_matches_snapshot(snap_compare, demo_app) -> None:
    async def run_before(pilot) -> None:
        await settle(pilot)
        await pilot.press("2")
        await settle(pilot)
        await pilot.press("enter")
        await settle(pilot)

    assert snap_compare(demo_app, terminal_size=SIZE, run_before=run_before)
