"""Tolerant, bounded MIME parsing: pathological input never raises, stays bounded, reads sensibly."""
from __future__ import annotations

import datetime as dt
import hashlib
import random

import pytest

from tests.corpus.messages import b64, make_message, many_encoded_words_subject, many_parts, nested_multipart
from webapp.services import mime


def _message(headers: str, body: str = "hello\r\n") -> bytes:
    return (headers.strip().replace("\n", "\r\n") + "\r\n\r\n" + body).encode("utf-8")


def _envelope_roles(envelope: mime.Envelope, role: str) -> list[tuple[str, str, bool]]:
    return [(a.name, a.email, a.ambiguous) for a in envelope.addresses_for(role)]


# --- a realistic message -----------------------------------------------------------------------


def test_envelope_of_realistic_message():
    raw = make_message(7)
    envelope = mime.parse_envelope(raw)
    assert envelope.subject.startswith("Re: ") and envelope.subject.endswith("#7")
    assert envelope.addresses_for("from")[0].email == "sender7@example.org"
    assert len(envelope.addresses_for("to")) == 3
    assert all(not a.ambiguous for a in envelope.addresses)
    assert envelope.addresses_for("cc") == [mime.Address("cc", "Sales", "sales@example.com")]
    assert envelope.date is not None and envelope.date.tzinfo == dt.timezone.utc
    assert envelope.message_id.startswith("<7.") and not envelope.message_id_substituted
    assert envelope.references == ["<ref0.7@example.org>", "<ref1.7@example.org>", "<ref2.7@example.org>"]
    assert envelope.has_attachments is True
    assert envelope.size == len(raw)
    assert envelope.parse_defects == []


def test_full_parse_of_realistic_message():
    raw = make_message(3)
    parsed = mime.parse_message(raw)
    assert parsed.envelope.message_id == mime.parse_envelope(raw).message_id
    assert "Grüße" in parsed.text or "Zürich" in parsed.text or "invoice" in parsed.text
    assert parsed.html is not None and parsed.html.startswith("<html>")
    assert [(p.part_id, p.content_type, p.filename, p.disposition) for p in parsed.attachments] == [
        ("2", "application/pdf", "Angebot-3.pdf", "attachment")
    ]
    assert parsed.snippet and len(parsed.snippet) <= mime.MIME_SNIPPET_CHARS and "  " not in parsed.snippet
    assert ("Subject", parsed.envelope.subject) in parsed.headers
    content_type, filename, data = mime.get_part(raw, "2")
    assert (content_type, filename) == ("application/pdf", "Angebot-3.pdf")
    assert len(data) == parsed.attachments[0].size == 5000
    assert mime.get_part(raw, "1.1")[0] == "text/plain"
    assert mime.get_part(raw, "9") is None
    assert mime.get_part(raw, "not-a-part") is None


def test_inline_image_by_content_id():
    image = b"\x89PNG\r\n\x1a\nfakepng"
    raw = _message(
        """
From: a@example.org
Message-ID: <cid@example.org>
Content-Type: multipart/related; boundary="REL"
""",
        "--REL\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
        '<p>logo <img src="cid:logo%40example.org"></p>\r\n'
        "--REL\r\nContent-Type: image/png\r\nContent-Transfer-Encoding: base64\r\n"
        "Content-ID: <logo@example.org>\r\nContent-Disposition: inline; filename=logo.png\r\n\r\n"
        + b64(image).decode()
        + "\r\n--REL--\r\n",
    )
    parsed = mime.parse_message(raw)
    assert parsed.text == "logo"  # derived from the HTML: there is no plain part
    assert parsed.attachments == []
    [inline] = parsed.inline_parts
    assert (inline.part_id, inline.content_id, inline.filename, inline.size) == ("2", "logo@example.org", "logo.png", len(image))
    assert mime.find_content_id(raw, "logo%40example.org") == "2"
    assert mime.find_content_id(raw, "cid:<logo@example.org>") == "2"
    assert mime.find_content_id(raw, "other@example.org") is None
    assert mime.get_part(raw, "2") == ("image/png", "logo.png", image)


def test_search_text_holds_subject_addresses_filenames_and_body():
    raw = make_message(11)
    text = mime.search_text(raw)
    envelope = mime.parse_envelope(raw)
    assert envelope.subject in text
    assert "sender11@example.org" in text and "Angebot-11.pdf" in text
    assert len(mime.search_text(make_message(1, size=2_000_000, with_attachment=False))) == mime.MIME_SEARCH_TEXT_CHARS


# --- pathological corpus -----------------------------------------------------------------------


