"""The domains and accounts panes: add, edit and remove, as the CLI does."""

from __future__ import annotations

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.widgets import DataTable

from ..store.accounts import Conflict, NotFound, describe_target
from ..store.models import MODES
from .dashboard import human_size
from .data import ConsoleData
from .forms import ConfirmScreen, Field, FormScreen, SecretScreen

ADMIN_ERRORS = (Conflict, NotFound, ValueError)


def _or_default(value, default):
    return default if value in (None, "") else value


class TablePane(Vertical):
    """A pane around one DataTable whose rows are keyed by name."""

    table_id = ""

    def __init__(self, data: ConsoleData, **kwargs):
        super().__init__(**kwargs)
        self.data = data

    def selected(self) -> str | None:
        table = self.query_one(f"#{self.table_id}", DataTable)
        if table.row_count == 0:
            return None
        try:
            return table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        except Exception:  # the table is refilling
            return None

    def on_mount(self) -> None:
        self.reload()
        self.set_interval(2.0, self.reload)

    def reload(self) -> None:
        raise NotImplementedError


class DomainsPane(TablePane):
    """Hosted domains: mode, target, retention and owner."""

    table_id = "domains-table"
    BINDINGS = [
        Binding("a", "add", "Add"),
        Binding("e", "edit", "Edit"),
        Binding("enter", "edit", "Edit", show=False),
        Binding("x", "remove", "Remove"),
    ]

    def compose(self) -> ComposeResult:
        table = DataTable(id=self.table_id, cursor_type="row", zebra_stripes=True)
        table.add_columns("domain", "account", "mode", "target", "retention", "recipients")
        yield table

    @work(exclusive=True, group="domains-reload")
    async def reload(self) -> None:
        if not self.is_on_screen:
            return
        rows = await self.data.domains()
        table = self.query_one(f"#{self.table_id}", DataTable)
        selected = self.selected()
        table.clear()
        for domain, owner in rows:
            target = describe_target(domain.mode, domain.host, domain.port)
            listed = domain.recipients.count(",") + 1 if domain.recipients else 0
            table.add_row(domain.name, owner, domain.mode, target, f"{domain.retention_days}d",
                          f"{listed} listed" if listed else "any", key=domain.name)
        if selected and selected in {d.name for d, _o in rows}:
            table.move_cursor(row=table.get_row_index(selected))

    async def _form(self, title: str, name: str, values: dict, new_name: str = "") -> dict | None:
        accounts = await self.data.account_names()
        if not accounts:
            self.notify("Add an account first (Accounts tab)", severity="warning")
            return None
        fields = [
            Field("account", "Account", values.get("account") or accounts[0], options=accounts),
            Field("mode", "Mode", values.get("mode", "smtp"), options=list(MODES)),
            Field("host", "Host", values.get("host", ""), required=False),
            Field("port", "Port", _or_default(values.get("port"), 25), integer=True),
            Field("retention", "Retention (days)", _or_default(values.get("retention"), 30),
                  integer=True),
            Field("recipients", "Recipients", values.get("recipients", ""), required=False),
        ]
        if not name:
            fields.insert(0, Field("name", "Domain", new_name))
        return await self.app.push_screen_wait(FormScreen(title, fields))

    @work(group="domains-edit")
    async def action_add(self) -> None:
        values: dict = {}
        while True:  # a rejected form comes back with what was typed
            values = await self._form("New domain", "", values, values.get("name", ""))
            if values is None:
                return
            try:
                await self.data.save_domain(values["name"], values, new=True)
            except ADMIN_ERRORS as exc:
                self.notify(str(exc), severity="error")
                continue
            break
        self.notify(f"Domain {values['name']} added")
        self.reload()

    @work(group="domains-edit")
    async def action_edit(self) -> None:
        name = self.selected()
        if not name:
            return
        current = next((d for d, _o in await self.data.domains() if d.name == name), None)
        owners = dict((d.name, o) for d, o in await self.data.domains())
        if current is None:
            return
        values = await self._form(f"Edit {name}", name, {
            "account": owners.get(name), "mode": current.mode, "host": current.host,
            "port": current.port, "retention": current.retention_days,
            "recipients": current.recipients,
        })
        while values is not None:
            try:
                await self.data.save_domain(name, values, new=False)
            except ADMIN_ERRORS as exc:
                self.notify(str(exc), severity="error")
                values = await self._form(f"Edit {name}", name, values)
                continue
            self.notify(f"Domain {name} changed")
            break
        self.reload()

    @work(group="domains-edit")
    async def action_remove(self) -> None:
        name = self.selected()
        if not name:
            return
        if not await self.app.push_screen_wait(ConfirmScreen(
                f"Stop hosting {name}? Mail already queued for it stays queued.")):
            return
        try:
            await self.data.remove_domain(name)
        except ADMIN_ERRORS as exc:
            self.notify(str(exc), severity="error")
            return
        self.notify(f"Domain {name} removed")
        self.reload()


