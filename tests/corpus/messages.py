"""Generated test messages: realistic multipart mail of a chosen size and pathological inputs.

Everything is built in code so the corpus is small in the repository and each message is a pure
function of its arguments.
"""
from __future__ import annotations

import base64
import datetime as dt
import random
from email import policy
from email.message import EmailMessage
from email.utils import format_datetime, formataddr

_WORDS = (
    "invoice meeting proposal quarterly pipeline customer renewal contract schedule update "
    "follow attached discuss budget forecast the of and to in is you that it for on with "
    "Grüße naïve café Zürich Привет спасибо 東京 señor año"
).split()
_NAMES = ["Alice Smith", "Jörg Müller", "Zoë Ng", "Мария Иванова", "José García", "Li Nakamura"]
_DOMAINS = ["example.org", "example.com", "mail.example.co.uk", "xn--mller-kva.example"]


def _words(rng: random.Random, count: int) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(count))


def make_message(index: int, size: int = 20_000, *, with_attachment: bool = True) -> bytes:
    """Build a realistic multipart/mixed message of about `size` bytes (text, HTML, a PDF-ish file)."""
    rng = random.Random(index)
    message = EmailMessage(policy=policy.default)
    when = dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(seconds=rng.randrange(10**7))
    message["Received"] = f"from mx.example.org by mail.example.test; {format_datetime(when)}"
    message["Message-ID"] = f"<{index}.{rng.getrandbits(48):x}@example.org>"
    message["Date"] = format_datetime(when)
    message["From"] = formataddr((rng.choice(_NAMES), f"sender{index}@example.org"))
    message["To"] = ", ".join(
        formataddr((rng.choice(_NAMES), f"user{n}@{rng.choice(_DOMAINS[:3])}")) for n in range(3)
    )
    message["Cc"] = formataddr(("Sales", "sales@example.com"))
    message["Subject"] = f"Re: {_words(rng, 6)} #{index}"
    message["References"] = " ".join(f"<ref{n}.{index}@example.org>" for n in range(3))
    body_words = max(10, size // 3 // 7)
    text = "\n\n".join(_words(rng, 40) for _ in range(body_words // 40 + 1))
    message.set_content(text)
    message.add_alternative(f"<html><body><p>{text.replace(chr(10) * 2, '</p><p>')}</p></body></html>", subtype="html")
    if with_attachment:
        blob = rng.randbytes(max(100, size // 4))
        message.add_attachment(blob, maintype="application", subtype="pdf", filename=f"Angebot-{index}.pdf")
    return message.as_bytes()


def nested_multipart(depth: int) -> bytes:
    """A multipart nested `depth` levels deep with a text leaf at the bottom."""
    head = [b"From: deep@example.org\r\nSubject: deep\r\nMessage-ID: <deep@example.org>\r\n"]
    opening = []
    closing = []
    for level in range(depth):
        opening.append(
            b"Content-Type: multipart/mixed; boundary=\"b%d\"\r\n\r\n--b%d\r\n" % (level, level)
        )
        closing.append(b"\r\n--b%d--\r\n" % level)
    leaf = b"Content-Type: text/plain\r\n\r\nbottom of the well\r\n"
    return b"".join(head + opening + [leaf] + closing[::-1])


def many_encoded_words_subject(count: int) -> bytes:
    """A message whose Subject holds `count` encoded words (quadratic for the email package)."""
    words = " ".join(f"=?utf-8?q?w{n}=C3=A9?=" for n in range(count))
    return (
        f"From: a@example.org\r\nSubject: {words}\r\nMessage-ID: <ew@example.org>\r\n\r\nbody\r\n"
    ).encode()


def many_parts(count: int) -> bytes:
    """A flat multipart/mixed message with `count` small attachments."""
    chunks = [b"From: a@example.org\r\nMessage-ID: <parts@example.org>\r\n"
              b"Content-Type: multipart/mixed; boundary=XX\r\n\r\n"]
    for n in range(count):
        chunks.append(
            b"--XX\r\nContent-Type: application/octet-stream\r\n"
            b"Content-Disposition: attachment; filename=\"f%d.bin\"\r\n\r\nabc\r\n" % n
        )
    chunks.append(b"--XX--\r\n")
    return b"".join(chunks)


def b64(data: bytes) -> bytes:
    """Base64 with 76-character lines, as mail clients write it."""
    encoded = base64.b64encode(data)
    return b"\r\n".join(encoded[i : i + 76] for i in range(0, len(encoded), 76))
