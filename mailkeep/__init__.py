"""Mailkeep: an MX that stores its customers' mail and hands it on by SMTP,
ETRN, ODMR or POP3."""

__version__ = "0.1.0"