def test_deeply_nested_multipart_is_cut_at_the_depth_bound():
    """The email package raises RecursionError near 1,000 levels; the bound cuts before it parses."""
    raw = nested_multipart(1000)
    parsed = mime.parse_message(raw)
    assert parsed.envelope.subject == "deep"
    assert any("nested deeper" in d for d in parsed.defects)
    assert mime.get_part(raw, "1" + ".1" * 40) is None
    assert mime.search_text(raw).startswith("deep")


def test_moderately_nested_multipart_is_read_whole():
    parsed = mime.parse_message(nested_multipart(20))
    assert parsed.text.strip() == "bottom of the well"
    assert parsed.defects == []


def test_many_parts_are_capped():
    parsed = mime.parse_message(many_parts(2_000))
    assert len(parsed.parts) == mime.MIME_MAX_PARTS
    assert parsed.parts[0].filename == "f0.bin" and parsed.parts[-1].part_id == str(mime.MIME_MAX_PARTS)
    assert any("parts" in d for d in parsed.defects)


def test_subject_of_20000_encoded_words_decodes_a_bounded_number():
    """decode_header() is quadratic in encoded words (about 3 s for 20,000): only the first are decoded."""
    raw = many_encoded_words_subject(20_000)
    envelope = mime.parse_envelope(raw)
    assert envelope.subject.startswith("w0éw1éw2é")
    assert envelope.subject.count("é") == mime.MIME_MAX_ENCODED_WORDS
    assert any("encoded words" in d for d in envelope.parse_defects)
    assert mime.parse_message(raw).envelope.subject == envelope.subject


def test_long_subject_is_capped():
    envelope = mime.parse_envelope(_message("Subject: " + "x" * 5000 + "\nMessage-ID: <a@b.c>"))
    assert len(envelope.subject) == mime.MIME_MAX_SUBJECT_CHARS


def test_huge_header_block_is_capped():
    raw = _message("Subject: big\nMessage-ID: <big@example.org>\n" + "X-Junk: " + "y" * 70 + "\n" * 1 + ("X-Junk: " + "y" * 70 + "\n") * 20_000)
    envelope = mime.parse_envelope(raw)
    assert envelope.subject == "big" and envelope.message_id == "<big@example.org>"
    assert any("header block larger" in d for d in envelope.parse_defects)
    assert len(mime.parse_message(raw).headers) <= mime.MIME_MAX_HEADERS


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\r\n\r\n",
        b"\x00" * 1000,
        bytes(range(256)) * 64,
        b"Subject: only headers, no blank line, no body",
        b"Subject: x\r\nContent-Type: multipart/mixed\r\n\r\nno boundary parameter at all\r\n",
        b"Subject: x\r\nContent-Type: multipart/mixed; boundary=\"\"\r\n\r\n--\r\n\r\n----\r\n",
        b"Subject: x\r\nContent-Type: multipart/alternative; boundary=AAA\r\n\r\n--BBB\r\nContent-Type: text/plain\r\n\r\nwrong boundary\r\n--BBB--\r\n",
        b"Subject: x\r\nContent-Type: multipart/mixed; boundary=A\r\n\r\n--A\r\nContent-Type: text/plain\r\n\r\nnever closed",
        b"Content-Type: text/plain; charset=x-no-such-charset\r\n\r\n\xe4\xf6\xfc",
        b"Content-Type: text/plain; charset=\"\r\n\r\nbody",
        b"Content-Type: text/plain\r\nContent-Transfer-Encoding: base64\r\n\r\n!!!not base64 at all===\r\nQUJD=RE\r\n",
        b"Content-Type: text/plain\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n=ZZ=4=\r\nsoft=\r\n",
        b"Content-Type: message/rfc822\r\n\r\nSubject: inner\r\n\r\ninner body",
        b"Content-Type: application/octet-stream; name*=utf-8''%E2%82%AC%zz.bin\r\n\r\nx",
        b"Date: Mon, 32 Foo 99999 99:99:99 +9999\r\nFrom: <<<>>>@@@\r\nTo: ,,,;;;\r\n\r\n",
        b"From:\r\nTo: \r\nMessage-ID:\r\nIn-Reply-To: \x00\r\nReferences: <<>>\r\n\r\n",
        b"Subject: =?utf-8?b?!!!?= =?x-unknown?q?abc?= =?utf-8?q?=FF=FE?=\r\n\r\n",
        b"\n\nheaders missing entirely",
    ],
    ids=lambda raw: raw[:24].decode("latin-1").encode("unicode_escape").decode(),
)
def test_broken_input_never_raises(raw):
    envelope = mime.parse_envelope(raw)
    parsed = mime.parse_message(raw)
    assert isinstance(envelope.subject, str) and envelope.size == len(raw)
    assert envelope.message_id.startswith("<") and envelope.message_id.endswith(">")
    assert isinstance(parsed.text, str)
    assert isinstance(mime.search_text(raw), str)
    for part in parsed.parts:
        assert mime.get_part(raw, part.part_id) is not None
    assert mime.get_part(raw, "1") is not None or parsed.parts == []


