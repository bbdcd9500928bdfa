"""Tests for SMTP path parsing and the relay checks in ``mailkeep.server.address``."""

from __future__ import annotations

import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailkeep.server.address import (
    MAX_DOMAIN,
    MAX_LOCAL_PART,
    PathError,
    parse_path,
    relay_trick,
)

# atext of RFC 5322, ASCII only.
ATEXT = string.ascii_letters + string.digits + "!#$%&'*+/=?^_`{|}~-"
LABEL_CHARS = string.ascii_letters + string.digits


class TestValidPaths:
    def test_plain_mailbox__splits_local_part_and_domain(self):
        path = parse_path("<ann@example.org>")
        assert path.local == "ann"
        assert path.domain == "example.org"
        assert path.address == "ann@example.org"
        assert path.params == {}

    def test_plain_mailbox__sets_no_flags(self):
        path = parse_path("<ann@example.org>")
        assert not path.quoted
        assert not path.literal
        assert not path.route
        assert not path.null

    def test_leading_space__is_tolerated(self):
        assert parse_path(" <ann@example.org>").address == "ann@example.org"

    def test_bare_address_without_brackets__is_accepted(self):
        assert parse_path("ann@example.org").address == "ann@example.org"

    def test_null_path_with_allow_null__is_null(self):
        path = parse_path("<>", allow_null=True)
        assert path.null
        assert path.address == ""

    def test_null_path_with_parameters__keeps_parameters(self):
        path = parse_path("<> BODY=8BITMIME", allow_null=True)
        assert path.null
        assert path.params == {"BODY": "8BITMIME"}

    @pytest.mark.parametrize("arg", ["<postmaster>", "<Postmaster>", "<POSTMASTER>"])
    def test_bare_postmaster_when_allowed__has_no_domain(self, arg):
        path = parse_path(arg, allow_bare_postmaster=True)
        assert path.local.lower() == "postmaster"
        assert path.domain == ""
        assert path.address == path.local

    def test_postmaster_with_domain__is_an_ordinary_mailbox(self):
        path = parse_path("<postmaster@example.org>", allow_bare_postmaster=True)
        assert path.address == "postmaster@example.org"

    def test_quoted_local_part__sets_quoted(self):
        path = parse_path('<"john doe"@example.org>')
        assert path.quoted
        assert path.local == '"john doe"'
        assert path.domain == "example.org"

    def test_quoted_local_part_with_escapes__keeps_escapes(self):
        path = parse_path(r'<"a\"b"@example.org>')
        assert path.local == r'"a\"b"'

    def test_bracket_inside_quotes__is_not_path_end(self):
        path = parse_path('<"a>b"@example.org>')
        assert path.local == '"a>b"'
        assert path.domain == "example.org"

    def test_ipv4_address_literal__sets_literal(self):
        path = parse_path("<ann@[192.0.2.1]>")
        assert path.literal
        assert path.domain == "[192.0.2.1]"

    def test_ipv6_address_literal__sets_literal(self):
        path = parse_path("<ann@[IPv6:2001:db8::1]>")
        assert path.literal
        assert path.domain == "[IPv6:2001:db8::1]"

    def test_source_route__sets_route_and_keeps_mailbox(self):
        path = parse_path("<@a.example,@b.example:user@c.example>")
        assert path.route
        assert path.address == "user@c.example"

    def test_single_hop_source_route__sets_route(self):
        path = parse_path("<@a.example:user@c.example>")
        assert path.route
        assert path.address == "user@c.example"

    def test_mixed_case_domain__is_lower_cased(self):
        path = parse_path("<Ann@Example.ORG>")
        assert path.domain == "example.org"

    def test_mixed_case_local_part__is_kept(self):
        path = parse_path("<Ann@Example.ORG>")
        assert path.local == "Ann"

    def test_trailing_dot_in_domain__is_removed(self):
        assert parse_path("<ann@example.org.>").domain == "example.org"

    def test_utf8_local_part__is_accepted(self):
        path = parse_path("<jörg@example.org>")
        assert path.local == "jörg"

    def test_parameters__are_parsed_with_upper_cased_keywords(self):
        path = parse_path("<ann@example.org> size=1000 Body=8BITMIME smtputf8")
        assert path.params == {"SIZE": "1000", "BODY": "8BITMIME", "SMTPUTF8": None}

    def test_parameter_values__keep_their_case(self):
        path = parse_path("<ann@example.org> ENVID=AbC")
        assert path.params["ENVID"] == "AbC"

    def test_space_before_bracket__keeps_parameters(self):
        # What "MAIL FROM: <a@b> SIZE=10" leaves after the colon.
        path = parse_path(" <a@b.example> SIZE=10")
        assert path.address == "a@b.example"
        assert path.params == {"SIZE": "10"}

    def test_local_part_of_max_length__is_accepted(self):
        local = "a" * MAX_LOCAL_PART
        assert parse_path(f"<{local}@example.org>").local == local


