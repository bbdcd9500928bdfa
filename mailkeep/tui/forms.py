"""Modal dialogs: confirmation, a small form, and a secret shown once."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid, Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Select, Static


class ConfirmScreen(ModalScreen[bool]):
    """Ask yes or no; dismisses with True only for yes."""

    BINDINGS = [Binding("escape", "cancel", "Cancel"), Binding("y", "confirm", "Yes"),
                Binding("n", "cancel", "No")]

    def __init__(self, question: str):
        super().__init__()
        self.question = question

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Static(self.question, classes="question")
            with Horizontal(classes="buttons"):
                yield Button("Yes (y)", variant="error", id="yes")
                yield Button("No (n)", id="no")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")

    def action_confirm(self) -> None:
        self.dismiss(True)

    def action_cancel(self) -> None:
        self.dismiss(False)


@dataclass
class Field:
    """One input of a :class:`FormScreen`.

    Attributes:
        key: the name in the result dictionary.
        label: the text left of the input.
        value: the initial value.
        options: choices; a Select is shown instead of an Input when given.
        password: hide what is typed.
        integer: accept digits only and return an int.
        required: refuse to save while it is empty.
    """

    key: str
    label: str
    value: Any = ""
    options: list[str] = field(default_factory=list)
    password: bool = False
    integer: bool = False
    required: bool = True


class FormScreen(ModalScreen[dict | None]):
    """A form of a few fields; dismisses with the values, or None on Escape."""

    BINDINGS = [Binding("escape", "cancel", "Cancel"), Binding("ctrl+s", "save", "Save")]

    def __init__(self, title: str, fields: list[Field]):
        super().__init__()
        self.title_text = title
        self.fields = fields

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog form"):
            yield Label(self.title_text, classes="title")
            with Grid(classes="fields"):
                for item in self.fields:
                    yield Label(item.label)
                    if item.options:
                        yield Select([(o, o) for o in item.options], value=item.value or item.options[0],
                                     allow_blank=False, id=f"f-{item.key}", compact=True)
                    else:
                        yield Input(str(item.value), password=item.password, id=f"f-{item.key}",
                                    restrict=r"[0-9]*" if item.integer else None, compact=True)
            yield Static("", id="form-error", classes="error")
            with Horizontal(classes="buttons"):
                yield Button("Save (ctrl+s)", variant="primary", id="save")
                yield Button("Cancel (esc)", id="cancel")

    def values(self) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for item in self.fields:
            widget = self.query_one(f"#f-{item.key}")
            value = widget.value
            if item.integer:
                value = int(value) if str(value).isdigit() else None
            result[item.key] = value
        return result

    def show_error(self, text: str) -> None:
        self.query_one("#form-error", Static).update(text)

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "save":
            self.action_save()
        else:
            self.dismiss(None)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.action_save()

    def action_save(self) -> None:
        values = self.values()
        missing = [item.label for item in self.fields
                   if values[item.key] in ("", None) and item.required and not item.options]
        if missing:
            self.show_error(f"Missing: {', '.join(missing)}")
            return
        self.dismiss(values)

    def action_cancel(self) -> None:
        self.dismiss(None)


class SecretScreen(ModalScreen[None]):
    """Show a new secret once, with a copy action."""

    BINDINGS = [Binding("escape", "close", "Close"), Binding("c", "copy", "Copy")]

    def __init__(self, title: str, secret: str, note: str):
        super().__init__()
        self.title_text = title
        self.secret = secret
        self.note = note

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(self.title_text, classes="title")
            yield Static(self.secret, id="secret", classes="secret")
            yield Static(self.note, classes="note")
            with Horizontal(classes="buttons"):
                yield Button("Copy (c)", variant="primary", id="copy")
                yield Button("Close (esc)", id="close")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "copy":
            self.action_copy()
        else:
            self.dismiss(None)

    def action_copy(self) -> None:
        self.app.copy_to_clipboard(self.secret)
        self.notify("Copied to the clipboard")

    def action_close(self) -> None:
        self.dismiss(None)
