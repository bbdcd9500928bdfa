"""Typed settings read from Mailkeep's TOML config file.

The file is found in this order: the ``--config PATH`` option, the
``MAILKEEP_CONFIG`` environment variable, then ``/etc/mailkeep/mailkeep.toml``.
With no file at all, every setting keeps the default documented below.
Settings that change while the server runs (accounts, domains, the queue)
live in the database, not here.
"""

from __future__ import annotations

import os
import re
import socket
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

DEFAULT_PATH = Path("/etc/mailkeep/mailkeep.toml")

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_SIZE = re.compile(r"^\s*(\d+)\s*([kmg]?)(i?b)?\s*$", re.IGNORECASE)
_UNIT_BYTES = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


class ConfigError(Exception):
    """A config file that cannot be read or holds an invalid value."""


def parse_duration(value: Any, key: str) -> float:
    """Convert a number of seconds or a string such as ``"90s"``, ``"5m"``,
    ``"1h"`` or ``"5d"`` to seconds.

    Raises:
        ConfigError: the value is neither.
    """
    if isinstance(value, bool):
        raise ConfigError(f"{key}: expected a duration such as 30s, 5m, 1h or 5d, got {value!r}")
    if isinstance(value, (int, float)) and value >= 0:
        return float(value)
    match = _DURATION.match(str(value))
    if not match:
        raise ConfigError(f"{key}: expected a duration such as 30s, 5m, 1h or 5d, got {value!r}")
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def parse_size(value: Any, key: str) -> int:
    """Convert a byte count or a string such as ``"50M"`` or ``"10MiB"`` to bytes.

    Raises:
        ConfigError: the value is neither.
    """
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    match = _SIZE.match(str(value))
    if not match:
        raise ConfigError(f"{key}: expected a size such as 10485760, 512K or 50M, got {value!r}")
    return int(match.group(1)) * _UNIT_BYTES[match.group(2).lower()]


def parse_hostport(value: str, key: str, default_port: int | None = None) -> tuple[str, int]:
    """Split ``"host:port"`` (or ``"[v6]:port"``) into its parts.

    Raises:
        ConfigError: the port is missing or not a number from 1 to 65535.
    """
    text = str(value).strip()
    host, port_text = text, ""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    if not port_text:
        if default_port is None:
            raise ConfigError(f"{key}: {value!r} has no port; write it as host:port, e.g. 127.0.0.1:2525")
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ConfigError(f"{key}: {value!r} has an invalid port; use a number from 1 to 65535")
    return host, int(port_text)


@dataclass
class Listen:
    """Addresses per service, each as ``"host:port"``."""

    smtp: list[str] = field(default_factory=lambda: ["0.0.0.0:25", "0.0.0.0:2525"])
    odmr: list[str] = field(default_factory=list)
    pop3: list[str] = field(default_factory=list)
    pop3s: list[str] = field(default_factory=list)


@dataclass
class TLS:
    """Certificate and key files in PEM form.

    Both empty means a self-signed certificate for ``hostname`` is made in
    ``data_dir`` on first start.
    """

    cert: str = ""
    key: str = ""


@dataclass
class Limits:
    """Limits on what clients may send and how long they may take."""

    max_message_size: int = 50 * 1024 * 1024
    """Largest message accepted, in bytes; announced as SIZE in EHLO."""
    max_recipients: int = 1000
    """Recipients per message; more get 452 4.5.3."""
    max_connections: int = 500
    """SMTP, ODMR and POP3 sessions open at once, all listeners together."""
    max_connections_per_client: int = 50
    """Sessions open at once from one client IP address."""
    command_timeout: float = 300.0
    """Seconds a session may wait for a command (RFC 5321 4.5.3.2.7)."""
    data_timeout: float = 600.0
    """Seconds a client may take to send the message after DATA's 354."""
    max_received_headers: int = 50
    """A message with more Received headers is a mail loop: 554 5.4.6."""


@dataclass
class Queue:
    """How long mail stays queued and how delivery is retried."""

    lifetime: float = 5 * 86400.0
    """Age after which undeliverable mail is returned to its sender."""
    retry_min: float = 60.0
    """Delay before the first retry; it doubles with each failure."""
    retry_max: float = 3600.0
    """Longest delay between two retries."""


@dataclass
class Delivery:
    """The SMTP client that hands mail on."""

    connections_per_destination: int = 4
    """Parallel connections to one customer server."""
    max_connections: int = 50
    """Outgoing connections at once, all destinations together."""
    connect_timeout: float = 30.0
    reply_timeout: float = 300.0
    relayhost: str = ""
    """``host:port`` that takes mail for domains that are not hosted
    (delivery status notifications to outside senders); empty means
    the recipient domain's MX records are looked up."""


