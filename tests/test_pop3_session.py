"""The POP3 state machine on its own: lines in, actions out, no sockets."""

from __future__ import annotations

import base64
import re
from array import array

import pytest

from mailkeep.server import pop3_replies as R
from mailkeep.server.pop3 import (
    IDLE_TIMEOUT, Close, Load, Login, LoginOutcome, Pop3Session, Send, StartTLS, Update,
    apop_digest, cram_md5_digest, stuff, top_of,
)
from mailkeep.store.mailboxes import Listing, retrieved_form

STAMP = "<1896.697170952@dbc.mtview.ca.us>"


def session(**options) -> Pop3Session:
    options.setdefault("tls_available", True)
    return Pop3Session(STAMP, new_challenge=lambda: "<42.1@mx.test>", **options)


def sent(actions) -> bytes:
    return b"".join(a.data for a in actions if isinstance(a, Send))


def listing(*sizes: int) -> Listing:
    count = len(sizes)
    return Listing(array("q", range(101, 101 + count)), array("q", range(1, count + 1)),
                   array("q", sizes))


def logged_in(*sizes: int, **options) -> Pop3Session:
    s = session(**options)
    [login] = s.receive(b"APOP bob@pop.test " + b"0" * 32)
    assert isinstance(login, Login)
    s.login_result(LoginOutcome(address="bob@pop.test", listing=listing(*sizes),
                                uid_validity="ab12", expire_days=30))
    return s


MESSAGE = retrieved_form("a@x.example", "bob@pop.test",
                         b"Subject: s\r\n\r\nline 1\r\n.dot line\r\nline 3\r\n")


class TestHelpers:
    def test_apop_digest__matches_rfc_1939_example(self):
        assert apop_digest(STAMP, "tanstaaf") == "c4c9334bac560ecc979e58001b3e22fb"

    def test_cram_md5_digest__matches_rfc_2195_example(self):
        challenge = "<1896.697170952@postoffice.reston.mci.net>"
        assert cram_md5_digest(challenge, "tanstaaftanstaaf") == "b913a602c7eda7a495b4e6e7334d3890"

    def test_stuff__doubles_leading_dots_and_adds_terminator(self):
        assert stuff(b".a\r\nb\r\n..c\r\n") == b"..a\r\nb\r\n...c\r\n.\r\n"

    def test_top_of__zero_lines_gives_header_and_blank_line(self):
        assert top_of(b"A: 1\r\nB: 2\r\n\r\nx\r\ny\r\n", 0) == b"A: 1\r\nB: 2\r\n\r\n"

    def test_top_of__more_lines_than_body_gives_whole_message(self):
        data = b"A: 1\r\n\r\nx\r\ny\r\n"
        assert top_of(data, 99999999) == data
        assert top_of(data, 1) == b"A: 1\r\n\r\nx\r\n"

    def test_retrieved_form__adds_envelope_headers_and_final_crlf(self):
        data = retrieved_form("", "carol@pop.test", b"Subject: x\r\n\r\nno end")
        assert data.startswith(b"Return-Path: <>\r\nDelivered-To: carol@pop.test\r\n"
                               b"X-Original-To: carol@pop.test\r\n")
        assert data.endswith(b"no end\r\n")

    def test_retrieved_form__turns_bare_lf_into_crlf(self):
        data = retrieved_form("a@b", "c@d", b"A: 1\n\nx\ry\r\n")
        assert data.count(b"\n") == data.count(b"\r\n") == data.count(b"\r")

    def test_idle_timeout__is_at_least_ten_minutes(self):
        assert IDLE_TIMEOUT >= 600


