"""Make the console screenshots in this folder from a seeded demo store.

Run from the project root: ``.venv/bin/python screenshots/make.py``. It
starts a private server on free loopback ports, opens a live SMTP session so
the dashboard has one to show, saves an SVG of each screen at 80x24, and
turns each into a PNG with Debian's rsvg-convert (package librsvg2-bin),
which keeps the monospace columns.
"""

from __future__ import annotations

import asyncio
import shutil
import smtplib
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from mailkeep.config import Listen, Settings
from mailkeep.server.app import Server
from mailkeep.tui import demo
from mailkeep.tui.app import MailkeepApp

HERE = Path(__file__).resolve().parent
SIZE = (80, 24)
SCREENS = [("1", "dashboard"), ("2", "queue"), ("3", "domains"), ("4", "accounts"), ("5", "help")]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def client_session(port: int) -> smtplib.SMTP:
    """Send two messages into a held domain and stay connected, as a live session."""
    smtp = smtplib.SMTP("127.0.0.1", port, local_hostname="mail.example.net", timeout=10)
    for number in range(2):
        smtp.sendmail("orders@flour.example", ["baker@bakery.example"],
                      f"Subject: live order {number}\r\n\r\nTwo loaves.\r\n")
    smtp.ehlo("mail.example.net")
    smtp.mail("orders@flour.example")
    return smtp


async def capture(workdir: Path) -> list[Path]:
    smtp_port, odmr_port = free_port(), free_port()
    settings = Settings(hostname="mx.mailkeep.test", data_dir=str(workdir / "data"),
                        listen=Listen(smtp=[f"127.0.0.1:{smtp_port}"], odmr=[f"127.0.0.1:{odmr_port}"]))
    demo.seed(settings, sink_port=free_port())
    server = Server(settings)
    saved = []
    app = MailkeepApp(server, manage_server=True)
    async with app.run_test(size=SIZE) as pilot:
        smtp = await asyncio.to_thread(client_session, smtp_port)
        await pilot.pause(2.5)
        for key, name in SCREENS:
            await pilot.press(key)
            await pilot.pause(1.0)
            saved.append(Path(app.save_screenshot(f"{name}.svg", str(HERE))))
        await pilot.press("2")
        await pilot.pause(0.5)
        await pilot.press("enter")
        await pilot.pause(1.0)
        saved.append(Path(app.save_screenshot("message.svg", str(HERE))))
        await pilot.press("escape")
        await asyncio.to_thread(smtp.close)
    return saved


def main() -> int:
    converter = shutil.which("rsvg-convert")
    if converter is None:
        print("rsvg-convert not found: install Debian's librsvg2-bin", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        saved = asyncio.run(capture(Path(tmp)))
    for svg in saved:
        subprocess.run([converter, "-o", str(svg.with_suffix(".png")), str(svg)], check=True)
        print(f"wrote {svg.name} and {svg.with_suffix('.png').name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
