"""The dashboard: listeners, live sessions, the queue per domain, recent
delivery events and message rates."""

from __future__ import annotations

import time

from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import DataTable, Label, RichLog, Sparkline, Static

from ..events import Event
from .data import ConsoleData

SERVICES = ("smtp", "odmr", "pop3", "pop3s")
MAX_EVENTS_PER_REFRESH = 20
"""Events written to the panel per refresh; under load the rest only go to the log file."""


def human_size(size: int) -> str:
    """Format a byte count as ``512``, ``4.0K``, ``1.2M``."""
    value = float(size)
    for unit in ("", "K", "M", "G"):
        if value < 1024 or unit == "G":
            return f"{value:.0f}" if not unit else f"{value:.1f}{unit}"
        value /= 1024
    return str(size)


def human_age(seconds: float) -> str:
    """Format a duration as ``42s``, ``5m``, ``3h`` or ``2d``."""
    seconds = max(0, int(seconds))
    for size, unit in ((86400, "d"), (3600, "h"), (60, "m")):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def event_line(event: Event) -> str:
    stamp = time.strftime("%H:%M:%S", time.localtime(event.at))
    return f"{stamp} {event.service}: {event.text}"


class Dashboard(Vertical):
    """The first pane: what the server is doing now."""

    def __init__(self, data: ConsoleData, **kwargs):
        super().__init__(**kwargs)
        self.data = data
        self._shown_events = 0
        self._sessions_shown: list[tuple] = []

    def compose(self) -> ComposeResult:
        with Horizontal(id="dash-top"):
            with Vertical(id="listeners-box"):
                yield Label("Listeners", classes="section")
                yield Static(id="listeners")
            with Vertical(id="rates-box"):
                yield Label("In, messages/s (60 s)", id="rate-in-label", classes="section")
                yield Sparkline([], id="rate-in")
                yield Label("Out, messages/s (60 s)", id="rate-out-label", classes="section")
                yield Sparkline([], id="rate-out")
        yield Label("Sessions", classes="section")
        sessions = DataTable(id="sessions", cursor_type="row", show_cursor=False)
        sessions.add_columns("#", "proto", "client", "account", "state", "bytes", "time")
        yield sessions
        yield Label("Queue by domain", classes="section")
        queues = DataTable(id="domain-queues", cursor_type="row", show_cursor=False)
        queues.add_columns("domain", "mode", "held", "deferred", "active", "queued", "bytes", "oldest")
        yield queues
        yield Label("Recent events", classes="section")
        yield RichLog(id="events", max_lines=200, wrap=False, markup=False)

    def on_mount(self) -> None:
        self.show_listeners()
        self.refresh_live()
        self.set_interval(1.0, self.refresh_live)
        self.set_interval(2.0, self.refresh_queues)
        self.call_after_refresh(self.refresh_queues)

    def show_listeners(self) -> None:
        bound = self.data.listeners()
        lines = []
        for service in SERVICES:
            addresses = [address for name, address in bound if name == service]
            shown = ", ".join(addresses) if addresses else "not configured"
            lines.append(f"{service:<6} {shown}")
        self.query_one("#listeners", Static).update("\n".join(lines))

    def refresh_live(self) -> None:
        """Redraw sessions, rates and events from memory; no store access."""
        if not self.is_on_screen:
            return
        table = self.query_one("#sessions", DataTable)
        rows = [(str(row["number"]), row["protocol"], row["client"], row["account"], row["state"],
                 human_size(row["bytes"]), human_age(row["duration"])) for row in self.data.sessions()]
        if rows != self._sessions_shown:  # rebuilding an unchanged table only costs the loop
            self._sessions_shown = rows
            table.clear()
            for row in rows:
                table.add_row(*row)
        feed = self.data.feed
        now = self.data.clock()
        incoming = feed.rates(feed.received, now)
        outgoing = feed.rates(feed.delivered, now)
        self.query_one("#rate-in", Sparkline).data = incoming
        self.query_one("#rate-out", Sparkline).data = outgoing
        self.query_one("#rate-in-label", Label).update(f"In  {incoming[-1]:.0f}/s, peak {max(incoming):.0f}/s")
        self.query_one("#rate-out-label", Label).update(f"Out {outgoing[-1]:.0f}/s, peak {max(outgoing):.0f}/s")
        log = self.query_one("#events", RichLog)
        new = feed.since(self._shown_events)
        if new:
            self._shown_events = new[-1][0]
            if len(new) > MAX_EVENTS_PER_REFRESH:
                log.write(f"... {len(new) - MAX_EVENTS_PER_REFRESH} more events (see the log file)")
            for _sequence, event in new[-MAX_EVENTS_PER_REFRESH:]:
                log.write(event_line(event))

    async def refresh_queues(self) -> None:
        """Reload the per-domain queue summary through a reader thread."""
        if not self.is_on_screen:
            return
        summary = await self.data.domain_summary()
        routes = self.data.context.routes.routes
        table = self.query_one("#domain-queues", DataTable)
        table.clear()
        now = self.data.clock()
        names = {entry.domain for entry in summary}
        for entry in summary:
            route = routes.get(entry.domain)
            table.add_row(entry.domain or "(postmaster)", route.mode if route else "-",
                          str(entry.held), str(entry.deferred), str(entry.active), str(entry.queued),
                          human_size(entry.bytes),
                          human_age(now - entry.oldest) if entry.oldest else "-")
        for name, route in sorted(routes.items()):
            if name not in names:
                table.add_row(name, route.mode, "0", "0", "0", "0", "0", "-")
