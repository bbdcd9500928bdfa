"""Command palette entries (ctrl+p): switch panes and start work on a domain."""

from __future__ import annotations

from functools import partial

from textual.command import DiscoveryHit, Hit, Hits, Provider


class ConsoleCommands(Provider):
    """Offers "Go to ...", "Flush DOMAIN" and "Retry deferred mail of DOMAIN"."""

    def _commands(self) -> list[tuple[str, object, str]]:
        app = self.app
        commands = [
            (f"Go to {title}", partial(app.action_tab, name), f"Show the {title} pane")
            for name, title in (("dashboard", "Dashboard"), ("queue", "Queue"),
                                ("domains", "Domains"), ("accounts", "Accounts"), ("help", "Help"))
        ]
        data = getattr(app, "data", None)
        if data is None:
            return commands
        for name, route in sorted(data.context.routes.routes.items()):
            if route.mode == "smtp" or route.host:
                commands.append((f"Flush {name}", partial(app.flush_domain, name),
                                 f"Deliver {name}'s held and deferred mail now"))
        return commands

    async def discover(self) -> Hits:
        for text, command, help_text in self._commands():
            yield DiscoveryHit(text, command, help=help_text)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for text, command, help_text in self._commands():
            score = matcher.match(text)
            if score > 0:
                yield Hit(score, matcher.highlight(text), command, help=help_text)
