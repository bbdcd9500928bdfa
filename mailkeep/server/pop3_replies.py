"""POP3 replies (RFC 1939) with their response codes (RFC 2449 section 8,
RFC 3206), and the SMTP replies for recipients in ``pop3`` domains.

Handlers name an entry, and tests import the same table. The client gets
a short, generic text. Why a login failed goes to the log only, so that an
unknown user and a wrong password look the same from outside.
"""

from __future__ import annotations

GREETING = "+OK Mailkeep POP3 ready {timestamp}"
OK = "+OK"
BYE = "+OK Logging out"
USER_OK = "+OK Send PASS"
LOGGED_IN = "+OK Logged in"
STLS_GO = "+OK Begin TLS negotiation"
CAPA = "+OK Capability list follows"
AUTH_LIST = "+OK SASL mechanisms follow"
STAT = "+OK {count} {size}"
LIST_ALL = "+OK {count} messages ({size} octets)"
LIST_ONE = "+OK {number} {size}"
UIDL_ALL = "+OK Unique-ID listing follows"
UIDL_ONE = "+OK {number} {uid}"
RETR = "+OK {size} octets"
TOP = "+OK Top of message follows"
DELETED = "+OK Message {number} deleted"
RESET = "+OK {count} messages ({size} octets)"

# Login failures (RFC 3206): [AUTH] means the credentials are wrong, [SYS/TEMP]
# that a retry later may work, and [IN-USE] that another session has the mailbox.
AUTH_FAILED = "-ERR [AUTH] Authentication failed"
NEED_TLS = "-ERR [AUTH] Plaintext logins are refused before STLS; use STLS, APOP or CRAM-MD5"
LOCKED_OUT = "-ERR [SYS/TEMP] Too many failed logins from your address, try again later"
IN_USE = "-ERR [IN-USE] Mailbox is open in another session"
TEMP_FAILURE = "-ERR [SYS/TEMP] Temporary server failure, try again later"
SHUTTING_DOWN = "-ERR [SYS/TEMP] Server shutting down, try again later"
AUTH_CANCELLED = "-ERR Authentication cancelled"
AUTH_BAD_ENCODING = "-ERR Invalid base64 data"
AUTH_UNKNOWN_MECHANISM = "-ERR Unsupported authentication mechanism"
NO_APOP_TIMESTAMP = "-ERR APOP needs the timestamp of this session's greeting"

UNKNOWN_COMMAND = "-ERR Unknown command"
NOT_NOW = "-ERR Command not valid in this state"
NEED_USER = "-ERR Send USER first"
SYNTAX = "-ERR Syntax: {usage}"
NO_SUCH_MESSAGE = "-ERR No such message"
ALREADY_DELETED = "-ERR Message {number} already deleted"
MESSAGE_GONE = "-ERR Message {number} was removed from the mailbox, skip it"
TLS_ACTIVE = "-ERR TLS is already active"
TLS_UNAVAILABLE = "-ERR TLS is not available"
LINE_TOO_LONG = "-ERR Line too long"
TOO_MANY_ERRORS = "-ERR Too many errors, closing connection"
IDLE_TIMEOUT = "-ERR Disconnected for inactivity"
UPDATE_FAILED = "-ERR [SYS/TEMP] Deleting the messages failed; none were deleted"
BUSY = "-ERR [SYS/TEMP] Too many connections, try again later"

# SMTP replies at RCPT for an address of a domain in mode pop3.
SMTP_UNKNOWN_USER = "550 5.1.1 <{address}>: Recipient address rejected: no such mailbox"
SMTP_MAILBOX_FULL = "452 4.2.2 <{address}>: Mailbox full, try again later"
SMTP_LOOKUP_FAILED = "451 4.3.0 <{address}>: Temporary lookup failure, try again later"
