"""webapp.services.compose: header injection refused, encodings round-trip, Bcc never written."""
from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from typing import Any

import pytest

from webapp.services.compose import (
    ComposeError,
    HeaderInjectionError,
    InvalidAddressError,
    as_bytes,
    build_message,
    envelope_recipients,
    make_message_id,
    parse_address_list,
)

INJECTIONS = ["a\r\nBcc: x@evil.example", "\nX-Injected: 1", "\r", "\x00"]


def make_kwargs(**overrides: Any) -> dict[str, Any]:
    """A valid build_message() call, with keyword overrides."""
    kwargs: dict[str, Any] = {
        "from_addr": ("Sender", "sender@example.com"),
        "to": [("Ann", "ann@example.org")],
        "cc": [("Carl", "carl@example.org")],
        "bcc": [("Hidden", "hidden@example.net")],
        "subject": "Hello",
        "text": "Body\n",
        "html": None,
        "attachments": [],
        "message_id": "<abc123@example.com>",
        "in_reply_to": "<parent@example.com>",
        "references": ["<root@example.com>", "<parent@example.com>"],
        "reply_to": "Desk <desk@example.com>",
        "sender": ("Relay", "relay@example.com"),
        "date": datetime(2026, 11, 29, 10, 30, tzinfo=timezone.utc),
    }
    kwargs.update(overrides)
    return kwargs


def reparse(msg: EmailMessage) -> EmailMessage:
    """What a receiving mail client will see."""
    return BytesParser(policy=policy.default).parsebytes(as_bytes(msg))


# Every header input, each with a way to put a payload into it.
INJECTABLE_FIELDS: dict[str, Callable[[str], dict[str, Any]]] = {
    "from name": lambda bad: {"from_addr": (f"Sender{bad}", "sender@example.com")},
    "from email": lambda bad: {"from_addr": ("Sender", f"sender@example.com{bad}")},
    "to name": lambda bad: {"to": [(f"Ann{bad}", "ann@example.org")]},
    "to email": lambda bad: {"to": [("Ann", f"ann@example.org{bad}")]},
    "to text": lambda bad: {"to": [f"Ann <ann@example.org>{bad}"]},
    "cc email": lambda bad: {"cc": [("Carl", f"carl{bad}@example.org")]},
    "bcc email": lambda bad: {"bcc": [("", f"hidden@example.net{bad}")]},
    "subject": lambda bad: {"subject": f"Hello{bad}"},
    "message id": lambda bad: {"message_id": f"<abc123@example.com>{bad}"},
    "in reply to": lambda bad: {"in_reply_to": f"<parent@example.com>{bad}"},
    "references": lambda bad: {"references": ["<root@example.com>", f"<p@example.com>{bad}"]},
    "reply to": lambda bad: {"reply_to": f"desk@example.com{bad}"},
    "sender name": lambda bad: {"sender": (f"Relay{bad}", "relay@example.com")},
    "attachment filename": lambda bad: {"attachments": [(f"report{bad}.pdf", "application/pdf", b"%PDF")]},
    "attachment type": lambda bad: {"attachments": [("report.pdf", f"application/pdf{bad}", b"%PDF")]},
}


@pytest.mark.parametrize("payload", INJECTIONS, ids=["crlf-bcc", "lf", "cr", "nul"])
@pytest.mark.parametrize("field", sorted(INJECTABLE_FIELDS))
def test_header_injection_is_refused(field: str, payload: str) -> None:
    """CR, LF or NUL in any header input raises instead of being cleaned up or folded."""
    with pytest.raises(HeaderInjectionError):
        build_message(**make_kwargs(**INJECTABLE_FIELDS[field](payload)))


@pytest.mark.parametrize("payload", INJECTIONS)
def test_injection_in_address_list_text_is_refused(payload: str) -> None:
    """The compose form's To field goes through the same check."""
    with pytest.raises(HeaderInjectionError):
        parse_address_list(f"ann@example.org{payload}")


