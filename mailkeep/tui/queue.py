"""The queue pane: a paged table of queued messages, filters, a message view and actions.

The table holds one page (``PAGE_SIZE`` rows) at a time, read from the store
with the filters applied there, so it opens as fast with 100,000 queued
messages as with ten.
"""

from __future__ import annotations

import time

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import DataTable, Input, Label, Select, Static

from ..mailq import HELD_REASONS
from ..store.inspect import STATES
from .dashboard import human_size
from .data import ConsoleData
from .forms import ConfirmScreen

PAGE_SIZE = 200


class MessageScreen(ModalScreen[str | None]):
    """One message: envelope, headers, size and every failed attempt.

    Dismisses with the action the user chose (``retry``, ``hold``, ...), or None.
    """

    BINDINGS = [
        Binding("escape", "close", "Back"),
        Binding("r", "choose('retry')", "Retry"),
        Binding("h", "choose('hold')", "Hold"),
        Binding("u", "choose('release')", "Release"),
        Binding("b", "choose('bounce')", "Bounce"),
        Binding("x", "choose('delete')", "Delete"),
    ]

    def __init__(self, text: str):
        super().__init__()
        self.text = text

    def compose(self) -> ComposeResult:
        with VerticalScroll(classes="dialog message"):
            yield Static(self.text, markup=False)

    def action_close(self) -> None:
        self.dismiss(None)

    def action_choose(self, action: str) -> None:
        self.dismiss(action)


def describe_message(message, tries, headers: bytes, modes: dict[str, str]) -> str:
    """Render a message's details as plain text for :class:`MessageScreen`."""
    lines = [
        f"Queue id   {message.queue_id}",
        f"State      {message.state}",
        f"Arrived    {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(message.arrived))}",
        f"Size       {message.size} bytes",
        f"Sender     <{message.sender}>",
        f"Client     {message.client}  helo={message.helo}",
        "",
        "Recipients",
    ]
    for r in message.recipients:
        note = r.last_error or HELD_REASONS.get(modes.get(r.domain, ""), "")
        lines.append(f"  <{r.address}>  {r.state}, {r.attempts} attempt(s)")
        if note:
            lines.append(f"      {note}")
    lines += ["", "Delivery attempts"]
    if not tries:
        lines.append("  none failed so far")
    for at, address, relay, status, reply in tries:
        stamp = time.strftime("%m-%d %H:%M:%S", time.localtime(at))
        lines.append(f"  {stamp} <{address}> {status} via {relay or '-'}: {reply}")
    lines += ["", "Headers", headers.decode("utf-8", "replace").rstrip()]
    return "\n".join(lines)


