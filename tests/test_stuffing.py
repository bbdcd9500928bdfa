"""Tests for dot-stuffing (RFC 5321 section 4.5.2) and line-end normalization.

``stuff`` in the client prepares content for DATA. ``unstuff`` and
``normalize_line_ends`` in the listener undo the transparency dots and turn
bare CR and bare LF into CRLF, so that no bare line end reaches a customer
server (SMTP smuggling).
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from mailkeep.server.client import stuff
from mailkeep.server.smtpd import normalize_line_ends, unstuff

END_OF_DATA = b"\r\n.\r\n"

# Content built from the bytes that matter to stuffing, so that dots at
# line starts, bare CR and bare LF come up often. Arbitrary bytes are mixed in.
tricky_chunks = st.sampled_from([b".", b"..", b"\r\n", b"\r", b"\n", b"a", b" ", b"\x00", b"\xff"])
tricky_content = st.lists(tricky_chunks, max_size=30).map(b"".join)
any_content = st.one_of(tricky_content, st.binary(max_size=200))
crlf_terminated = any_content.map(lambda data: data + b"\r\n")


def reference_normalize(data: bytes) -> bytes:
    """Replace each CRLF, bare CR and bare LF by CRLF, one byte at a time."""
    out = bytearray()
    index = 0
    while index < len(data):
        byte = data[index : index + 1]
        if byte == b"\r" and data[index + 1 : index + 2] == b"\n":
            out += b"\r\n"
            index += 2
        elif byte in (b"\r", b"\n"):
            out += b"\r\n"
            index += 1
        else:
            out += byte
            index += 1
    return bytes(out)


class TestStuff:
    def test_plain_content__gets_end_of_data_line(self):
        assert stuff(b"hello\r\n") == b"hello\r\n.\r\n"

    def test_content_without_final_crlf__gets_crlf_before_dot(self):
        assert stuff(b"hello") == b"hello\r\n.\r\n"

    def test_empty_content__is_only_the_dot_line(self):
        assert stuff(b"") == b".\r\n"

    def test_dot_line_in_middle__is_doubled(self):
        assert stuff(b"a\r\n.\r\nb\r\n") == b"a\r\n..\r\nb\r\n.\r\n"

    def test_leading_dot_on_first_line__is_doubled(self):
        assert stuff(b".hidden\r\n") == b"..hidden\r\n.\r\n"

    def test_line_of_two_dots__becomes_three(self):
        assert stuff(b"x\r\n..\r\n") == b"x\r\n...\r\n.\r\n"

    def test_dot_inside_line__is_left_alone(self):
        assert stuff(b"a.b\r\n") == b"a.b\r\n.\r\n"


class TestUnstuff:
    def test_doubled_dots__lose_one_dot(self):
        assert unstuff(b"..a\r\n..\r\n") == b".a\r\n.\r\n"

    def test_content_without_dots__is_unchanged(self):
        assert unstuff(b"a\r\nb\r\n") == b"a\r\nb\r\n"


class TestStuffingProperties:
    @given(crlf_terminated)
    def test_unstuff_of_stuff__round_trips(self, data):
        assert unstuff(stuff(data)[:-3]) == data

    @given(crlf_terminated)
    def test_end_of_data__only_at_end(self, data):
        stuffed = stuff(data)
        assert stuffed.endswith(END_OF_DATA)
        assert stuffed.find(END_OF_DATA) == len(stuffed) - len(END_OF_DATA)

    @given(crlf_terminated)
    def test_stuffed_content__does_not_start_with_dot_line(self, data):
        assert not stuff(data).startswith(b".\r\n")

    @given(any_content)
    def test_normalized_then_stuffed__has_no_bare_line_ends(self, data):
        normalized, _ = normalize_line_ends(data)
        stuffed = stuff(normalized)
        crlf = stuffed.count(b"\r\n")
        assert stuffed.count(b"\r") == crlf
        assert stuffed.count(b"\n") == crlf


class TestNormalizeLineEnds:
    def test_bare_lf__becomes_crlf(self):
        assert normalize_line_ends(b"a\nb\n") == (b"a\r\nb\r\n", True)

    def test_bare_cr__becomes_crlf(self):
        assert normalize_line_ends(b"a\rb\r") == (b"a\r\nb\r\n", True)

    def test_cr_before_crlf__gives_two_line_ends(self):
        assert normalize_line_ends(b"a\r\r\nb") == (b"a\r\n\r\nb", True)

    def test_lf_cr_pair__gives_two_line_ends(self):
        assert normalize_line_ends(b"a\n\rb") == (b"a\r\n\r\nb", True)

    def test_clean_crlf_data__is_returned_unchanged(self):
        data = b"Subject: x\r\n\r\nbody\r\n"
        normalized, changed = normalize_line_ends(data)
        assert normalized == data
        assert changed is False

    def test_data_without_line_ends__is_unchanged(self):
        assert normalize_line_ends(b"no line end") == (b"no line end", False)

    def test_smuggled_end_of_data__is_stuffed_after_normalizing(self):
        # "\n.\r\n" ends DATA on servers that accept a bare LF as a line end.
        smuggled = b"hi\n.\r\nMAIL FROM:<x@evil.example>\r\n"
        normalized, changed = normalize_line_ends(smuggled)
        stuffed = stuff(normalized)
        assert changed is True
        assert stuffed.find(END_OF_DATA) == len(stuffed) - len(END_OF_DATA)

    @given(any_content)
    def test_every_line_end__matches_reference(self, data):
        normalized, _ = normalize_line_ends(data)
        assert normalized == reference_normalize(data)

    @given(any_content)
    def test_changed_flag__is_set_only_when_bytes_change(self, data):
        normalized, changed = normalize_line_ends(data)
        assert changed == (normalized != data)

    @given(st.lists(st.binary().map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))))
    def test_clean_crlf_lines__are_identity(self, lines):
        data = b"".join(line + b"\r\n" for line in lines)
        normalized, changed = normalize_line_ends(data)
        assert normalized == data
        assert changed is False
