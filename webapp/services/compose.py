"""Building outgoing messages: validated addresses, injection-proof headers, the exact bytes sent.

Everything goes through `email.message.EmailMessage` and `email.headerregistry`; no header is
ever assembled by string concatenation. The bytes from `as_bytes()` are the bytes sent over
SMTP and the bytes filed in Sent.
"""
from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from email import policy
from email.errors import HeaderParseError
from email.headerregistry import Address, HeaderRegistry
from email.message import EmailMessage

from email_validator import EmailNotValidError, validate_email

# policy.SMTP: CRLF line endings, RFC 2047 for non-ASCII headers. cte_type="7bit" makes
# set_content() pick quoted-printable/base64 for non-ASCII text, so the message is pure ASCII
# and any server takes it, with or without 8BITMIME.
SEND_POLICY = policy.SMTP.clone(cte_type="7bit")

# The characters that end a header line (CR, LF) or truncate it in C-based MTAs (NUL).
_FORBIDDEN_IN_HEADERS = ("\r", "\n", "\x00")

_header_registry = HeaderRegistry()

AddressInput = tuple[str, str] | str
Attachment = tuple[str, str, bytes]


class ComposeError(ValueError):
    """Base of the errors a compose form shows next to a field."""


class HeaderInjectionError(ComposeError):
    """A header value contained a line break or NUL: refuse rather than clean it up."""

    def __init__(self, field: str) -> None:
        super().__init__(f"{field} must not contain line breaks or NUL characters.")
        self.field = field


class InvalidAddressError(ComposeError):
    """An email address (or one item of an address list) is not valid."""

    def __init__(self, value: str, reason: str = "") -> None:
        message = f"{value!r} is not a valid email address"
        super().__init__(f"{message}: {reason}" if reason else f"{message}.")
        self.value = value
        self.reason = reason


def _reject_line_breaks(field: str, value: str) -> None:
    """Raise HeaderInjectionError if the value could start a new header line."""
    if any(bad in value for bad in _FORBIDDEN_IN_HEADERS):
        raise HeaderInjectionError(field)


def validated_address(field: str, name: str, email: str) -> Address:
    """Check one display name + address pair and return it as a headerregistry.Address."""
    _reject_line_breaks(field, name)
    _reject_line_breaks(field, email)
    try:
        # allow_smtputf8=False: the message stays ASCII-only on the wire (IDN domains become
        # punycode), so no SMTPUTF8 extension is needed on the path.
        valid = validate_email(email, check_deliverability=False, allow_smtputf8=False)
    except EmailNotValidError as error:
        raise InvalidAddressError(email, str(error)) from error
    username, _, domain = valid.ascii_email.rpartition("@")
    return Address(display_name=name, username=username, domain=domain)


def _as_address(field: str, item: AddressInput) -> Address:
    if isinstance(item, str):
        parsed = parse_address_list(item, field=field)
        if len(parsed) != 1:
            raise InvalidAddressError(item, "expected exactly one address")
        item = parsed[0]
    name, email = item
    return validated_address(field, name, email)


def parse_address_list(text: str, *, field: str = "To") -> list[tuple[str, str]]:
    """Parse a compose form's comma-separated list ("Ann <a@x.org>, b@y.com") strictly."""
    _reject_line_breaks(field, text)
    if not text.strip():
        return []
    try:
        header = _header_registry("To", text)  # any address-list header name parses the same
    except (IndexError, HeaderParseError) as error:
        # Python 3.11's parser crashes on some malformed input (e.g. "carl@" at the end).
        raise InvalidAddressError(text, "not a list of email addresses") from error
    result: list[tuple[str, str]] = []
    for address in header.addresses:
        valid = validated_address(field, address.display_name, address.addr_spec)
        result.append((valid.display_name, valid.addr_spec))
    if header.defects:
        # The parser is forgiving ("a@x.com b@y.com" yields only a@x.com): refuse rather
        # than silently drop a recipient the user typed.
        raise InvalidAddressError(text, str(header.defects[0]))
    return result