class TestAuthorization:
    def test_greeting__carries_the_apop_timestamp(self):
        assert session().greeting() == f"+OK Mailkeep POP3 ready {STAMP}\r\n".encode()

    def test_capa_before_tls__offers_stls_and_cram_md5_but_not_user(self):
        lines = sent(session().receive(b"CAPA")).decode().split("\r\n")
        assert lines[0].startswith("+OK")
        assert lines[-2:] == [".", ""]
        for cap in ("TOP", "UIDL", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING", "STLS",
                    "EXPIRE 30 USER", "IMPLEMENTATION Mailkeep", "SASL CRAM-MD5"):
            assert cap in lines
        assert "USER" not in lines

    def test_capa_inside_tls__offers_user_and_plain_but_not_stls(self):
        lines = sent(session(tls_active=True).receive(b"CAPA")).decode().split("\r\n")
        assert "USER" in lines
        assert "SASL PLAIN LOGIN" in lines
        assert "STLS" not in lines

    def test_user_before_tls__is_refused_with_auth_code(self):
        assert sent(session().receive(b"USER bob@pop.test")) == R.NEED_TLS.encode() + b"\r\n"

    def test_user_before_tls__is_allowed_when_config_allows_plaintext(self):
        s = session(allow_plaintext=True)
        assert sent(s.receive(b"USER bob")).startswith(b"+OK")
        [login] = s.receive(b"PASS two words ")
        assert login == Login("USER", "bob", "two words ")

    def test_auth_plain_before_tls__is_refused(self):
        assert sent(session().receive(b"AUTH PLAIN AGJvYgBwdw==")).startswith(b"-ERR [AUTH]")

    def test_stls__replies_then_asks_for_handshake_and_forgets_user(self):
        s = session(allow_plaintext=True)
        s.receive(b"USER bob")
        actions = s.receive(b"STLS")
        assert sent(actions) == R.STLS_GO.encode() + b"\r\n"
        assert isinstance(actions[-1], StartTLS)
        s.tls_started()
        assert sent(s.receive(b"PASS x")) == R.NEED_USER.encode() + b"\r\n"
        assert sent(s.receive(b"STLS")).startswith(b"-ERR")

    def test_stls_without_certificate__is_refused(self):
        assert sent(session(tls_available=False).receive(b"STLS")).startswith(b"-ERR")

    def test_apop__asks_to_check_the_digest_over_the_greeting_timestamp(self):
        digest = apop_digest(STAMP, "secret")
        [login] = session().receive(f"apop bob@pop.test {digest.upper()}".encode())
        assert login == Login("APOP", "bob@pop.test", digest, STAMP)

    def test_apop_with_malformed_digest__is_a_syntax_error(self):
        assert sent(session().receive(b"APOP bob@pop.test xyz")).startswith(b"-ERR Syntax")

    def test_auth_plain_with_initial_response__asks_to_check_password(self):
        s = session(tls_active=True)
        token = base64.b64encode(b"\0bob@pop.test\0pw").decode()
        assert s.receive(f"AUTH PLAIN {token}".encode()) == [Login("PLAIN", "bob@pop.test", "pw")]

    def test_auth_plain_for_another_user__fails_without_a_lookup(self):
        token = base64.b64encode(b"alice\0bob\0pw").decode()
        actions = session(tls_active=True).receive(f"AUTH PLAIN {token}".encode())
        assert sent(actions) == R.AUTH_FAILED.encode() + b"\r\n"

    def test_auth_login__asks_for_user_then_password(self):
        s = session(tls_active=True)
        assert sent(s.receive(b"AUTH LOGIN")) == b"+ VXNlcm5hbWU6\r\n"
        assert sent(s.receive(base64.b64encode(b"bob"))) == b"+ UGFzc3dvcmQ6\r\n"
        assert s.receive(base64.b64encode(b"pw")) == [Login("LOGIN", "bob", "pw")]

    def test_auth_cram_md5__sends_a_challenge_and_reads_name_and_digest(self):
        s = session()
        challenge = base64.b64decode(sent(s.receive(b"AUTH CRAM-MD5"))[2:]).decode()
        assert challenge == "<42.1@mx.test>"
        digest = cram_md5_digest(challenge, "secret")
        response = base64.b64encode(f"bob@pop.test {digest}".encode())
        assert s.receive(response) == [Login("CRAM-MD5", "bob@pop.test", digest, challenge)]

    def test_auth_cancelled_with_star__returns_to_commands(self):
        s = session()
        s.receive(b"AUTH CRAM-MD5")
        assert sent(s.receive(b"*")) == R.AUTH_CANCELLED.encode() + b"\r\n"
        assert sent(s.receive(b"NOOP")) == R.NOT_NOW.encode() + b"\r\n"

    def test_auth_without_mechanism__lists_the_mechanisms(self):
        assert sent(session().receive(b"AUTH")) == b"+OK SASL mechanisms follow\r\nCRAM-MD5\r\n.\r\n"

    def test_failed_login__keeps_authorization_state_and_closes_after_three(self):
        s = session()
        for attempt in range(3):
            s.receive(b"APOP bob " + b"1" * 32)
            actions = s.login_result(LoginOutcome(R.AUTH_FAILED))
            assert sent(actions).startswith(b"-ERR [AUTH]")
        assert isinstance(actions[-1], Close)
        assert s.state == "authorization"

    def test_transaction_command_before_login__is_refused(self):
        assert sent(session().receive(b"STAT")) == R.NOT_NOW.encode() + b"\r\n"

    def test_unknown_command__is_refused_and_many_close_the_connection(self):
        s = session()
        for _ in range(20):
            assert sent(s.receive(b"XYZZY")) == R.UNKNOWN_COMMAND.encode() + b"\r\n"
        actions = s.receive(b"XYZZY")
        assert isinstance(actions[-1], Close)

    def test_quit_in_authorization__closes_without_update(self):
        actions = session().receive(b"QUIT")
        assert sent(actions) == R.BYE.encode() + b"\r\n"
        assert isinstance(actions[-1], Close)