class QueuePane(Vertical):
    """Queued messages with filters; Enter opens one."""

    BINDINGS = [
        Binding("enter", "open", "Open", show=False),
        Binding("r", "act('retry')", "Retry"),
        Binding("h", "act('hold')", "Hold"),
        Binding("u", "act('release')", "Release"),
        Binding("b", "act('bounce')", "Bounce"),
        Binding("x", "act('delete')", "Delete"),
        Binding("f", "flush", "Flush"),
        Binding("n", "page(1)", "Next page", show=False),
        Binding("p", "page(-1)", "Previous page", show=False),
        Binding("slash", "filter", "Filter", show=False),
    ]

    def __init__(self, data: ConsoleData, **kwargs):
        super().__init__(**kwargs)
        self.data = data
        self.page_offset = 0
        self.total = 0
        self.rows: dict[str, object] = {}

    def compose(self) -> ComposeResult:
        with Horizontal(id="queue-filters"):
            yield Input(placeholder="domain", id="q-domain", compact=True)
            yield Select([(s, s) for s in STATES], prompt="any state", id="q-state", compact=True)
            yield Input(placeholder="sender", id="q-sender", compact=True)
            yield Input(placeholder="recipient", id="q-recipient", compact=True)
        table = DataTable(id="queue-table", cursor_type="row", zebra_stripes=True)
        table.add_columns("queue id", "state", "size", "arrived", "sender", "recipient")
        yield table
        yield Label("", id="queue-status")

    def on_mount(self) -> None:
        self.reload()
        self.set_interval(2.0, self.reload)

    def filters(self) -> dict:
        state = self.query_one("#q-state", Select).value
        return {
            "domain": self.query_one("#q-domain", Input).value.strip(),
            "state": state if isinstance(state, str) else "",
            "sender": self.query_one("#q-sender", Input).value.strip(),
            "recipient": self.query_one("#q-recipient", Input).value.strip(),
        }

    @work(exclusive=True, group="queue-reload")
    async def reload(self) -> None:
        """Read the current page with the current filters; the latest call wins."""
        if not self.is_on_screen:
            return  # a hidden pane costs the loop nothing; switching to it reloads
        rows, total = await self.data.page(offset=self.page_offset, limit=PAGE_SIZE, **self.filters())
        self.total = total
        table = self.query_one("#queue-table", DataTable)
        selected = self.selected_id()
        table.clear()
        self.rows = {}
        for row in rows:
            more = f" +{row.recipients - 1}" if row.recipients > 1 else ""
            table.add_row(row.queue_id, row.state, human_size(row.size),
                          time.strftime("%m-%d %H:%M", time.localtime(row.arrived)),
                          row.sender or "MAILER-DAEMON", row.first_recipient + more, key=row.queue_id)
            self.rows[row.queue_id] = row
        if selected in self.rows:
            table.move_cursor(row=table.get_row_index(selected))
        end = min(self.page_offset + len(rows), total)
        shown = f"{self.page_offset + 1}-{end}" if rows else "0"
        self.query_one("#queue-status", Label).update(
            f"{shown} of {total} messages   Enter: open   n/p: page   /: filter")

    def selected_id(self) -> str | None:
        table = self.query_one("#queue-table", DataTable)
        if table.row_count == 0:
            return None
        try:
            return table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        except Exception:  # the cursor is outside the rows while the table refills
            return None

    @on(Input.Changed)
    @on(Select.Changed)
    def filters_changed(self) -> None:
        self.page_offset = 0
        self.reload()

    def action_filter(self) -> None:
        self.query_one("#q-domain", Input).focus()

    def action_page(self, step: int) -> None:
        offset = self.page_offset + step * PAGE_SIZE
        if 0 <= offset < max(self.total, 1):
            self.page_offset = offset
            self.reload()

    @on(DataTable.RowSelected, "#queue-table")
    def row_selected(self) -> None:
        self.action_open()

    @work(group="queue-open")
    async def action_open(self) -> None:
        queue_id = self.selected_id()
        if not queue_id:
            return
        message, tries, headers = await self.data.message(queue_id)
        if message is None:
            self.notify(f"{queue_id} has left the queue")
            self.reload()
            return
        modes = {name: route.mode for name, route in self.data.context.routes.routes.items()}
        action = await self.app.push_screen_wait(MessageScreen(describe_message(message, tries, headers, modes)))
        if action:
            await self.run_action_on(action, queue_id)

    @work(group="queue-act")
    async def action_act(self, action: str) -> None:
        queue_id = self.selected_id()
        if queue_id:
            await self.run_action_on(action, queue_id)

    async def run_action_on(self, action: str, queue_id: str) -> None:
        if action in ("delete", "bounce"):
            question = (f"Delete {queue_id} without telling anyone?" if action == "delete"
                        else f"Return {queue_id} to its sender with a notification?")
            if not await self.app.push_screen_wait(ConfirmScreen(question)):
                return
        count, reasons = await self.data.queue_action(action, [queue_id])
        if reasons:
            self.notify(f"{queue_id} not changed: {reasons[0]}", severity="warning")
        else:
            self.notify(f"{action}: {queue_id}" if count else f"{queue_id} has left the queue")
        self.reload()

    @work(group="queue-act")
    async def action_flush(self) -> None:
        queue_id = self.selected_id()
        domain = self.filters()["domain"]
        if not domain and queue_id:
            message, _tries, _headers = await self.data.message(queue_id)
            domain = message.recipients[0].domain if message and message.recipients else ""
        if not domain:
            self.notify("Select a message or type a domain in the filter first", severity="warning")
            return
        try:
            count = await self.data.flush(domain)
        except LookupError as exc:
            self.notify(str(exc), severity="warning")
            return
        self.notify(f"flush {domain}: {count} recipient(s) due now")
        self.reload()