def test_headers_are_written_and_bcc_is_not() -> None:
    """Every header lands as given; the Bcc address appears nowhere in the bytes."""
    raw = as_bytes(build_message(**make_kwargs()))
    parsed = BytesParser(policy=policy.default).parsebytes(raw)
    assert str(parsed["From"]) == "Sender <sender@example.com>"
    assert str(parsed["Sender"]) == "Relay <relay@example.com>"
    assert str(parsed["To"]) == "Ann <ann@example.org>"
    assert str(parsed["Cc"]) == "Carl <carl@example.org>"
    assert str(parsed["Reply-To"]) == "Desk <desk@example.com>"
    assert parsed["Message-ID"] == "<abc123@example.com>"
    assert parsed["In-Reply-To"] == "<parent@example.com>"
    assert parsed["References"] == "<root@example.com> <parent@example.com>"
    assert parsed["Date"].datetime == datetime(2026, 11, 29, 10, 30, tzinfo=timezone.utc)
    assert b"hidden" not in raw.lower()
    assert b"bcc" not in raw.lower()


def test_bytes_are_ascii_with_crlf_only() -> None:
    """policy.SMTP line endings, 7-bit: what any server accepts, byte for byte."""
    raw = as_bytes(build_message(**make_kwargs(text="Grüße\nline two\r\nthree\n", html="<p>é</p>")))
    assert raw.isascii()
    assert b"\n" not in raw.replace(b"\r\n", b"")
    assert b"\r" not in raw.replace(b"\r\n", b"")


@pytest.mark.parametrize(
    ("name", "subject"),
    [
        ("Zoë Ångström", "Grüße aus Köln"),
        ("Иван Петров", "Привет — счёт №42"),
        ("山田 太郎", "会議の議事録 " * 12),  # long: must fold into several encoded words
        ('Smith, "J" \\ Co', "Re: [ticket #1] =?not-an-encoded-word?= stays literal"),
        ("", ""),
    ],
)
def test_non_ascii_names_and_subjects_round_trip(name: str, subject: str) -> None:
    """Display names and subjects come back from the parser exactly as typed."""
    parsed = reparse(build_message(**make_kwargs(from_addr=(name, "sender@example.com"),
                                                 to=[(name, "ann@example.org")], subject=subject)))
    assert parsed["From"].addresses[0].display_name == name
    assert parsed["To"].addresses[0].display_name == name
    assert parsed["Subject"] == subject


def test_bodies_round_trip() -> None:
    """Plain and HTML alternatives decode to the text given (line ends normalised)."""
    text = "Hello Zoë,\n.a dot line\n\nFrom the start of a line\n" + "x" * 2000 + "\n"
    html = "<p>Hello <b>Zoë</b></p>\n"
    parsed = reparse(build_message(**make_kwargs(text=text, html=html)))
    # Encoded bodies carry the wire's CRLF line ends; a reader normalises them.
    assert parsed.get_body(("plain",)).get_content().replace("\r\n", "\n") == text
    assert parsed.get_body(("html",)).get_content().replace("\r\n", "\n") == html


@pytest.mark.parametrize(
    ("filename", "content_type", "data"),
    [
        ("report.pdf", "application/pdf", b"%PDF-1.7\n" + bytes(range(256)) * 40),
        ("Übersicht März.csv", "text/csv", "a;b\r\nÄ;ß\r\n".encode("utf-8")),
        ("notes.txt", "text/plain", b"line one\nline two without CRLF\n.\n"),
        ("empty.bin", "application/octet-stream", b""),
    ],
)
def test_attachments_round_trip(filename: str, content_type: str, data: bytes) -> None:
    """Name, type and every byte of an attachment survive sending."""
    parsed = reparse(build_message(**make_kwargs(attachments=[(filename, content_type, data)])))
    [attachment] = list(parsed.iter_attachments())
    assert attachment.get_filename() == filename
    assert attachment.get_content_type() == content_type
    assert attachment.get_payload(decode=True) == data