def make_message_id(domain: str) -> str:
    """Return a new globally unique Message-ID, <uuid4@domain>."""
    _reject_line_breaks("Message-ID", domain)
    return f"<{uuid.uuid4().hex}@{domain}>"


def _checked_message_id(field: str, value: str) -> str:
    _reject_line_breaks(field, value)
    header = _header_registry("Message-ID", value)
    if header.defects or not value.strip():
        raise ComposeError(f"{field} {value!r} is not a valid message id (<id@domain>).")
    return value.strip()


def _address_header(msg: EmailMessage, name: str, field: str, items: Sequence[AddressInput]) -> None:
    addresses = [_as_address(field, item) for item in items]
    if addresses:
        msg[name] = addresses


def envelope_recipients(*address_lists: Iterable[AddressInput]) -> list[str]:
    """Validated, de-duplicated (case-insensitively) RCPT TO addresses from To, Cc and Bcc."""
    seen: set[str] = set()
    result: list[str] = []
    for items in address_lists:
        for item in items:
            addr_spec = _as_address("Recipient", item).addr_spec
            if addr_spec.lower() not in seen:
                seen.add(addr_spec.lower())
                result.append(addr_spec)
    return result


def build_message(
    *,
    from_addr: tuple[str, str],
    to: Sequence[AddressInput],
    cc: Sequence[AddressInput] = (),
    bcc: Sequence[AddressInput] = (),
    subject: str,
    text: str,
    html: str | None = None,
    attachments: Sequence[Attachment] = (),
    message_id: str,
    in_reply_to: str | None = None,
    references: Sequence[str] = (),
    reply_to: str | None = None,
    sender: tuple[str, str] | None = None,
    date: datetime | None = None,
) -> EmailMessage:
    """Build an outgoing message; Bcc is validated but never written (it goes in the envelope only)."""
    if not (to or cc or bcc):
        raise ComposeError("A message needs at least one recipient.")
    _reject_line_breaks("Subject", subject)
    msg = EmailMessage(policy=SEND_POLICY)
    msg["From"] = validated_address("From", *from_addr)
    if sender is not None:
        msg["Sender"] = validated_address("Sender", *sender)
    _address_header(msg, "To", "To", to)
    _address_header(msg, "Cc", "Cc", cc)
    for item in bcc:
        _as_address("Bcc", item)  # validate now so a bad Bcc fails at compose, not at send
    if reply_to:
        msg["Reply-To"] = [validated_address("Reply-To", *pair) for pair in parse_address_list(reply_to, field="Reply-To")]
    msg["Subject"] = subject
    if date is None:
        date = datetime.now(timezone.utc)
    elif date.tzinfo is None:
        raise ValueError("date must be timezone-aware")
    msg["Date"] = date
    msg["Message-ID"] = _checked_message_id("Message-ID", message_id)
    if in_reply_to:
        msg["In-Reply-To"] = _checked_message_id("In-Reply-To", in_reply_to)
    if references:
        msg["References"] = " ".join(_checked_message_id("References", ref) for ref in references)

    msg.set_content(text)
    if html is not None:
        msg.add_alternative(html, subtype="html")
    for filename, content_type, data in attachments:
        _reject_line_breaks("Attachment filename", filename)
        _reject_line_breaks("Attachment content type", content_type)
        maintype, slash, subtype = content_type.partition("/")
        if not slash or not maintype or not subtype or " " in content_type:
            raise ComposeError(f"{content_type!r} is not a content type (type/subtype).")
        # Bytes always: set_content(str) would re-encode text attachments and change them.
        msg.add_attachment(data, maintype=maintype, subtype=subtype, filename=filename)
    return msg


def as_bytes(msg: EmailMessage) -> bytes:
    """The exact bytes to send and to file in Sent: CRLF line endings, 7-bit clean."""
    return msg.as_bytes(policy=SEND_POLICY)