class TestInvalidPaths:
    @pytest.mark.parametrize(
        "arg",
        [
            "<ann@example.org",
            "<ann@example.org SIZE=10",
            '<"ann>@example.org',
        ],
    )
    def test_missing_closing_bracket__raises(self, arg):
        with pytest.raises(PathError, match="missing '>'"):
            parse_path(arg)

    def test_null_path_without_allow_null__raises(self):
        with pytest.raises(PathError, match="null path"):
            parse_path("<>")

    def test_bare_postmaster_without_permission__raises(self):
        with pytest.raises(PathError):
            parse_path("<postmaster>")

    @pytest.mark.parametrize("arg", ["<@example.org>", "<>@example.org", "@example.org"])
    def test_empty_local_part__raises(self, arg):
        with pytest.raises(PathError):
            parse_path(arg)

    @pytest.mark.parametrize(
        "arg",
        [
            "<.ann@example.org>",
            "<ann.@example.org>",
            "<an..n@example.org>",
            "<an n@example.org>",
            "<ann(x)@example.org>",
            "<ann>",
        ],
    )
    def test_invalid_local_part__raises(self, arg):
        with pytest.raises(PathError):
            parse_path(arg)

    @pytest.mark.parametrize(
        "domain",
        [
            "",
            "-example.org",
            "example-.org",
            "exa_mple.org",
            "example..org",
            ".example.org",
            "exa mple.org",
            "[]",
            "[192.0.2.1",
        ],
    )
    def test_invalid_domain__raises(self, domain):
        with pytest.raises(PathError):
            parse_path(f"<ann@{domain}>")

    def test_local_part_over_64_octets__raises(self):
        local = "a" * (MAX_LOCAL_PART + 1)
        with pytest.raises(PathError, match="local part longer"):
            parse_path(f"<{local}@example.org>")

    def test_local_part_over_64_octets_in_utf8__raises(self):
        # 33 two-octet characters: 33 characters but 66 octets.
        local = "ö" * 33
        with pytest.raises(PathError, match="local part longer"):
            parse_path(f"<{local}@example.org>")

    def test_domain_over_255_characters__raises(self):
        labels = ["a" * 63] * 4 + ["b" * 4]
        domain = ".".join(labels)
        assert len(domain) > MAX_DOMAIN
        with pytest.raises(PathError):
            parse_path(f"<a@{domain}>")

    def test_path_over_256_characters__raises(self):
        domain = ".".join(["d" * 60] * 4)
        local = "a" * 20
        with pytest.raises(PathError, match="path longer"):
            parse_path(f"<{local}@{domain}>")

    @pytest.mark.parametrize("rest", ["junk", ">", "<x@y.example>", "SIZE=10"])
    def test_text_directly_after_bracket__raises(self, rest):
        with pytest.raises(PathError, match="separated by a space"):
            parse_path(f"<ann@example.org>{rest}")

    @pytest.mark.parametrize("params", ["=10", "SIZE=", "SI_ZE=1", "-SIZE=1"])
    def test_invalid_parameter__raises(self, params):
        with pytest.raises(PathError, match="invalid parameter"):
            parse_path(f"<ann@example.org> {params}")

    def test_source_route_without_mailbox__raises(self):
        with pytest.raises(PathError):
            parse_path("<@a.example:>")

    def test_empty_argument__raises(self):
        with pytest.raises(PathError):
            parse_path("")

    @pytest.mark.parametrize(
        "raw", [b"<\xffann@example.org>", b"<ann@\xffexample.org>", b"<ann@example.org> X=\xff"]
    )
    def test_invalid_utf8_from_surrogateescape__raises_path_error(self, raw):
        # aiosmtpd decodes command arguments with surrogateescape, so a stray
        # 0xff byte arrives as a lone surrogate.
        arg = raw.decode("utf-8", "surrogateescape")
        with pytest.raises(PathError, match="not valid UTF-8"):
            parse_path(arg)