def test_broken_base64_keeps_what_decodes():
    raw = b"Content-Type: text/plain\r\nContent-Transfer-Encoding: base64\r\n\r\nSGVsbG8g!!d29y\r\nbGQ\r\n"
    assert mime.parse_message(raw).text == "Hello world"


def test_unknown_charset_falls_back():
    latin = mime.parse_message(b"Content-Type: text/plain; charset=x-bogus\r\n\r\nGr\xfc\xdfe")
    utf8 = mime.parse_message("Content-Type: text/plain; charset=x-bogus\r\n\r\nGrüße".encode())
    assert latin.text == "Grüße" and utf8.text == "Grüße"


def test_wrong_declared_charset_does_not_raise():
    parsed = mime.parse_message(b"Content-Type: text/plain; charset=ascii\r\n\r\nGr\xc3\xbc\xc3\x9fe")
    assert parsed.text == "Grüße"


@pytest.mark.parametrize(
    ("header_bytes", "subject", "from_name"),
    [
        ("Subject: Grüße\r\nFrom: Jörg <j@example.org>".encode(), "Grüße", "Jörg"),
        ("Subject: Grüße\r\nFrom: Jörg <j@example.org>".encode("latin-1"), "Grüße", "Jörg"),
    ],
    ids=["utf8", "latin1"],
)
def test_raw_8bit_headers(header_bytes, subject, from_name):
    envelope = mime.parse_envelope(header_bytes + b"\r\n\r\nbody")
    assert envelope.subject == subject
    assert _envelope_roles(envelope, "from") == [(from_name, "j@example.org", False)]
    assert "8-bit bytes in headers" in envelope.parse_defects


def test_header_block_without_body():
    envelope = mime.parse_envelope(b"Subject: hi\r\nMessage-ID: <x@y.z>")
    parsed = mime.parse_message(b"Subject: hi\r\nMessage-ID: <x@y.z>")
    assert envelope.subject == "hi" and envelope.message_id == "<x@y.z>"
    assert parsed.text == "" and parsed.parts == []


@pytest.mark.parametrize("line_end", ["\r\n", "\n"])
def test_header_block_ends_at_first_blank_line(line_end):
    raw = f"Subject: real{line_end}{line_end}Subject: in the body{line_end}".encode()
    assert mime.parse_envelope(raw).subject == "real"


# --- Message-ID --------------------------------------------------------------------------------


def test_missing_message_id_gets_deterministic_substitute():
    first = b"From: a@example.org\r\nSubject: no id\r\n\r\nbody one"
    second = b"From: a@example.org\r\nSubject: no id\r\n\r\nbody two"
    substitute = mime.parse_envelope(first).message_id
    assert substitute == f"<{hashlib.sha256(first).hexdigest()}@{mime.MIME_SUBSTITUTE_ID_DOMAIN}>"
    assert mime.parse_envelope(first).message_id == substitute
    assert mime.parse_envelope(second).message_id != substitute
    assert mime.parse_envelope(first).message_id_substituted


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("<abc@example.org>", "<abc@example.org>"),
        ("  <abc@example.org>  (comment)", "<abc@example.org>"),
        ("abc@example.org", "<abc@example.org>"),
        ("junk <abc@example.org> more", "<abc@example.org>"),
    ],
)
def test_message_id_normalized(value, expected):
    assert mime.parse_envelope(f"Message-ID: {value}\r\n\r\n".encode()).message_id == expected


def test_in_reply_to_and_references_are_bounded():
    references = " ".join(f"<r{n}@example.org>" for n in range(1000))
    envelope = mime.parse_envelope(
        f"Message-ID: <m@x.y>\r\nIn-Reply-To: Your mail <r999@example.org>\r\nReferences: {references}\r\n\r\n".encode()
    )
    assert envelope.in_reply_to == "<r999@example.org>"
    assert len(envelope.references) == mime.MIME_MAX_REFERENCES
    assert envelope.references[0] == "<r0@example.org>" and envelope.references[-1] == "<r999@example.org>"


