"""ETRN (RFC 1985): parsing the request and choosing its reply.

The argument takes one of four forms:

* ``example.org``: that domain's held mail;
* ``@example.org``: the domain and every hosted subdomain of it;
* ``#example.org``: the queue of that name; Mailkeep keeps one queue per
  hosted domain, so the name is a hosted domain;
* ``account;password``: Mailkeep's own form for customers on dynamic
  addresses. Every held domain of the account is delivered, to the address
  the request came from unless the domain names a host.

RFC 1985 section 5 assigns the replies: 250 queuing started, 251 no messages
waiting, 252 pending messages started, 253 with the number of pending
messages, 458 unable to queue, 459 node not allowed, 500 and 501 syntax.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_NODE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?)*\.?")
_ACCOUNT = re.compile(r"[^\s;:]+")

STARTED = "250 2.0.0 OK, queuing for node {node} started"
NO_MESSAGES = "251 2.0.0 OK, no messages waiting for node {node}"
PENDING = "252 2.0.0 OK, pending messages for node {node} started"
PENDING_COUNT = "253 2.0.0 OK, {count} pending messages for node {node} started"
UNABLE = "458 4.3.0 Unable to queue messages for node {node}"
NOT_ALLOWED = "459 4.7.1 Node {node} not allowed: {reason}"
SYNTAX = "500 5.5.2 Syntax Error"
SYNTAX_ARGS = "501 5.5.4 Syntax Error in Parameters: use ETRN domain, @domain, #queue or account;password"
NEED_HELO = "503 5.5.1 Send HELO or EHLO first"
IN_TRANSACTION = "503 5.5.1 ETRN is not allowed inside a mail transaction; send RSET first"

REASON_NOT_HOSTED = "not a domain hosted here"
REASON_NO_HOST = ("no server is configured for it; send ETRN account;password from the server "
                  "that takes the mail, or ask the provider to set the domain's host")
REASON_POP3 = "its mail is collected over POP3"
REASON_AUTH = "authentication failed"
REASON_LOCKED = "too many failed logins from your address; try again in {wait}"
REASON_NOT_OWNER = "it does not belong to the authenticated account"


class ETRNSyntaxError(ValueError):
    """The argument matches none of the forms."""


@dataclass(frozen=True)
class Request:
    """A parsed ETRN argument.

    Attributes:
        form: ``domain``, ``subdomains``, ``queue`` or ``account``.
        node: the domain or queue name, or the account name for ``account``.
        password: the password of the ``account`` form, else empty.
    """

    form: str
    node: str
    password: str = ""

    @property
    def shown(self) -> str:
        """The argument as logs and replies may show it: never the password."""
        if self.form == "account":
            return f"account={self.node};password=<hidden>"
        prefix = {"subdomains": "@", "queue": "#"}.get(self.form, "")
        return prefix + self.node


def parse(arg: str | None) -> Request:
    """Parse the ETRN argument.

    Raises:
        ETRNSyntaxError: the argument is missing or matches no form.
    """
    if not arg or not arg.strip():
        raise ETRNSyntaxError("missing argument")
    text = arg.strip()
    try:
        text.encode()
    except UnicodeEncodeError:  # bytes that are not UTF-8 reach us as lone surrogates
        raise ETRNSyntaxError("not valid UTF-8") from None
    if ";" in text:
        account, _, password = text.partition(";")
        if not _ACCOUNT.fullmatch(account) or not password:
            raise ETRNSyntaxError("expected account;password")
        return Request("account", account, password)
    if " " in text:
        raise ETRNSyntaxError("one argument only")
    form = "domain"
    if text[0] == "@":
        form, text = "subdomains", text[1:]
    elif text[0] == "#":
        form, text = "queue", text[1:]
    if not _NODE.fullmatch(text):
        raise ETRNSyntaxError("invalid domain")
    return Request(form, text.rstrip(".").lower())


def wait_text(seconds: float) -> str:
    """Say how long to wait, in whole minutes or, below one, seconds: ``5 minutes``, ``30 seconds``."""
    if seconds >= 60:
        minutes = round(seconds / 60)
        return f"{minutes} minute{'s' if minutes != 1 else ''}"
    whole = max(1, round(seconds))
    return f"{whole} second{'s' if whole != 1 else ''}"


def count_reply(node: str, count: int) -> str:
    """Return 251 when nothing waits, else 253 with the number of messages."""
    if count <= 0:
        return NO_MESSAGES.format(node=node)
    return PENDING_COUNT.format(node=node, count=count)
