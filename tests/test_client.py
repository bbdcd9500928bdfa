"""Tests for the delivery client in ``mailkeep.server.client``.

Most tests give the client an in-memory peer: an ``asyncio.StreamReader``
fed with the server's replies in advance, and a writer that records every
write. Because each write is recorded separately, a test can tell a
pipelined batch from commands sent one at a time.
"""

from __future__ import annotations

import asyncio

import pytest

from mailkeep.server.client import Reply, SMTPClient, SMTPClientError, stuff

SENDER = "ann@example.org"
GREETING = "220 mx.example.net ESMTP ready\r\n"
MESSAGE = b"Subject: test\r\n\r\nhello\r\n"
MESSAGE_8BIT = "Subject: test\r\n\r\nGrüße\r\n".encode()


class RecordingWriter:
    """Stands in for ``asyncio.StreamWriter`` and keeps each write apart."""

    def __init__(self):
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))

    async def drain(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    @property
    def lines(self) -> list[bytes]:
        """Everything written, split into CRLF-terminated lines."""
        return b"".join(self.writes).splitlines(keepends=True)


def peer(*replies: str, timeout: float = 1.0) -> tuple[SMTPClient, RecordingWriter]:
    """Make a client whose server will send ``replies``, in order, then nothing."""
    reader = asyncio.StreamReader()
    for reply in replies:
        reader.feed_data(reply.encode())
    writer = RecordingWriter()
    return SMTPClient(reader, writer, timeout=timeout), writer


def ehlo_reply(*extensions: str) -> str:
    lines = ["mx.example.net greets client.example", *extensions]
    return "".join(
        f"250{'-' if index < len(lines) - 1 else ' '}{line}\r\n" for index, line in enumerate(lines)
    )


async def session(*extensions: str, replies: tuple[str, ...] = ()):
    """Return a client past the greeting and EHLO, with the EHLO write cleared."""
    client, writer = peer(GREETING, ehlo_reply(*extensions), *replies)
    await client.greeting()
    await client.hello("client.example")
    writer.writes.clear()
    return client, writer


class TestReadReply:
    async def test_single_line__gives_code_and_text(self):
        client, _ = peer("250 2.0.0 OK\r\n")
        reply = await client.read_reply()
        assert reply.code == 250
        assert reply.lines == ["2.0.0 OK"]

    async def test_multi_line__collects_every_line(self):
        client, _ = peer("250-first\r\n250-SIZE 1000\r\n250 last\r\n")
        reply = await client.read_reply()
        assert reply.code == 250
        assert reply.lines == ["first", "SIZE 1000", "last"]

    async def test_multi_line__stops_at_final_line(self):
        client, _ = peer("250-first\r\n250 last\r\n354 next\r\n")
        await client.read_reply()
        assert (await client.read_reply()).code == 354

    async def test_code_without_text__is_accepted(self):
        client, _ = peer("250\r\n")
        reply = await client.read_reply()
        assert reply.code == 250
        assert reply.lines == [""]

    async def test_lf_only_line_end__is_accepted(self):
        client, _ = peer("250 OK\n")
        assert (await client.read_reply()).code == 250

    @pytest.mark.parametrize(
        "line", ["hello\r\n", "25\r\n", "250x OK\r\n", "2500 OK\r\n", "\r\n", "abc OK\r\n"]
    )
    async def test_invalid_reply_line__raises(self, line):
        client, _ = peer(line)
        with pytest.raises(SMTPClientError, match="invalid reply line"):
            await client.read_reply()

    async def test_code_change_within_reply__raises(self):
        client, _ = peer("250-first\r\n251 last\r\n")
        with pytest.raises(SMTPClientError, match="reply code changed"):
            await client.read_reply()

    async def test_connection_closed_mid_reply__raises(self):
        client, _ = peer("250-first\r\n")
        client.reader.feed_eof()
        with pytest.raises(SMTPClientError, match="lost connection"):
            await client.read_reply()

    async def test_no_reply_in_time__raises(self):
        client, _ = peer(timeout=0.05)
        with pytest.raises(SMTPClientError, match="timed out"):
            await client.read_reply()

    async def test_reply_over_100_lines__raises(self):
        client, _ = peer("250-x\r\n" * 101 + "250 end\r\n")
        with pytest.raises(SMTPClientError, match="longer than 100 lines"):
            await client.read_reply()

    async def test_reply_of_exactly_100_lines__is_accepted(self):
        client, _ = peer("250-x\r\n" * 99 + "250 end\r\n")
        assert len((await client.read_reply()).lines) == 100


class TestReply:
    def test_text__joins_code_and_lines(self):
        assert Reply(250, ["2.0.0 Ok:", "queued"]).text == "250 2.0.0 Ok: queued"

    def test_enhanced_code__is_taken_from_first_line(self):
        assert Reply(550, ["5.1.1 no such user"]).enhanced == "5.1.1"

    def test_missing_enhanced_code__is_derived_from_reply_code(self):
        assert Reply(451, ["try later"]).enhanced == "4.0.0"

    def test_enhanced_code_of_other_class__is_ignored(self):
        assert Reply(250, ["5.1.1 confused server"]).enhanced == "2.0.0"

    @pytest.mark.parametrize(("code", "ok", "temporary"), [
        (250, True, False), (354, False, False), (421, False, True), (550, False, False),
    ])
    def test_reply_classes(self, code, ok, temporary):
        reply = Reply(code, [""])
        assert reply.ok is ok
        assert reply.temporary is temporary


class TestGreetingAndHello:
    async def test_greeting__records_peer_name(self):
        client, _ = peer(GREETING)
        await client.greeting()
        assert client.peer_name == "mx.example.net"

    async def test_greeting_other_than_220__raises_with_code(self):
        client, _ = peer("554 5.3.2 go away\r\n")
        with pytest.raises(SMTPClientError) as info:
            await client.greeting()
        assert info.value.code == 554

    async def test_ehlo__records_extensions_with_parameters(self):
        client, writer = peer(ehlo_reply("SIZE 10240000", "8BITMIME", "PIPELINING"))
        await client.hello("client.example")
        assert writer.writes == [b"EHLO client.example\r\n"]
        assert client.extensions == {"SIZE": "10240000", "8BITMIME": "", "PIPELINING": ""}

    async def test_ehlo_keywords__are_upper_cased(self):
        client, _ = peer(ehlo_reply("size 1000", "pipelining"))
        await client.hello("client.example")
        assert set(client.extensions) == {"SIZE", "PIPELINING"}

    async def test_ehlo_rejected__falls_back_to_helo(self):
        client, writer = peer("500 5.5.1 unknown command\r\n", "250 mx.example.net\r\n")
        await client.hello("client.example")
        assert writer.writes == [b"EHLO client.example\r\n", b"HELO client.example\r\n"]
        assert client.extensions == {}

    async def test_helo_rejected_too__raises_with_code(self):
        client, _ = peer("500 5.5.1 unknown\r\n", "550 5.7.1 not you\r\n")
        with pytest.raises(SMTPClientError) as info:
            await client.hello("client.example")
        assert info.value.code == 550

    async def test_starttls_not_offered__leaves_session_plain(self):
        client, writer = await session("PIPELINING")
        assert await client.starttls(None, "mx.example.net") is False
        assert writer.writes == []


class TestPipelinedSend:
    async def test_envelope__goes_out_in_one_write(self):
        client, writer = await session("PIPELINING", replies=(
            "250 2.1.0 OK\r\n", "250 2.1.5 OK\r\n", "250 2.1.5 OK\r\n",
            "354 go ahead\r\n", "250 2.0.0 queued\r\n",
        ))
        await client.send(SENDER, ["bob@example.net", "cy@example.net"], MESSAGE)
        assert writer.writes[0] == (
            b"MAIL FROM:<ann@example.org>\r\n"
            b"RCPT TO:<bob@example.net>\r\n"
            b"RCPT TO:<cy@example.net>\r\n"
            b"DATA\r\n"
        )

    async def test_content__is_sent_stuffed_after_354(self):
        content = b"Subject: dots\r\n\r\n.leading dot\r\n"
        client, writer = await session("PIPELINING", replies=(
            "250 OK\r\n", "250 OK\r\n", "354 go ahead\r\n", "250 queued\r\n",
        ))
        await client.send(SENDER, ["bob@example.net"], content)
        assert writer.writes[1] == stuff(content)
        assert len(writer.writes) == 2

    async def test_one_rcpt_rejected__gives_per_recipient_results(self):
        client, _ = await session("PIPELINING", replies=(
            "250 2.1.0 OK\r\n", "550 5.1.1 no such user\r\n", "250 2.1.5 OK\r\n",
            "354 go ahead\r\n", "250 2.0.0 queued as X\r\n",
        ))
        result = await client.send(SENDER, ["nobody@example.net", "bob@example.net"], MESSAGE)
        assert result.recipients["nobody@example.net"].code == 550
        assert result.recipients["bob@example.net"].code == 250
        assert result.recipients["bob@example.net"].lines == ["2.0.0 queued as X"]

    async def test_accepted_recipients__get_the_data_reply(self):
        client, _ = await session("PIPELINING", replies=(
            "250 OK\r\n", "250 OK\r\n", "250 OK\r\n", "354 go ahead\r\n",
            "451 4.3.0 disk full\r\n",
        ))
        result = await client.send(SENDER, ["bob@example.net", "cy@example.net"], MESSAGE)
        assert result.recipients["bob@example.net"].code == 451
        assert result.recipients["cy@example.net"].code == 451

    async def test_delivered_message__is_counted(self):
        client, _ = await session("PIPELINING", replies=(
            "250 OK\r\n", "250 OK\r\n", "354 go ahead\r\n", "250 queued\r\n",
        ))
        await client.send(SENDER, ["bob@example.net"], MESSAGE)
        assert client.messages_sent == 1

    async def test_mail_rejected__gives_every_recipient_the_mail_reply(self):
        client, writer = await session("PIPELINING", replies=(
            "550 5.7.1 sender rejected\r\n", "503 5.5.1 need MAIL\r\n",
            "503 5.5.1 need MAIL\r\n", "503 5.5.1 need MAIL\r\n", "250 reset\r\n",
        ))
        result = await client.send(SENDER, ["bob@example.net", "cy@example.net"], MESSAGE)
        assert result.recipients["bob@example.net"].code == 550
        assert result.recipients["cy@example.net"].code == 550
        assert writer.writes[-1] == b"RSET\r\n"

    async def test_every_rcpt_rejected__sends_no_content_and_resets(self):
        client, writer = await session("PIPELINING", replies=(
            "250 OK\r\n", "550 5.1.1 no such user\r\n", "554 5.5.1 no valid recipients\r\n",
            "250 reset\r\n",
        ))
        result = await client.send(SENDER, ["nobody@example.net"], MESSAGE)
        assert result.recipients["nobody@example.net"].code == 550
        assert writer.writes[1:] == [b"RSET\r\n"]
        assert client.messages_sent == 0

    async def test_354_without_valid_recipients__closes_data_empty(self):
        # Some servers open DATA although they rejected every RCPT. The client
        # must then end DATA at once, without the message.
        client, writer = await session("PIPELINING", replies=(
            "250 OK\r\n", "550 5.1.1 no such user\r\n", "354 go ahead\r\n",
            "554 5.5.1 empty message\r\n", "250 reset\r\n",
        ))
        result = await client.send(SENDER, ["nobody@example.net"], MESSAGE)
        assert writer.writes[1] == b".\r\n"
        assert MESSAGE not in b"".join(writer.writes)
        assert result.recipients["nobody@example.net"].code == 550


class TestSequentialSend:
    async def test_without_pipelining__each_command_is_its_own_write(self):
        client, writer = await session(replies=(
            "250 OK\r\n", "250 OK\r\n", "250 OK\r\n", "354 go ahead\r\n", "250 queued\r\n",
        ))
        await client.send(SENDER, ["bob@example.net", "cy@example.net"], MESSAGE)
        assert writer.writes[:4] == [
            b"MAIL FROM:<ann@example.org>\r\n",
            b"RCPT TO:<bob@example.net>\r\n",
            b"RCPT TO:<cy@example.net>\r\n",
            b"DATA\r\n",
        ]

    async def test_one_rcpt_rejected__gives_per_recipient_results(self):
        client, _ = await session(replies=(
            "250 OK\r\n", "250 2.1.5 OK\r\n", "550 5.1.1 no such user\r\n",
            "354 go ahead\r\n", "250 2.0.0 queued\r\n",
        ))
        result = await client.send(SENDER, ["bob@example.net", "nobody@example.net"], MESSAGE)
        assert result.recipients["bob@example.net"].code == 250
        assert result.recipients["nobody@example.net"].code == 550

    async def test_mail_rejected__sends_no_rcpt(self):
        client, writer = await session(replies=("550 5.7.1 sender rejected\r\n", "250 reset\r\n"))
        result = await client.send(SENDER, ["bob@example.net"], MESSAGE)
        assert writer.writes == [b"MAIL FROM:<ann@example.org>\r\n", b"RSET\r\n"]
        assert result.recipients["bob@example.net"].code == 550

    async def test_every_rcpt_rejected__sends_no_data(self):
        client, writer = await session(replies=(
            "250 OK\r\n", "550 5.1.1 no such user\r\n", "250 reset\r\n",
        ))
        await client.send(SENDER, ["nobody@example.net"], MESSAGE)
        assert b"DATA\r\n" not in writer.writes
        assert writer.writes[-1] == b"RSET\r\n"

    async def test_data_refused__defers_accepted_recipients(self):
        client, _ = await session(replies=(
            "250 OK\r\n", "250 OK\r\n", "451 4.3.0 try later\r\n", "250 reset\r\n",
        ))
        result = await client.send(SENDER, ["bob@example.net"], MESSAGE)
        assert result.recipients["bob@example.net"].code == 451

    async def test_failed_reset__raises(self):
        client, _ = await session(replies=("550 5.7.1 rejected\r\n", "500 confused\r\n"))
        with pytest.raises(SMTPClientError, match="RSET"):
            await client.send(SENDER, ["bob@example.net"], MESSAGE)

    async def test_connection_lost_before_data_reply__raises(self):
        client, _ = await session(replies=("250 OK\r\n", "250 OK\r\n", "354 go ahead\r\n"))
        client.reader.feed_eof()
        with pytest.raises(SMTPClientError, match="lost connection"):
            await client.send(SENDER, ["bob@example.net"], MESSAGE)


ACCEPT_ONE = ("250 OK\r\n", "250 OK\r\n", "354 go ahead\r\n", "250 queued\r\n")


class TestMailParameters:
    async def test_size_offered__sends_size_of_message(self):
        client, writer = await session("SIZE 10240000", replies=ACCEPT_ONE)
        await client.send(SENDER, ["bob@example.net"], MESSAGE)
        assert writer.writes[0] == f"MAIL FROM:<{SENDER}> SIZE={len(MESSAGE)}\r\n".encode()

    async def test_size_not_offered__sends_no_size(self):
        client, writer = await session(replies=ACCEPT_ONE)
        await client.send(SENDER, ["bob@example.net"], MESSAGE)
        assert b"SIZE=" not in writer.writes[0]

    async def test_8bit_body_with_8bitmime_offered__sends_body_8bitmime(self):
        client, writer = await session("8BITMIME", replies=ACCEPT_ONE)
        await client.send(SENDER, ["bob@example.net"], MESSAGE_8BIT, body_8bit=True)
        assert writer.writes[0] == f"MAIL FROM:<{SENDER}> BODY=8BITMIME\r\n".encode()

    async def test_7bit_body_with_8bitmime_offered__sends_no_body(self):
        client, writer = await session("8BITMIME", replies=ACCEPT_ONE)
        await client.send(SENDER, ["bob@example.net"], MESSAGE, body_8bit=False)
        assert b"BODY=" not in writer.writes[0]

    async def test_8bit_body_without_8bitmime__sends_no_body(self):
        client, writer = await session(replies=ACCEPT_ONE)
        await client.send(SENDER, ["bob@example.net"], MESSAGE_8BIT, body_8bit=True)
        assert b"BODY=" not in writer.writes[0]

    async def test_utf8_envelope_with_smtputf8_offered__sends_smtputf8(self):
        client, writer = await session("SMTPUTF8", replies=ACCEPT_ONE)
        await client.send(SENDER, ["jörg@example.net"], MESSAGE, smtputf8=True)
        assert writer.writes[0].endswith(b" SMTPUTF8\r\n")
        assert writer.writes[1] == "RCPT TO:<jörg@example.net>\r\n".encode()

    async def test_smtputf8_not_offered__sends_no_smtputf8(self):
        client, writer = await session(replies=ACCEPT_ONE)
        await client.send(SENDER, ["bob@example.net"], MESSAGE, smtputf8=True)
        assert b"SMTPUTF8" not in writer.writes[0]

    async def test_every_offered_parameter__is_sent_together(self):
        client, writer = await session("SIZE", "8BITMIME", "PIPELINING", replies=ACCEPT_ONE)
        await client.send(SENDER, ["bob@example.net"], MESSAGE_8BIT, body_8bit=True)
        first_line = writer.lines[0]
        assert first_line == (
            f"MAIL FROM:<{SENDER}> SIZE={len(MESSAGE_8BIT)} BODY=8BITMIME\r\n".encode()
        )


class TestQuit:
    async def test_quit__sends_quit_and_closes(self):
        client, writer = await session(replies=("221 2.0.0 bye\r\n",))
        await client.quit()
        assert writer.writes == [b"QUIT\r\n"]
        assert writer.closed

    async def test_quit_on_dead_connection__still_closes(self):
        client, writer = await session()
        client.reader.feed_eof()
        await client.quit()
        assert writer.closed


async def test_send_over_loopback__reaches_server():
    """The same exchange over a real socket, with a scripted server on 127.0.0.1."""
    received: list[bytes] = []

    async def scripted_server(reader, writer):
        writer.write(GREETING.encode())
        await reader.readline()
        writer.write(ehlo_reply("PIPELINING", "SIZE 1000000").encode())
        for _ in range(3):  # MAIL, RCPT, DATA
            received.append(await reader.readline())
        writer.write(b"250 OK\r\n250 OK\r\n354 go ahead\r\n")
        received.append(await reader.readuntil(b"\r\n.\r\n"))
        writer.write(b"250 2.0.0 queued\r\n")
        await reader.readline()
        writer.write(b"221 bye\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(scripted_server, "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        client = SMTPClient(reader, writer, timeout=5.0)
        await client.greeting()
        await client.hello("client.example")
        result = await client.send(SENDER, ["bob@example.net"], MESSAGE)
        await client.quit()
    finally:
        server.close()
        await server.wait_closed()
    assert result.recipients["bob@example.net"].code == 250
    assert received[0] == f"MAIL FROM:<{SENDER}> SIZE={len(MESSAGE)}\r\n".encode()
    assert received[2] == b"DATA\r\n"
    assert received[3] == stuff(MESSAGE)