class AccountsPane(TablePane):
    """Accounts (state, secrets, domains) above their POP3 mailboxes."""

    table_id = "accounts-table"
    BINDINGS = [
        Binding("a", "add", "Add"),
        Binding("p", "password", "Password"),
        Binding("s", "secret", "CRAM secret"),
        Binding("S", "set_secret", "Set CRAM secret", show=False),
        Binding("t", "toggle", "On/off"),
        Binding("m", "add_mailbox", "Mailbox"),
        Binding("o", "apop", "APOP secret"),
        Binding("O", "set_apop", "Set APOP secret", show=False),
        Binding("w", "mailbox_password", "Mailbox password", show=False),
        Binding("d", "remove_mailbox", "Remove mailbox", show=False),
    ]

    def compose(self) -> ComposeResult:
        table = DataTable(id=self.table_id, cursor_type="row", zebra_stripes=True)
        table.add_columns("account", "state", "password", "CRAM-MD5", "domains")
        yield table
        boxes = DataTable(id="mailboxes-table", cursor_type="row", zebra_stripes=True)
        boxes.add_columns("mailbox", "account", "messages", "size", "quota", "APOP")
        yield boxes

    async def _ask_hidden(self, title: str, label: str) -> str | None:
        """Ask for one password or secret; None when the user backs out."""
        values = await self.app.push_screen_wait(
            FormScreen(title, [Field("value", label, "", password=True)]))
        return None if values is None else values["value"]

    def selected_mailbox(self) -> str | None:
        table = self.query_one("#mailboxes-table", DataTable)
        if table.row_count == 0:
            return None
        try:
            return table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        except Exception:  # the table is refilling
            return None

    @work(exclusive=True, group="accounts-reload")
    async def reload(self) -> None:
        if not self.is_on_screen:
            return
        rows = await self.data.accounts()
        boxes = await self.data.mailboxes()
        table = self.query_one(f"#{self.table_id}", DataTable)
        selected = self.selected()
        table.clear()
        for account, domains in rows:
            table.add_row(account.name, "enabled" if account.enabled else "disabled",
                          "set" if account.password_hash else "-",
                          "set" if account.shared_secret else "-",
                          ", ".join(domains) or "-", key=account.name)
        if selected and selected in {a.name for a, _d in rows}:
            table.move_cursor(row=table.get_row_index(selected))
        mailbox_table = self.query_one("#mailboxes-table", DataTable)
        chosen = self.selected_mailbox()
        mailbox_table.clear()
        for box in boxes:
            quota = f"{box.max_messages or '-'}/{human_size(box.max_bytes) if box.max_bytes else '-'}"
            mailbox_table.add_row(box.address, box.account, str(box.messages), human_size(box.bytes),
                                  quota, "set" if box.has_apop else "-", key=box.address)
        if chosen and chosen in {b.address for b in boxes}:
            mailbox_table.move_cursor(row=mailbox_table.get_row_index(chosen))

    @work(group="accounts-edit")
    async def action_add(self) -> None:
        values = await self.app.push_screen_wait(FormScreen("New account", [
            Field("name", "Name", ""), Field("password", "Password", "", password=True),
        ]))
        if values is None:
            return
        try:
            await self.data.add_account(values["name"], values["password"])
        except ADMIN_ERRORS as exc:
            self.notify(str(exc), severity="error")
            return
        self.notify(f"Account {values['name']} added")
        self.reload()

    @work(group="accounts-edit")
    async def action_password(self) -> None:
        name = self.selected()
        if not name:
            return
        password = await self._ask_hidden(f"New password for {name}", "Password")
        if password is None:
            return
        await self.data.set_password(name, password)
        self.notify(f"Password of {name} changed")

    @work(group="accounts-edit")
    async def action_secret(self) -> None:
        name = self.selected()
        if not name:
            return
        secret = await self.data.set_secret(name)
        self.reload()
        await self.app.push_screen_wait(SecretScreen(
            f"New CRAM-MD5 secret for {name}", secret,
            "Shown only this once. The customer's ODMR client (fetchmail's password) needs it."))

    @work(group="accounts-edit")
    async def action_set_secret(self) -> None:
        name = self.selected()
        if not name:
            return
        secret = await self._ask_hidden(f"Set the CRAM-MD5 secret of {name}", "Secret")
        if secret is None:
            return
        await self.data.set_secret(name, secret)
        self.notify(f"CRAM-MD5 secret of {name} set")
        self.reload()

    @work(group="accounts-edit")
    async def action_toggle(self) -> None:
        name = self.selected()
        if not name:
            return
        enabled = await self.data.toggle_enabled(name)
        self.notify(f"Account {name} {'enabled' if enabled else 'disabled'}")
        self.reload()

    @work(group="accounts-edit")
    async def action_add_mailbox(self) -> None:
        accounts = await self.data.account_names()
        if not accounts:
            self.notify("Add an account first", severity="warning")
            return
        values = await self.app.push_screen_wait(FormScreen("New POP3 mailbox", [
            Field("address", "Address (@dom: all)", ""),
            Field("account", "Account", self.selected() or accounts[0], options=accounts),
            Field("password", "Password", "", password=True),
        ]))
        if values is None:
            return
        try:
            address = await self.data.add_mailbox(values["address"], values["account"],
                                                  values["password"])
        except ADMIN_ERRORS as exc:
            self.notify(str(exc), severity="error")
            return
        self.notify(f"Mailbox {address} added")
        self.reload()

    @work(group="accounts-edit")
    async def action_apop(self) -> None:
        address = self.selected_mailbox()
        if not address:
            self.notify("Select a mailbox first (Tab moves to the mailbox table)", severity="warning")
            return
        secret = await self.data.set_apop_secret(address)
        self.reload()
        await self.app.push_screen_wait(SecretScreen(
            f"New APOP secret for {address}", secret,
            "Shown only this once. The mail client's password for APOP is this secret."))

    @work(group="accounts-edit")
    async def action_set_apop(self) -> None:
        address = self.selected_mailbox()
        if not address:
            return
        secret = await self._ask_hidden(f"Set the APOP secret of {address}", "Secret")
        if secret is None:
            return
        await self.data.set_apop_secret(address, secret)
        self.notify(f"APOP secret of {address} set")
        self.reload()

    @work(group="accounts-edit")
    async def action_mailbox_password(self) -> None:
        address = self.selected_mailbox()
        if not address:
            return
        password = await self._ask_hidden(f"New password for {address}", "Password")
        if password is None:
            return
        await self.data.set_mailbox_password(address, password)
        self.notify(f"Password of {address} changed")

    @work(group="accounts-edit")
    async def action_remove_mailbox(self) -> None:
        address = self.selected_mailbox()
        if not address:
            return
        if not await self.app.push_screen_wait(ConfirmScreen(
                f"Remove mailbox {address} and the mail in it?")):
            return
        try:
            count = await self.data.remove_mailbox(address)
        except ADMIN_ERRORS as exc:
            self.notify(str(exc), severity="error")
            return
        self.notify(f"Mailbox {address} removed with {count} message(s)")
        self.reload()
