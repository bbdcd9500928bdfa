"""A domain's recipient policy: only listed local parts are accepted at RCPT."""

from __future__ import annotations

import smtplib

import pytest

from helpers import Mailkeep, Sink, wait_until

pytestmark = pytest.mark.timeout(60)


def rcpt_code(port: int, address: str) -> int:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
        smtp.ehlo("client.example")
        smtp.mail("a@sender.example")
        code, _text = smtp.rcpt(address)
        return code


def test_policy_rejects_unlisted_local_part(mx: Mailkeep, sink: Sink) -> None:
    mx.cli_ok("domain", "set", "customer.test", "--recipients", "Alice, bob")
    shown = mx.cli_ok("domain", "show", "customer.test")
    assert "recipients: alice,bob" in shown
    wait_until(lambda: rcpt_code(mx.smtp_port, "carol@customer.test") == 550,
               message="the running server to load the policy")
    assert rcpt_code(mx.smtp_port, "ALICE@customer.test") == 250
    assert rcpt_code(mx.smtp_port, "bob@customer.test") == 250
    assert rcpt_code(mx.smtp_port, "postmaster@customer.test") == 250


def test_policy_reply_says_no_such_user(mx: Mailkeep) -> None:
    mx.cli_ok("domain", "set", "customer.test", "--recipients", "alice")
    with smtplib.SMTP("127.0.0.1", mx.smtp_port, timeout=10) as smtp:
        smtp.ehlo("client.example")
        smtp.mail("a@sender.example")
        wait_until(lambda: smtp.rcpt("carol@customer.test")[0] == 550, message="policy loaded")
        code, text = smtp.rcpt("carol@customer.test")
    assert code == 550
    assert text.startswith(b"5.1.1")


def test_accept_all_clears_policy(mx: Mailkeep) -> None:
    mx.cli_ok("domain", "set", "customer.test", "--recipients", "alice")
    mx.cli_ok("domain", "set", "customer.test", "--accept-all")
    assert "(any local part)" in mx.cli_ok("domain", "show", "customer.test")
    wait_until(lambda: rcpt_code(mx.smtp_port, "carol@customer.test") == 250, message="policy cleared")


def test_policy_rejects_address_in_local_part(mailkeep: Mailkeep) -> None:
    mailkeep.add_account()
    result = mailkeep.cli("domain", "add", "x.test", "--account", "acme", "--mode", "etrn",
                          "--recipients", "a@b")
    assert result.returncode == 1
    assert "invalid recipient" in result.stderr
