"""`mailkeep mailbox`: adding, listing, passwords, APOP secrets, quotas and removal."""

from __future__ import annotations

import pytest

from helpers import Mailkeep


@pytest.fixture
def mk(mailkeep: Mailkeep) -> Mailkeep:
    mailkeep.add_account()
    mailkeep.cli_ok("domain", "add", "pop.test", "--account", "acme", "--mode", "pop3")
    return mailkeep


class TestMailboxCommands:
    def test_add_and_list__show_address_account_and_use(self, mk):
        mk.cli_ok("mailbox", "add", "Bob@POP.test", "--account", "acme", "--password-stdin",
                  input="pw\n")
        mk.cli_ok("mailbox", "add", "@pop.test", "--account", "acme", "--password-stdin",
                  input="pw\n")
        lines = mk.cli_ok("mailbox", "list").splitlines()
        assert [line.split("\t")[:2] for line in lines] == [["@pop.test", "acme"],
                                                            ["bob@pop.test", "acme"]]
        assert "apop no" in lines[1]

    def test_add_twice__fails_with_a_hint(self, mk):
        mk.cli_ok("mailbox", "add", "bob@pop.test", "--account", "acme", "--password-stdin",
                  input="pw\n")
        result = mk.cli("mailbox", "add", "bob@pop.test", "--account", "acme",
                        "--password-stdin", input="pw\n")
        assert result.returncode == 1 and "mailbox passwd" in result.stderr

    def test_add_for_a_domain_not_in_mode_pop3__warns(self, mk):
        mk.cli_ok("domain", "add", "push.test", "--account", "acme", "--mode", "smtp",
                  "--host", "127.0.0.1")
        result = mk.cli("mailbox", "add", "x@push.test", "--account", "acme",
                        "--password-stdin", input="pw\n")
        assert result.returncode == 0 and "mode smtp" in result.stderr

    def test_apop_without_options__prints_a_new_secret_once(self, mk):
        mk.cli_ok("mailbox", "add", "bob@pop.test", "--account", "acme", "--password-stdin",
                  input="pw\n")
        first = mk.cli_ok("mailbox", "apop", "bob@pop.test").strip()
        second = mk.cli_ok("mailbox", "apop", "bob@pop.test").strip()
        assert len(first) >= 20 and first != second
        assert "apop yes" in mk.cli_ok("mailbox", "list")
        mk.cli_ok("mailbox", "apop", "bob@pop.test", "--clear")
        assert "apop no" in mk.cli_ok("mailbox", "list")

    def test_quota__sets_and_shows_limits(self, mk):
        mk.cli_ok("mailbox", "add", "bob@pop.test", "--account", "acme", "--password-stdin",
                  "--max-size", "1M", input="pw\n")
        assert mk.cli_ok("mailbox", "quota", "bob@pop.test", "--max-messages", "5") == \
            "bob@pop.test\tmessages 0/5\tbytes 0/1048576\n"
        assert mk.cli_ok("mailbox", "quota", "--account", "acme", "--max-size", "2M") == \
            "account acme\tmessages 0/-\tbytes 0/2097152\n"
        assert mk.cli("mailbox", "quota").returncode == 1

    def test_passwd_and_remove__act_on_existing_mailboxes_only(self, mk):
        assert mk.cli("mailbox", "passwd", "nobody@pop.test", "--password-stdin",
                      input="x\n").returncode == 1
        mk.cli_ok("mailbox", "add", "bob@pop.test", "--account", "acme", "--password-stdin",
                  input="pw\n")
        mk.cli_ok("mailbox", "passwd", "bob@pop.test", "--password-stdin", input="new\n")
        mk.cli_ok("mailbox", "remove", "bob@pop.test")
        assert mk.cli_ok("mailbox", "list") == ""
