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
from textual.containers import Container, VerticalScroll
from textual.widgets import Footer, Header, Markdown, TabbedContent, TabPane, Tabs

from ..server.app import Server, StartupError
from .admin import AccountsPane, DomainsPane
from .commands import ConsoleCommands
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
    pop3s = listeners.get("pop3s")
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
    if pop3 or pop3s:
        pop3_text = (f"POP3 on port {pop3[0] if pop3 else '-'} (APOP, or USER/PASS after STLS), "
                     f"POP3S on port {pop3s[0] if pop3s else '-'}. Login name: the mailbox address.\n\n"
                     f"* Thunderbird or Outlook: server {host}, port {pop3s[0] if pop3s else pop3[0]}, "
                     f"{'SSL/TLS' if pop3s else 'STARTTLS'}, normal password.\n"
                     f"* fetchmail: `poll {host} proto APOP service {pop3[0] if pop3 else pop3s[0]} "
                     f"user \"bob@customer.example\" password \"APOP SECRET\" keep uidl`")
    else:
        pop3_text = "POP3 is not configured on this server (no `[listen] pop3`)."
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
    """The console.

    Args:
        server: the server to show. With ``manage_server`` true the app starts
            it when it mounts and stops it when it exits, all in the app's
            own event loop; otherwise the caller has started it already.
        clock: the source of "now" for ages and rates (fixed in snapshot tests).
    """

    TITLE = "Mailkeep"
    CSS_PATH = "console.tcss"
    COMMANDS = App.COMMANDS | {ConsoleCommands}
    BINDINGS = [
        Binding("1", "tab('dashboard')", "Dashboard", show=False),
        Binding("2", "tab('queue')", "Queue", show=False),
        Binding("3", "tab('domains')", "Domains", show=False),
        Binding("4", "tab('accounts')", "Accounts", show=False),
        Binding("5", "tab('help')", "Help", show=False),
        Binding("ctrl+q", "quit", "Quit"),
    ]

    def __init__(self, server: Server, clock=None, manage_server: bool = False):
        super().__init__()
        self.server = server
        self.clock = clock
        self.manage_server = manage_server
        self.data: ConsoleData | None = None
        self.startup_error = ""
        self.sub_title = server.settings.hostname

    def compose(self) -> ComposeResult:
        yield Header()
        yield Container(id="body")
        yield Footer()

    async def on_mount(self) -> None:
        if self.manage_server:
            try:
                await self.server.start()
            except StartupError as exc:
                self.startup_error = str(exc)
                self.exit(1)
                return
        self.data = ConsoleData(self.server, self.clock) if self.clock else ConsoleData(self.server)
        tabs = TabbedContent()
        await self.query_one("#body").mount(tabs)
        await tabs.add_pane(TabPane("1 Dashboard", Dashboard(self.data), id="dashboard"))
        await tabs.add_pane(TabPane("2 Queue", QueuePane(self.data), id="queue"))
        await tabs.add_pane(TabPane("3 Domains", DomainsPane(self.data), id="domains"))
        await tabs.add_pane(TabPane("4 Accounts", AccountsPane(self.data), id="accounts"))
        help_page = VerticalScroll(Markdown(help_text(self.data), id="help-text"), id="help-scroll")
        help_page.can_focus = True  # so PageDown, arrows and End scroll it
        await tabs.add_pane(TabPane("5 Help", help_page, id="help"))
        tabs.active = "dashboard"

    def action_tab(self, name: str) -> None:
        if self.data is None:
            return
        tabs = self.query_one(TabbedContent)
        pane = self.query_one(f"#{name}", TabPane)
        tables = pane.query("DataTable")
        # Move focus first: TabbedContent shows the pane that contains the focused widget, so
        # focus left in the old pane would switch straight back to it.
        scrolls = pane.query("#help-scroll")
        if tables:
            tables.first().focus()
        elif scrolls:
            scrolls.first().focus()
        else:
            tabs.query_one(Tabs).focus()
        tabs.active = name

    def on_tabbed_content_tab_activated(self, event: TabbedContent.TabActivated) -> None:
        # Hidden panes skip their timed refreshes; bring the new one up to date at once.
        pane = event.pane
        for widget in pane.children:
            for name in ("reload", "refresh_queues", "refresh_live"):
                method = getattr(widget, name, None)
                if method is not None:
                    self.call_after_refresh(method)

    async def flush_domain(self, domain: str) -> None:
        """Start delivery of a domain's waiting mail (a command palette entry)."""
        try:
            count = await self.data.flush(domain)
        except LookupError as exc:
            self.notify(str(exc), severity="warning")
            return
        self.notify(f"flush {domain}: {count} recipient(s) due now")

    async def on_unmount(self) -> None:
        if self.data is not None:
            self.data.close()
        if self.manage_server and self.server.context is not None:
            await self.server.stop()


async def run_console(server: Server) -> int:
    """Run the console and the server in this loop until the console quits or a signal arrives.

    Raises:
        StartupError: a listener could not bind; the console never took the screen.
    """
    app = MailkeepApp(server, manage_server=True)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(signum, app.exit)
    await app.run_async()
    if app.startup_error:
        raise StartupError(app.startup_error)
    return 0