class TestRelayTrick:
    @pytest.mark.parametrize(
        "arg",
        [
            "<user%other.example@hosted.example>",
            "<a!b@hosted.example>",
            '<"user@outside.example"@hosted.example>',
            r'<"user\@outside.example"@hosted.example>',
            '<"user%outside.example"@hosted.example>',
            "<user@[192.0.2.1]>",
            "<user@[IPv6:2001:db8::1]>",
            "<USER%OTHER.EXAMPLE@HOSTED.EXAMPLE>",
        ],
    )
    def test_routing_form__is_flagged(self, arg):
        assert relay_trick(parse_path(arg)) is not None

    def test_source_route__leaves_final_domain(self):
        # The parser drops the route, so only the final domain decides
        # whether the recipient is hosted.
        path = parse_path("<@relay.example:user@outside.example>")
        assert path.domain == "outside.example"

    @pytest.mark.parametrize(
        "arg",
        [
            "<ann@hosted.example>",
            "<John.Doe+tag@hosted.example>",
            '<"john doe"@hosted.example>',
            "<Ann@HOSTED.example>",
        ],
    )
    def test_ordinary_address__passes(self, arg):
        assert relay_trick(parse_path(arg)) is None


# Strategies for addresses that RFC 5321 accepts as dot-atoms.
atoms = st.text(alphabet=ATEXT, min_size=1, max_size=16)
local_parts = st.lists(atoms, min_size=1, max_size=4).map(".".join).filter(
    lambda local: len(local) <= MAX_LOCAL_PART
)
labels = st.builds(
    lambda first, middle, last: first + middle + last if middle or last else first,
    st.sampled_from(LABEL_CHARS),
    st.text(alphabet=LABEL_CHARS + "-", max_size=20),
    st.text(alphabet=LABEL_CHARS, max_size=1),
).filter(lambda label: not label.endswith("-"))
domains = st.lists(labels, min_size=1, max_size=5).map(".".join)


class TestProperties:
    @given(local=local_parts, domain=domains)
    def test_dot_atom_address__round_trips(self, local, domain):
        path = parse_path(f"<{local}@{domain}>")
        assert path.address == f"{local}@{domain.lower()}"

    @given(local=local_parts, domain=domains)
    def test_dot_atom_address__is_neither_quoted_nor_literal(self, local, domain):
        path = parse_path(f"<{local}@{domain}>")
        assert not path.quoted
        assert not path.literal

    @given(st.text())
    def test_arbitrary_text__raises_only_path_error(self, text):
        try:
            parse_path(text, allow_null=True, allow_bare_postmaster=True)
        except PathError:
            pass

    @given(st.text(alphabet='<>@".:,\\[]%! =ab-', max_size=40))
    def test_text_of_path_punctuation__raises_only_path_error(self, text):
        try:
            parse_path(text, allow_null=True)
        except PathError:
            pass

    @given(st.binary(max_size=80))
    def test_undecodable_bytes__raise_only_path_error(self, raw):
        # The form in which aiosmtpd hands over a command argument.
        text = raw.decode("utf-8", "surrogateescape")
        try:
            parse_path(text, allow_null=True, allow_bare_postmaster=True)
        except PathError:
            pass