@pytest.mark.parametrize("content_type", ["pdf", "application/", "/pdf", "text/plain; charset=x"])
def test_bad_attachment_content_type_is_refused(content_type: str) -> None:
    """A content type must be type/subtype and nothing else."""
    with pytest.raises(ComposeError):
        build_message(**make_kwargs(attachments=[("a.bin", content_type, b"x")]))


@pytest.mark.parametrize(
    "override",
    [
        {"from_addr": ("Sender", "not-an-address")},
        {"to": [("Ann", "ann@")]},
        {"cc": [("", "carl@localhost")]},
        {"bcc": ["hidden at example.net"]},
        {"sender": ("Relay", "relay@exa mple.com")},
        {"reply_to": "desk@@example.com"},
    ],
)
def test_invalid_address_is_refused(override: dict[str, Any]) -> None:
    """Every address, Bcc included, is validated before anything is sent."""
    with pytest.raises(InvalidAddressError):
        build_message(**make_kwargs(**override))


@pytest.mark.parametrize("override", [{"message_id": "abc"}, {"in_reply_to": "no brackets here"},
                                      {"references": ["<ok@example.com>", "bad id"]}])
def test_malformed_message_ids_are_refused(override: dict[str, Any]) -> None:
    """Message ids must be <id@domain>, or threading breaks in the recipient's client."""
    with pytest.raises(ComposeError):
        build_message(**make_kwargs(**override))


def test_message_needs_a_recipient_and_an_aware_date() -> None:
    """No recipients at all, or a naive date, is a programming error caught early."""
    with pytest.raises(ComposeError):
        build_message(**make_kwargs(to=[], cc=[], bcc=[]))
    with pytest.raises(ValueError):
        build_message(**make_kwargs(date=datetime(2026, 1, 1)))


def test_date_defaults_to_now() -> None:
    """Without a date the message is dated when built."""
    parsed = reparse(build_message(**make_kwargs(date=None)))
    assert abs(parsed["Date"].datetime - datetime.now(timezone.utc)) < timedelta(minutes=1)


def test_international_domain_is_written_as_punycode() -> None:
    """IDN domains become ASCII so the message needs no SMTPUTF8."""
    raw = as_bytes(build_message(**make_kwargs(to=[("", "anna@bücher.example")])))
    assert b"anna@xn--bcher-kva.example" in raw


def test_make_message_id_is_unique_and_well_formed() -> None:
    """uuid4-based, angle-bracketed, at the given domain."""
    ids = {make_message_id("mail.example.com") for _ in range(100)}
    assert len(ids) == 100
    assert all(re.fullmatch(r"<[0-9a-f]{32}@mail\.example\.com>", mid) for mid in ids)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("ann@example.org", [("", "ann@example.org")]),
        ("Ann <ann@example.org>, bob@example.com", [("Ann", "ann@example.org"), ("", "bob@example.com")]),
        ('"Smith, John" <john@example.org>', [("Smith, John", "john@example.org")]),
        ("Zoë <zoe@example.org>", [("Zoë", "zoe@example.org")]),
        ("  ", []),
    ],
)
def test_parse_address_list(text: str, expected: list[tuple[str, str]]) -> None:
    """The compose form's To/Cc syntax: commas, display names, quoted commas."""
    assert parse_address_list(text) == expected


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("ann@example.org, bob", "bob"),
        ("ann@example.org, carl@", "carl@"),
        ("ann@example.org bob@example.com", "ann@example.org bob@example.com"),  # a missing comma
        ("<ann@example.org", "<ann@example.org"),
    ],
)
def test_parse_address_list_names_the_bad_item(text: str, named: str) -> None:
    """Strict: a bad item is an error that quotes it, never silently dropped."""
    with pytest.raises(InvalidAddressError) as caught:
        parse_address_list(text)
    assert named in str(caught.value)


def test_envelope_recipients_include_bcc_once() -> None:
    """RCPT TO list: To, Cc and Bcc, without duplicates."""
    recipients = envelope_recipients([("Ann", "ann@example.org")], ["ANN@example.org", "carl@example.org"],
                                     [("", "hidden@example.net")])
    assert recipients == ["ann@example.org", "carl@example.org", "hidden@example.net"]
