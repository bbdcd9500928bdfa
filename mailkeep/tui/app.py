"""The administration console: a Textual app that shares the server's event loop.

``run_console`` starts the server, runs the app with ``App.run_async`` in the
same loop, and stops the server when the app exits. The panes read the
store only through :class:`~mailkeep.tui.data.ConsoleData`, which keeps all
store work off the loop, and refresh on timers of one or two seconds, so a
busy console cannot stall the listeners.
"""

from __future__ import annotations

import asyncio
import signal

from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.widgets import Footer, Header, Markdown, TabbedContent, TabPane

from ..server.app import Server
from .admin import AccountsPane, DomainsPane
from .dashboard import Dashboard
from .data import ConsoleData
from .queue import QueuePane

TABS = (("dashboard", "Dashboard"), ("queue", "Queue"), ("domains", "Domains"),
        ("accounts", "Accounts"), ("help", "Help"))


def help_text(data: ConsoleData) -> str:
    """Write the customer help page with this server's host name and ports filled in."""
    host = data.settings.hostname
    listeners: dict[str, list[str]] = {}
    for service, address in data.listeners():
        listeners.setdefault(service, []).append(address.rpartition(":")[2])
    smtp = listeners.get("smtp", ["25"])
    odmr = listeners.get("odmr")
    pop3 = listeners.get("pop3")
    smtp_port = smtp[-1]
    odmr_text = (
        f"""```
poll {host} proto ODMR service {odmr[0]}
  user "ACCOUNT" password "CRAM-MD5 SECRET"
  fetchdomains customer.example
  smtphost localhost/25
```
ODMR also works on SMTP port {smtp_port} after AUTH."""
        if odmr else f"ODMR is not configured on this server (no `[listen] odmr`); ATRN works on "
                     f"SMTP port {smtp_port} after AUTH.")
    pop3_text = (f"POP3 listens on port {pop3[0]}; use APOP, or USER/PASS after STLS."
                 if pop3 else "POP3 is not configured on this server (no `[listen] pop3`).")
    return f"""# Helping customers collect their mail from {host}

## Trigger held mail with ETRN (mode `etrn`)
SMTP listens on port(s) {', '.join(smtp)}.

* fetchmail: `fetchmail --protocol ETRN --port {smtp_port} --fetchdomains customer.example {host}`
* authenticated, to the customer's current address:
  `echo PASSWORD | mailkeep etrn --server {host}:{smtp_port} --account ACCOUNT --password-stdin --starttls`
* cron: run the line above every 15 minutes while the customer's server is up.

Replies: 253 = N messages started, 251 = nothing waiting, 459 = not allowed (unknown domain,
no host for a plain ETRN, or a wrong password), 458 = try again later, 501 = syntax.

## Drain over the customer's own connection with ODMR (mode `odmr`)
{odmr_text}

Replies to ATRN: 250 turnaround, 530 authenticate first, 450 not your domain, 453 no mail,
451 another session is draining.

## Collect with POP3 (mode `pop3`)
{pop3_text}

## Keys
`1`-`5` switch tabs, `ctrl+p` opens the command palette, `Escape` closes a dialog,
`ctrl+q` quits (the server stops with the console).
"""


class MailkeepApp(App):
    """The console. Pass a started :class:`~mailkeep.server.app.Server`."""

    TITLE = "Mailkeep"
    CSS_PATH = "console.tcss"
    BINDINGS = [
        Binding("1", "tab('dashboard')", "Dashboard", show=False),
        Binding("2", "tab('queue')", "Queue", show=False),
        Binding("3", "tab('domains')", "Domains", show=False),
        Binding("4", "tab('accounts')", "Accounts", show=False),
        Binding("5", "tab('help')", "Help", show=False),
        Binding("ctrl+q", "quit", "Quit"),
    ]

    def __init__(self, server: Server):
        super().__init__()
        self.server = server
        self.data = ConsoleData(server)
        self.sub_title = server.settings.hostname

    def compose(self) -> ComposeResult:
        yield Header()
        with TabbedContent(initial="dashboard"):
            with TabPane("1 Dashboard", id="dashboard"):
                yield Dashboard(self.data)
            with TabPane("2 Queue", id="queue"):
                yield QueuePane(self.data)
            with TabPane("3 Domains", id="domains"):
                yield DomainsPane(self.data)
            with TabPane("4 Accounts", id="accounts"):
                yield AccountsPane(self.data)
            with TabPane("5 Help", id="help"):
                yield Markdown(help_text(self.data), id="help-text")
        yield Footer()

    def action_tab(self, name: str) -> None:
        self.query_one(TabbedContent).active = name
        pane = self.query_one(f"#{name}", TabPane)
        tables = pane.query("DataTable")
        if tables:
            tables.first().focus()

    def on_unmount(self) -> None:
        self.data.close()


async def run_console(server: Server) -> int:
    """Start the server, run the console in the same loop until it quits, then stop the server."""
    await server.start()
    app = MailkeepApp(server)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(signum, app.exit)
    try:
        await app.run_async()
    finally:
        await server.stop()
    return 0