# --- dates -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("Tue, 05 Mar 2024 10:00:00 +0100", dt.datetime(2024, 3, 5, 9, 0, tzinfo=dt.timezone.utc)),
        ("5 Mar 2024 10:00:00 -0000", dt.datetime(2024, 3, 5, 10, 0, tzinfo=dt.timezone.utc)),
        ("Tue, 05 Mar 24 10:00:00 GMT", dt.datetime(2024, 3, 5, 10, 0, tzinfo=dt.timezone.utc)),
        ("Tue, 05 Mar 1901 10:00:00 +0000", None),
        ("Tue, 05 Mar 2999 10:00:00 +0000", None),
        ("yesterday", None),
        ("", None),
    ],
)
def test_dates(value, expected):
    assert mime.parse_envelope(f"Date: {value}\r\n\r\n".encode()).date == expected


# --- addresses ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        '"Doe, John" <J.Doe@Example.COM>',
        "John Doe <j.doe@example.com>",
        "J.Doe@EXAMPLE.com",
        "<j.doe@example.com>",
        "  j.doe@example.com  ",
        "=?utf-8?q?John_D=C3=B6e?= <J.DOE@example.com>",
        '"=?utf-8?b?Sm9obiBEw7Zl?=" <j.doe@example.com>',
        "j.doe@example.com (John Doe)",
        "John (the boss) Doe <j.doe@example.com>",
        "Team: j.doe@example.com;",
        "John Doe\r\n <j.doe@example.com>",
    ],
)
def test_display_forms_normalize_to_same_email(value):
    envelope = mime.parse_envelope(f"From: {value}\r\n\r\n".encode())
    [address] = envelope.addresses_for("from")
    assert (address.email, address.ambiguous) == ("j.doe@example.com", False)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ('"Doe, John" <J.Doe@Example.COM>', [("Doe, John", "j.doe@example.com")]),
        ("=?utf-8?q?J=C3=B6rg?= <j@x.de>", [("Jörg", "j@x.de")]),
        ("a@b.example, C D <c@d.example>", [("", "a@b.example"), ("C D", "c@d.example")]),
        ("Team: a@b.example, c@d.example;, e@f.example", [("", "a@b.example"), ("", "c@d.example"), ("", "e@f.example")]),
        ("Undisclosed recipients:;", []),
        ("a@XN--MLLER-KVA.example", [("", "a@müller.example")]),
        ("a@MÜLLER.example", [("", "a@müller.example")]),
        ("<@route.example:a@b.example>", [("", "a@b.example")]),
    ],
)
def test_address_names_and_emails(value, expected):
    envelope = mime.parse_envelope(f"To: {value}\r\n\r\n".encode())
    assert [(a.name, a.email) for a in envelope.addresses_for("to")] == expected
    assert not any(a.ambiguous for a in envelope.addresses)


@pytest.mark.parametrize(
    ("value", "clear_emails"),
    [
        ("Doe, John <j@example.com>", ["j@example.com"]),  # unquoted comma: "Doe" is not an address
        ("just a name", []),
        ("a@b@example.com", []),
        ("<a@>", []),
        ("@example.com", []),
        ("a@b.example <c@d.example>", []),
        ("a@example.com trailing junk", []),
    ],
)
def test_ambiguous_addresses_are_flagged_not_guessed(value, clear_emails):
    envelope = mime.parse_envelope(f"To: {value}\r\n\r\n".encode())
    addresses = envelope.addresses_for("to")
    assert [a.email for a in addresses if not a.ambiguous] == clear_emails
    ambiguous = [a for a in addresses if a.ambiguous]
    assert ambiguous and all(a.email == "" for a in ambiguous)
    assert any("ambiguous" in d or "unparsed" in d for d in envelope.parse_defects)


@pytest.mark.parametrize(
    "value",
    [
        "John Doe <j.doe@example.com>",
        '"Doe, John" <J.Doe@Example.COM>, a@b.example',
        "=?utf-8?q?J=C3=B6rg?= <j@x.de>",
        "a@XN--MLLER-KVA.example",
        "Ann <ann+tag@mail.example.co.uk>, Bob <bob.o'neil@example.com>",
    ],
)
def test_fast_address_path_agrees_with_strict_parser(value):
    """The pattern fast path must give exactly what the RFC 5322 parser gives."""
    defects = mime._Defects()
    fast = mime._parse_simple_addresses("to", value, defects)
    assert fast is not None
    assert fast == mime._parse_addresses_strict("to", value, defects)