@dataclass
class Auth:
    """Login settings shared by every listener."""

    allow_plaintext: bool = False
    """Allow PLAIN and LOGIN (and USER/PASS) without TLS."""
    failure_delay: float = 1.0
    """Seconds added to the reply after each failed login, per failure."""
    max_failures: int = 5
    """Failed logins from one IP address before it is refused for a while."""
    lockout: float = 900.0
    """Seconds an IP address stays refused after ``max_failures``."""


@dataclass
class Settings:
    """Everything in the config file."""

    hostname: str = field(default_factory=socket.getfqdn)
    data_dir: str = "/var/lib/mailkeep"
    listen: Listen = field(default_factory=Listen)
    tls: TLS = field(default_factory=TLS)
    limits: Limits = field(default_factory=Limits)
    queue: Queue = field(default_factory=Queue)
    delivery: Delivery = field(default_factory=Delivery)
    auth: Auth = field(default_factory=Auth)
    postmaster: str = ""
    """Address that takes mail sent to the bare ``<postmaster>``; empty keeps
    such mail held in the queue for ``mailkeep queue show``."""
    path: str = ""
    """The file these settings came from, empty for the defaults."""

    @property
    def database(self) -> Path:
        return Path(self.data_dir) / "mailkeep.sqlite3"


_SIZES = {"limits.max_message_size"}
_DURATIONS = {
    "limits.command_timeout", "limits.data_timeout", "queue.lifetime", "queue.retry_min",
    "queue.retry_max", "delivery.connect_timeout", "delivery.reply_timeout",
    "auth.failure_delay", "auth.lockout",
}


def _convert(section: str, name: str, default: Any, value: Any) -> Any:
    key = f"{section}.{name}" if section else name
    if key in _SIZES:
        return parse_size(value, key)
    if key in _DURATIONS:
        return parse_duration(value, key)
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError(f"{key}: expected a whole number of at least 0, got {value!r}")
        return value
    if isinstance(default, list):
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{key}: expected a list of \"host:port\" strings, got {value!r}")
        for item in value:
            parse_hostport(item, key)
        return value
    if not isinstance(value, str):
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    if key == "delivery.relayhost" and value:
        parse_hostport(value, key, default_port=25)
    if key == "hostname" and (not value or any(c.isspace() or not c.isprintable() for c in value)):
        raise ConfigError(f"hostname: {value!r} is not a host name; use e.g. mx.example.net")
    if key == "postmaster" and value and "@" not in value.strip("@"):
        raise ConfigError(f"postmaster: {value!r} is not an address; use e.g. admin@example.net")
    return value


def _fill(obj: Any, table: dict, section: str) -> None:
    known = {f.name: f for f in fields(obj) if f.name != "path"}
    for name, value in table.items():
        key = f"{section}.{name}" if section else name
        if name not in known:
            raise ConfigError(f"unknown setting {key!r}; see the README for the list of keys")
        current = getattr(obj, name)
        if hasattr(current, "__dataclass_fields__"):
            if not isinstance(value, dict):
                raise ConfigError(f"{key} must be a table: [{key}]")
            _fill(current, value, key)
        else:
            setattr(obj, name, _convert(section, name, current, value))


def config_path(option: str | None) -> Path | None:
    """Return the config file to read, following the documented order."""
    if option:
        return Path(option)
    env = os.environ.get("MAILKEEP_CONFIG")
    if env:
        return Path(env)
    if DEFAULT_PATH.exists():
        return DEFAULT_PATH
    return None


def load(option: str | None = None) -> Settings:
    """Read the settings from the config file chosen by :func:`config_path`.

    Raises:
        ConfigError: the file is missing, is not valid TOML or holds an
            unknown key or an invalid value.
    """
    settings = Settings()
    path = config_path(option)
    if path is None:
        return settings
    try:
        with open(path, "rb") as handle:
            table = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} not found; pass --config PATH or set MAILKEEP_CONFIG") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    try:
        _fill(settings, table, "")
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    if settings.queue.retry_min > settings.queue.retry_max:
        raise ConfigError(f"{path}: queue.retry_min ({settings.queue.retry_min:g} s) is longer "
                          f"than queue.retry_max ({settings.queue.retry_max:g} s)")
    # A relative data_dir is taken from the working directory, as a shell user expects.
    settings.data_dir = str(Path(settings.data_dir).resolve())
    settings.path = str(path)
    return settings
