"""The console driven with real key presses (Textual's Pilot) against a real server.

Each test runs MailkeepApp with its own store and listeners on free loopback
ports, in the test's event loop, as ``mailkeep serve`` does on a terminal.
"""

from __future__ import annotations

import asyncio
import sys
import socket
import sqlite3
from pathlib import Path

import pytest
from textual.widgets import DataTable, Input

from helpers import free_port
from mailkeep.config import Listen, Settings
from mailkeep.server.app import Server
from mailkeep.store.db import connect, create_schema
from mailkeep.store.queue import NewMessage, enqueue
from mailkeep.tui.app import MailkeepApp

pytestmark = pytest.mark.timeout(60)


def make_settings(tmp_path: Path) -> Settings:
    return Settings(hostname="mx.mailkeep.test", data_dir=str(tmp_path / "data"),
                    listen=Listen(smtp=[f"127.0.0.1:{free_port()}"]))


def query(settings: Settings, sql: str, *args) -> list[tuple]:
    conn = sqlite3.connect(settings.database)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


async def wait_for(predicate, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("timed out")
        await asyncio.sleep(0.1)


async def type_text(pilot, text: str) -> None:
    for char in text:
        await pilot.press(char if char != " " else "space")


async def test_console_adds_account_then_domain(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    app = MailkeepApp(Server(settings), manage_server=True)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause(0.5)
        await pilot.press("4", "a")
        await pilot.pause(0.3)
        await type_text(pilot, "acme")
        await pilot.press("tab")
        await type_text(pilot, "s3cret-pw")
        await pilot.press("ctrl+s")
        await wait_for(lambda: query(settings, "SELECT name FROM account") == [("acme",)])
        await pilot.press("3", "a")
        await pilot.pause(0.3)
        await type_text(pilot, "customer.test")
        # Account and mode keep their first choices (acme, smtp); the host is the next input.
        await pilot.press("tab", "tab", "tab")
        await type_text(pilot, "127.0.0.1")
        await pilot.press("ctrl+s")
        await wait_for(lambda: query(settings, "SELECT name FROM domain") == [("customer.test",)])
        row = query(settings, "SELECT mode, host, port, retention_days FROM domain")[0]
        assert row == ("smtp", "127.0.0.1", 25, 30)
        await wait_for(lambda: "customer.test" in app.server.context.routes.routes)
    hashes = query(settings, "SELECT password_hash FROM account")
    assert hashes[0][0].startswith("$argon2id$")


async def test_console_new_secret_is_stored_and_shown_once(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    app = MailkeepApp(Server(settings), manage_server=True)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause(0.3)
        await pilot.press("4", "a")
        await pilot.pause(0.3)
        await type_text(pilot, "acme")
        await pilot.press("tab")
        await type_text(pilot, "pw")
        await pilot.press("ctrl+s")
        await wait_for(lambda: query(settings, "SELECT name FROM account") == [("acme",)])
        table = app.query_one("#accounts-table", DataTable)
        await wait_for(lambda: table.row_count == 1)
        table.focus()
        await pilot.press("s")
        await wait_for(lambda: query(settings, "SELECT shared_secret FROM account")[0][0] != "")
        await pilot.pause(0.3)
        secret = query(settings, "SELECT shared_secret FROM account")[0][0]
        shown = str(app.screen.query_one("#secret").render())
        assert secret in shown
        await pilot.press("escape")


def seed_message(settings: Settings, queue_id: str) -> None:
    create_schema(settings.database)
    conn = connect(settings.database)
    try:
        enqueue(conn, NewMessage(queue_id=queue_id, sender="a@sender.example",
                                 data=b"Subject: x\r\n\r\nbody\r\n",
                                 recipients=[("u@held.test", "held.test", "held")]))
    finally:
        conn.close()


@pytest.mark.parametrize("answer, remaining", [("y", []), ("n", [("QID0000DELETE",)])])
async def test_console_delete_asks_first(tmp_path: Path, answer: str, remaining: list) -> None:
    settings = make_settings(tmp_path)
    seed_message(settings, "QID0000DELETE")
    app = MailkeepApp(Server(settings), manage_server=True)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause(0.3)
        await pilot.press("2")
        table = app.query_one("#queue-table", DataTable)
        await wait_for(lambda: table.row_count == 1)
        table.focus()
        await pilot.press("x")
        await pilot.pause(0.3)
        assert "Delete QID0000DELETE" in str(app.screen.query_one(".question").render())
        await pilot.press(answer)
        await pilot.pause(0.5)
        await wait_for(lambda: query(settings, "SELECT queue_id FROM message") == remaining)


async def test_console_filter_narrows_queue(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    seed_message(settings, "QID000000ONE")
    seed_message(settings, "QID000000TWO")
    conn = sqlite3.connect(settings.database)
    conn.execute("UPDATE message SET sender = 'other@x.example' WHERE queue_id = 'QID000000TWO'")
    conn.commit()
    conn.close()
    app = MailkeepApp(Server(settings), manage_server=True)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause(0.3)
        await pilot.press("2")
        table = app.query_one("#queue-table", DataTable)
        await wait_for(lambda: table.row_count == 2)
        app.query_one("#q-sender", Input).focus()
        await type_text(pilot, "other@")
        await wait_for(lambda: table.row_count == 1)
        assert str(table.get_row_at(0)[0]) == "QID000000TWO"


async def test_console_shows_live_session(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    port = int(settings.listen.smtp[0].rpartition(":")[2])
    app = MailkeepApp(Server(settings), manage_server=True)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause(0.3)
        table = app.query_one("#sessions", DataTable)
        assert table.row_count == 0
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        await reader.readline()
        writer.write(b"EHLO client.example\r\n")
        await writer.drain()
        await wait_for(lambda: table.row_count == 1, timeout=5)
        row = [str(cell) for cell in table.get_row_at(0)]
        assert row[1] == "smtpd"
        assert row[2] == "127.0.0.1"
        writer.close()
        await wait_for(lambda: table.row_count == 0, timeout=5)


async def test_console_dashboard_lists_listener_port(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    app = MailkeepApp(Server(settings), manage_server=True)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause(0.3)
        text = str(app.query_one("#listeners").render())
        assert settings.listen.smtp[0] in text
        assert "pop3   not configured" in text


async def test_console_reports_port_in_use(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    host, _, port = settings.listen.smtp[0].rpartition(":")
    with socket.socket() as busy:
        busy.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        busy.bind((host, int(port)))
        busy.listen()
        app = MailkeepApp(Server(settings), manage_server=True)
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.pause(0.5)
        assert "already in use" in app.startup_error


async def test_console_palette_switches_pane(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    app = MailkeepApp(Server(settings), manage_server=True)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause(0.3)
        await pilot.press("ctrl+p")
        await pilot.pause(0.3)
        await type_text(pilot, "Go to Help")
        await pilot.pause(0.5)
        await pilot.press("enter")
        await pilot.pause(0.3)
        from textual.widgets import TabbedContent
        assert app.query_one(TabbedContent).active == "help"


async def test_console_adds_mailbox_and_apop_secret(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    app = MailkeepApp(Server(settings), manage_server=True)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause(0.3)
        await pilot.press("4", "a")
        await pilot.pause(0.3)
        await type_text(pilot, "acme")
        await pilot.press("tab")
        await type_text(pilot, "pw")
        await pilot.press("ctrl+s")
        await wait_for(lambda: query(settings, "SELECT name FROM account") == [("acme",)])
        await pilot.press("3", "a")
        await pilot.pause(0.3)
        await type_text(pilot, "pop.test")
        await pilot.press("tab", "tab", "enter")  # open the mode list
        await pilot.pause(0.2)
        await pilot.press("down", "down", "down", "enter")  # smtp, etrn, odmr, pop3
        await pilot.press("ctrl+s")
        await wait_for(lambda: query(settings, "SELECT mode FROM domain") == [("pop3",)])
        await pilot.press("4")
        await pilot.pause(0.3)
        app.query_one("#accounts-table", DataTable).focus()
        await pilot.press("m")
        await pilot.pause(0.3)
        await type_text(pilot, "bob@pop.test")
        await pilot.press("tab", "tab")
        await type_text(pilot, "bob-pw")
        await pilot.press("ctrl+s")
        await wait_for(lambda: query(settings, "SELECT address FROM mailbox") == [("bob@pop.test",)])
        boxes = app.query_one("#mailboxes-table", DataTable)
        await wait_for(lambda: boxes.row_count == 1)
        boxes.focus()
        await pilot.press("o")
        await wait_for(lambda: query(settings, "SELECT apop_secret FROM mailbox")[0][0] != "")
        await pilot.pause(0.3)
        secret = query(settings, "SELECT apop_secret FROM mailbox")[0][0]
        assert secret in str(app.screen.query_one("#secret").render())
        await pilot.press("escape")
    assert query(settings, "SELECT password_hash FROM mailbox")[0][0].startswith("$argon2id$")


async def test_console_shows_cli_change_within_seconds(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    app = MailkeepApp(Server(settings), manage_server=True)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause(0.3)
        await pilot.press("3")
        table = app.query_one("#domains-table", DataTable)
        assert table.row_count == 0
        config = tmp_path / "mk.toml"
        config.write_text(f'hostname = "mx.mailkeep.test"\ndata_dir = "{settings.data_dir}"\n')
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "mailkeep", "--config", str(config), "account", "add", "acme",
            "--password-stdin", stdin=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
        await process.communicate(b"pw\n")
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "mailkeep", "--config", str(config), "domain", "add",
            "fromcli.test", "--account", "acme", "--mode", "etrn", stderr=asyncio.subprocess.DEVNULL)
        await process.wait()
        started = asyncio.get_running_loop().time()
        await wait_for(lambda: table.row_count == 1, timeout=5)
        assert asyncio.get_running_loop().time() - started < 3
        assert str(table.get_row_at(0)[0]) == "fromcli.test"


async def test_console_tab_click_switches_pane(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    app = MailkeepApp(Server(settings), manage_server=True)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause(0.3)
        await pilot.click("#--content-tab-queue")
        await pilot.pause(0.3)
        from textual.widgets import TabbedContent
        assert app.query_one(TabbedContent).active == "queue"