def test_all_roles_are_read():
    raw = (
        b"From: f@example.org\r\nSender: s@example.org\r\nReply-To: r@example.org\r\n"
        b"To: t@example.org\r\nCc: c@example.org\r\nBcc: b@example.org\r\n\r\n"
    )
    envelope = mime.parse_envelope(raw)
    assert [(a.role, a.email) for a in envelope.addresses] == [
        ("from", "f@example.org"), ("sender", "s@example.org"), ("reply-to", "r@example.org"),
        ("to", "t@example.org"), ("cc", "c@example.org"), ("bcc", "b@example.org"),
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [("Ann@Example.COM", "ann@example.com"), ("x@xn--mller-kva.de", "x@müller.de"), ("no-at-sign", None), ("a b@c.d", None)],
)
def test_normalize_address_for_typed_input(text, expected):
    assert mime.normalize_address(text) == expected


# --- has_attachments guess ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content_type", "expected"),
    [
        ("multipart/mixed; boundary=x", True),
        ("multipart/alternative; boundary=x", False),
        ("text/plain", False),
        ("application/pdf", True),
        ("", False),
    ],
)
def test_has_attachments_guess(content_type, expected):
    raw = f"Content-Type: {content_type}\r\n\r\n".encode() if content_type else b"Subject: x\r\n\r\n"
    assert mime.parse_envelope(raw).has_attachments is expected




def test_random_mutations_never_raise():
    """A seeded fuzz pass: flipped, cut and duplicated bytes of real messages parse without raising."""
    rng = random.Random(2024)
    seeds = [make_message(i, size=3_000) for i in range(5)] + [nested_multipart(40), many_parts(30)]
    for round_number in range(300):
        raw = bytearray(rng.choice(seeds))
        for _ in range(rng.randrange(1, 20)):
            position = rng.randrange(len(raw))
            action = rng.randrange(4)
            if action == 0:
                raw[position] = rng.randrange(256)
            elif action == 1:
                del raw[position : position + rng.randrange(1, 200)]
            elif action == 2:
                raw[position:position] = raw[max(0, position - 300) : position]
            else:
                raw[position:position] = rng.choice([b"\r\n\r\n", b"--", b"=?", b"boundary=", b"\n--XX\n", b"\xff\xfe"])
        raw = bytes(raw)
        parsed = mime.parse_message(raw)
        assert isinstance(parsed.envelope.subject, str), round_number
        for part in parsed.parts[:3]:
            assert mime.get_part(raw, part.part_id) is not None


def test_boundary_words_in_body_text_do_not_cut_the_body():
    """Only Content-Type parameters declare boundaries: prose about MIME must be read whole."""
    body = "".join(f"line {n}: Content-Type: multipart/mixed; boundary=b{n}\r\n" for n in range(80)) + "the end\r\n"
    parsed = mime.parse_message(b"Subject: mime lesson\r\nContent-Type: text/plain\r\n\r\n" + body.encode())
    assert parsed.text.rstrip().endswith("the end")
    assert parsed.defects == ["missing Message-ID"]


def test_boundary_mentions_in_headers_keep_the_header_block():
    headers = "".join(f"X-Note-{n}: boundary=q{n}\r\n" for n in range(80))
    raw = f"Subject: noisy\r\nMessage-ID: <n@x.y>\r\n{headers}\r\nbody text\r\n".encode()
    parsed = mime.parse_message(raw)
    assert parsed.envelope.subject == "noisy" and parsed.text.strip() == "body text"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("Re: =?utf-8?q?Gr=C3=BC=C3=9Fe?= und mehr", "Re: Grüße und mehr"),
        ("=?utf-8?q?a?= =?utf-8?q?b?=", "ab"),  # whitespace between encoded words is not text
        ("=?utf-8?q?a?= =?iso-8859-1?q?=E4?=", "aä"),
        ("=?ISO-2022-JP?B?GyRCJUYlOSVIGyhC?=", "テスト"),
        ("=?x-unknown?q?abc?=", "abc"),
        ("=?utf-7?q?+ADw-script+AD4-?=", "+ADw-script+AD4-"),  # UTF-7 can hide "<": never decoded
        ("plain\r\n folded", "plain folded"),
    ],
)
def test_decode_header_value(value, expected):
    assert mime.decode_header_value(value) == expected


def test_html_to_text_drops_scripts_and_keeps_lines():
    text = mime.html_to_text("<p>Hello&nbsp;<b>you</b></p><script>evil()</script><style>p{}</style><div>next&amp;last</div>")
    assert text == "Hello you\nnext&last"


def test_search_text_of_parsed_message_is_the_same():
    raw = make_message(5)
    assert mime.search_text_of(mime.parse_message(raw)) == mime.search_text(raw)