class TestTransaction:
    def test_stat_list_uidl__count_every_message(self):
        s = logged_in(100, 200, 300)
        assert sent(s.receive(b"STAT")) == b"+OK 3 600\r\n"
        assert sent(s.receive(b"LIST")) == b"+OK 3 messages (600 octets)\r\n1 100\r\n2 200\r\n3 300\r\n.\r\n"
        assert sent(s.receive(b"LIST 2")) == b"+OK 2 200\r\n"
        assert sent(s.receive(b"UIDL")) == b"+OK Unique-ID listing follows\r\n1 ab12.1\r\n2 ab12.2\r\n3 ab12.3\r\n.\r\n"
        assert sent(s.receive(b"UIDL 3")) == b"+OK 3 ab12.3\r\n"

    @pytest.mark.parametrize("arg", [b"0", b"4", b"-1", b"+1", b"x", b"1x", b""])
    def test_retr_of_bad_number__says_no_such_message(self, arg):
        s = logged_in(100, 200, 300)
        reply = sent(s.receive(b"RETR " + arg))
        assert reply.startswith(b"-ERR"), reply

    def test_dele__hides_message_until_rset(self):
        s = logged_in(100, 200, 300)
        assert sent(s.receive(b"DELE 2")) == b"+OK Message 2 deleted\r\n"
        assert sent(s.receive(b"DELE 2")) == b"-ERR Message 2 already deleted\r\n"
        assert sent(s.receive(b"STAT")) == b"+OK 2 400\r\n"
        assert b"\r\n2 " not in sent(s.receive(b"LIST"))
        assert sent(s.receive(b"RETR 2")).startswith(b"-ERR")
        assert sent(s.receive(b"RSET")) == b"+OK 3 messages (600 octets)\r\n"
        assert sent(s.receive(b"STAT")) == b"+OK 3 600\r\n"

    def test_retr__loads_ahead_then_sends_exact_size_with_stuffing(self):
        s = logged_in(len(MESSAGE), len(MESSAGE), len(MESSAGE))
        [load] = s.receive(b"RETR 1")
        assert isinstance(load, Load)
        assert load.entry_ids == [101, 102, 103]
        reply = sent(s.loaded({101: MESSAGE, 102: MESSAGE, 103: MESSAGE}))
        head, _, body = reply.partition(b"\r\n")
        assert head == f"+OK {len(MESSAGE)} octets".encode()
        assert b"\r\n..dot line\r\n" in body
        assert body.endswith(b"line 3\r\n.\r\n")
        unstuffed = body[:-3].replace(b"\r\n..", b"\r\n.")
        assert len(unstuffed) == len(MESSAGE)
        assert sent(s.receive(b"RETR 2")).startswith(f"+OK {len(MESSAGE)}".encode())

    def test_retr_of_message_removed_meanwhile__is_refused(self):
        s = logged_in(50)
        s.receive(b"RETR 1")
        assert sent(s.loaded({})) == R.MESSAGE_GONE.format(number=1).encode() + b"\r\n"

    def test_top__sends_header_and_requested_lines(self):
        s = logged_in(len(MESSAGE))
        s.receive(b"TOP 1 1")
        body = sent(s.loaded({101: MESSAGE})).partition(b"\r\n")[2]
        assert body.endswith(b"\r\n\r\nline 1\r\n.\r\n")
        assert sent(s.receive(b"TOP 1")).startswith(b"-ERR Syntax")

    def test_quit_with_deletions__asks_for_one_update_of_the_marked_entries(self):
        s = logged_in(1, 2, 3)
        s.receive(b"DELE 1")
        s.receive(b"DELE 3")
        assert s.receive(b"QUIT") == [Update([101, 103])]
        actions = s.updated(True)
        assert sent(actions) == R.BYE.encode() + b"\r\n"
        assert isinstance(actions[-1], Close)

    def test_quit_after_failed_update__says_nothing_was_deleted(self):
        s = logged_in(1)
        s.receive(b"DELE 1")
        s.receive(b"QUIT")
        assert sent(s.updated(False)).startswith(b"-ERR [SYS/TEMP]")

    def test_quit_without_deletions__closes_without_update(self):
        s = logged_in(1)
        actions = s.receive(b"QUIT")
        assert not any(isinstance(a, Update) for a in actions)

    def test_capa_after_login__states_the_domains_retention(self):
        lines = sent(logged_in(1).receive(b"CAPA")).decode().split("\r\n")
        assert "EXPIRE 30" in lines
        assert "STLS" not in lines

    def test_login_commands_after_login__are_refused(self):
        s = logged_in(1)
        for line in (b"USER x", b"APOP x " + b"0" * 32, b"STLS", b"AUTH PLAIN"):
            assert sent(s.receive(line)) == R.NOT_NOW.encode() + b"\r\n"

    def test_listing_of_100000_messages__is_built_quickly(self):
        s = logged_in(*([4096] * 100_000))
        reply = sent(s.receive(b"UIDL"))
        assert reply.count(b"\r\n") == 100_002
        assert re.match(rb"\+OK 100000 409600000\r\n", sent(s.receive(b"STAT")))
