"""Parsing of SMTP paths and their parameters (RFC 5321 section 4.1.2).

``parse_path`` takes the argument of ``MAIL FROM:`` or ``RCPT TO:`` after the
colon and returns the mailbox and the ESMTP parameters. It keeps what the
relay checks need: whether the local part was quoted, whether a source route
was given, and whether the domain is an address literal.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

# atext of RFC 5322 plus any non-ASCII character (RFC 6531, SMTPUTF8).
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~\-\u0080-\U0010ffff]"
_DOT_STRING = re.compile(rf"{_ATEXT}+(?:\.{_ATEXT}+)*")
_QUOTED = re.compile(r'"(?:[\x20\x21\x23-\x5b\x5d-\x7e\u0080-\U0010ffff]|\\[\x20-\x7e])*"')
_LABEL = r"[A-Za-z0-9\u0080-\U0010ffff](?:[A-Za-z0-9\-\u0080-\U0010ffff]*[A-Za-z0-9\u0080-\U0010ffff])?"
_DOMAIN = re.compile(rf"{_LABEL}(?:\.{_LABEL})*\.?")
_LITERAL = re.compile(r"\[[\x21-\x5a\x5e-\x7e]+\]")
_ROUTE = re.compile(rf"@{_DOMAIN.pattern}(?:,@{_DOMAIN.pattern})*:")
_KEYWORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9\-]*")

MAX_LOCAL_PART = 64
MAX_DOMAIN = 255
MAX_PATH = 256


class PathError(ValueError):
    """The path is not valid RFC 5321 syntax; the message explains why."""


class ParameterError(PathError):
    """The path is fine but a parameter after it is malformed or repeated."""


@dataclass
class Path:
    """A parsed reverse-path or forward-path."""

    local: str = ""
    domain: str = ""
    quoted: bool = False
    """The local part was a quoted string."""
    literal: bool = False
    """The domain is an address literal such as ``[192.0.2.1]``."""
    route: bool = False
    """A source route (``@a,@b:``) came before the mailbox; RFC 5321 says to ignore it."""
    params: dict[str, str | None] = field(default_factory=dict)

    @property
    def null(self) -> bool:
        """The null reverse-path ``<>``."""
        return not self.local and not self.domain

    @property
    def address(self) -> str:
        """The mailbox as ``local@domain``, or ``local`` alone for ``<postmaster>``."""
        if self.null:
            return ""
        return f"{self.local}@{self.domain}" if self.domain else self.local


def _split_params(text: str) -> dict[str, str | None]:
    params: dict[str, str | None] = {}
    for item in text.split():
        keyword, eq, value = item.partition("=")
        if not _KEYWORD.fullmatch(keyword) or (eq and not value):
            raise ParameterError(f"invalid parameter {item!r}")
        if keyword.upper() in params:
            raise ParameterError(f"parameter {keyword.upper()} given twice")
        params[keyword.upper()] = value if eq else None
    return params


def parse_path(arg: str, *, allow_null: bool = False, allow_bare_postmaster: bool = False) -> Path:
    """Parse ``<mailbox> [params]`` as it follows ``FROM:`` or ``TO:``.

    Args:
        arg: the text after the colon; leading spaces are tolerated, as many
            clients send ``MAIL FROM: <a@b>``.
        allow_null: accept ``<>`` (MAIL only).
        allow_bare_postmaster: accept ``<postmaster>`` with no domain (RCPT only).

    Raises:
        PathError: the syntax is invalid.
    """
    text = arg.strip()
    try:
        # aiosmtpd decodes arguments with surrogateescape, so bytes that are
        # not UTF-8 arrive as lone surrogates, which SQLite cannot store.
        text.encode()
    except UnicodeEncodeError:
        raise PathError("the path is not valid UTF-8") from None
    if not text.startswith("<"):
        # A bare address without brackets: accepted from old clients.
        mailbox, _, rest = text.partition(" ")
        path = _parse_mailbox(mailbox, allow_bare_postmaster)
        path.params = _split_params(rest)
        return path
    end = _closing_bracket(text)
    inner, rest = text[1:end], text[end + 1:]
    if rest and not rest.startswith(" "):
        raise PathError("text after '>' must be separated by a space")
    params = _split_params(rest)
    if inner == "":
        if not allow_null:
            raise PathError("the null path <> is allowed only in MAIL FROM")
        return Path(params=params)
    route = False
    match = _ROUTE.match(inner)
    if match:
        route = True
        inner = inner[match.end():]
    path = _parse_mailbox(inner, allow_bare_postmaster)
    path.route = route
    path.params = params
    return path


def _closing_bracket(text: str) -> int:
    quoted = escaped = False
    for index, char in enumerate(text):
        if escaped:
            escaped = False
        elif char == "\\" and quoted:
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == ">" and not quoted:
            return index
    raise PathError("missing '>' at the end of the path")


def _parse_mailbox(text: str, allow_bare_postmaster: bool) -> Path:
    if len(text) > MAX_PATH:
        raise PathError("path longer than 256 characters")
    if allow_bare_postmaster and text.lower() == "postmaster":
        return Path(local=text)
    if text.startswith('"'):
        match = _QUOTED.match(text)
        quoted = True
    else:
        match = _DOT_STRING.match(text)
        quoted = False
    if not match or match.end() >= len(text) or text[match.end()] != "@":
        raise PathError("expected local-part@domain")
    local, domain = text[: match.end()], text[match.end() + 1:]
    if len(local.encode()) > MAX_LOCAL_PART:
        raise PathError("local part longer than 64 octets")
    if len(domain) > MAX_DOMAIN:
        raise PathError("domain longer than 255 characters")
    if _LITERAL.fullmatch(domain):
        return Path(local=local, domain=domain, quoted=quoted, literal=True)
    if not _DOMAIN.fullmatch(domain):
        raise PathError("invalid domain")
    return Path(local=local, domain=domain.rstrip(".").lower(), quoted=quoted)


def unquote_local(local: str) -> str:
    """Return the local part's content without quotes and backslash escapes."""
    if not local.startswith('"'):
        return local
    return re.sub(r"\\(.)", r"\1", local[1:-1])


def relay_trick(path: Path) -> str | None:
    """Return why a recipient path could make a downstream server relay, or None.

    Percent hacks (``user%other@hosted``), bang paths and quoted local parts
    that hide another address are routed onward by some servers, so a hosted
    domain must not pass them on.
    """
    content = unquote_local(path.local)
    if path.literal:
        return "address literals are not accepted as recipients"
    for char, name in (("@", "an '@'"), ("%", "a '%'"), ("!", "a '!'")):
        if char in content:
            return f"local parts containing {name} are not accepted"
    return None
