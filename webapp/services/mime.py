"""Tolerant, bounded MIME parsing: a fast header-only envelope for delivery, a full parse for viewing.

Every function here takes raw message bytes exactly as stored and never raises on any input:
a broken message is still listed and shown with what could be read, plus a list of defects.

Address normalization (one form, used everywhere, also by the CRM linking): ``email`` is the
addr-spec with surrounding whitespace stripped, the local part and the domain lowercased, and
an IDNA domain (``xn--`` labels) decoded to its Unicode form in NFC (``a@xn--mller-kva.de`` and
``a@MÜLLER.de`` both become ``a@müller.de``), because that is what people type into a contact.
Use ``normalize_address()`` on addresses typed by people so both sides compare equal. An
address the RFC 5322 parser cannot read cleanly (``Doe, John <j@x>`` yields "Doe" and a clean
``j@x``) is kept with ``ambiguous=True``, its raw text in ``name`` and an empty ``email``: it is
shown, never indexed or linked, because a guessed address would file mail under a stranger.

Part ids follow IMAP's numbering ("1", "2.1"): the n-th child of each multipart, counting from
1; a single-part message is "1". An attached message (message/rfc822) is one part.
"""
from __future__ import annotations

import binascii
import codecs
import dataclasses
import datetime as dt
import hashlib
import html as html_lib
import re
import unicodedata
from email import _header_value_parser as address_parser  # per-mailbox defects; headerregistry merges them per header
from email import errors as email_errors
from email.header import decode_header
from email.message import Message
from email.parser import BytesParser, HeaderParser
from email.policy import compat32
from email.utils import parsedate_to_datetime
from urllib.parse import unquote

import idna
import nh3

MIME_MAX_HEADER_BYTES = 256 * 1024
MIME_MAX_SUBJECT_CHARS = 998
MIME_MAX_ENCODED_WORDS = 100
MIME_MAX_HEADER_VALUE_CHARS = 64 * 1024
MIME_MAX_ADDRESSES_PER_HEADER = 500
MIME_MAX_REFERENCES = 100
MIME_MAX_DEFECTS = 20
MIME_MAX_DEPTH = 32
MIME_MAX_PARTS = 500
MIME_MAX_PART_BYTES = 25 * 1024 * 1024
MIME_MAX_TOTAL_DECODED_BYTES = 100 * 1024 * 1024
MIME_MAX_TEXT_CHARS = 2_000_000
MIME_MAX_HEADERS = 1_000
MIME_SNIPPET_CHARS = 200
MIME_SEARCH_TEXT_CHARS = 200_000
MIME_SUBSTITUTE_ID_DOMAIN = "skydesk.invalid"
UNREADABLE_SUBJECT = "(unreadable message)"

ADDRESS_ROLES = ("from", "sender", "reply-to", "to", "cc", "bcc")
# Spam and broken clients write dates decades off; a date a week ahead is the most clock skew we trust.
_EARLIEST_DATE = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
_FUTURE_TOLERANCE = dt.timedelta(days=7)

_ENCODED_WORD = re.compile(r"=\?[^?\s]+\?[qQbB]\?[^?\s]*\?=")
_MSG_ID = re.compile(r"<[^<>\s]+>")
_FOLDING = re.compile(r"\r?\n(?=[ \t])")
_DOT_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
_ADDR_SPEC = _DOT_ATOM + r"@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+"
_SIMPLE_ADDRESS = re.compile(
    r"[ \t]*(?:(?P<name>\"[^\"\\\r\n]*\"|[A-Za-z0-9!#$%&'*+/=?^_`{|}~ \t-]*?)[ \t]*"
    rf"<(?P<address>{_ADDR_SPEC})>|(?P<bare>{_ADDR_SPEC}))[ \t]*(?:,|$)"
)
_HEADER_END = re.compile(rb"\r?\n\r?\n")
_WHITESPACE = re.compile(r"\s+")
_DECLARATION_START = re.compile(rb"boundary")
_DECLARATION = re.compile(rb'(?i)boundary\s*=\s*(?:"([^"\r\n]*)"|([^\s;"]+))')
_DELIMITER_START = re.compile(rb"\n--")
_BLOCK_TAG = re.compile(r"(?i)<\s*(br|/p|/div|/tr|/h[1-6]|/li|/table|/blockquote|hr)\b[^>]*>")
_BLANK_LINES = re.compile(r"\n[ \t]*\n(?:[ \t]*\n)+")
_SPACES = re.compile(r"[ \t\u00a0]+")


@dataclasses.dataclass(frozen=True)
class Address:
    """One address from an address header; ``email`` is empty when the text was ambiguous."""

    role: str
    name: str
    email: str
    ambiguous: bool = False


@dataclasses.dataclass
class Envelope:
    """What delivery, listing, filters and linking need, read from the header block only."""

    subject: str = ""
    addresses: list[Address] = dataclasses.field(default_factory=list)
    date: dt.datetime | None = None
    message_id: str = ""
    message_id_substituted: bool = False
    in_reply_to: str | None = None
    references: list[str] = dataclasses.field(default_factory=list)
    has_attachments: bool = False
    size: int = 0
    parse_defects: list[str] = dataclasses.field(default_factory=list)

    def addresses_for(self, role: str) -> list[Address]:
        """Return the addresses of one role ("from", "to", ...), in header order."""
        return [address for address in self.addresses if address.role == role]


@dataclasses.dataclass(frozen=True)
class Part:
    """A leaf MIME part other than the displayed body; ``part_id`` fetches it again via get_part()."""

    part_id: str
    content_type: str
    filename: str | None
    size: int
    content_id: str | None
    disposition: str | None
    is_inline: bool


@dataclasses.dataclass
class ParsedMessage:
    """A fully parsed message for the message view and the search index."""

    envelope: Envelope
    headers: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    text: str = ""
    html: str | None = None
    parts: list[Part] = dataclasses.field(default_factory=list)
    snippet: str = ""
    defects: list[str] = dataclasses.field(default_factory=list)

    @property
    def attachments(self) -> list[Part]:
        """Parts to list as downloadable attachments (not shown inside the HTML body)."""
        return [part for part in self.parts if not part.is_inline]

    @property
    def inline_parts(self) -> list[Part]:
        """Parts the HTML body shows through cid: references."""
        return [part for part in self.parts if part.is_inline]


class _Defects(list):
    """A list of defect strings that stops growing at MIME_MAX_DEFECTS."""

    def add(self, text: str) -> None:
        if len(self) < MIME_MAX_DEFECTS and text not in self:
            self.append(text)


# ---------------------------------------------------------------------------------------------
# Small decoding helpers


def decode_bytes(data: bytes, charset: str | None) -> str:
    """Decode bytes in a declared charset, falling back to UTF-8 then Latin-1, never raising."""
    if charset:
        try:
            codec = codecs.lookup(charset.strip().strip('"').lower())
        except (LookupError, ValueError):
            codec = None
        if codec is not None and codec.name not in ("utf-7",):
            # UTF-7 is excluded because it can smuggle "<" and ">" past naive filters.
            try:
                return data.decode(codec.name)
            except (UnicodeDecodeError, ValueError):
                pass
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def decode_header_value(value: str, defects: _Defects | None = None) -> str:
    """Decode RFC 2047 encoded words in a header value, bounded in words and length."""
    value = value[:MIME_MAX_HEADER_VALUE_CHARS]
    if "=?" not in value:
        return _WHITESPACE.sub(" ", value).strip()
    # decode_header() grows quadratically with the number of encoded words: decode only the
    # first MIME_MAX_ENCODED_WORDS and keep the rest of the text out.
    matches = _ENCODED_WORD.finditer(value)
    for count, match in enumerate(matches, start=1):
        if count == MIME_MAX_ENCODED_WORDS:
            if next(matches, None) is not None:
                value = value[: match.end()]
                if defects is not None:
                    defects.add(f"more than {MIME_MAX_ENCODED_WORDS} encoded words; header truncated")
            break
    try:
        chunks = decode_header(value)
    except (email_errors.HeaderParseError, ValueError, LookupError, binascii.Error):
        return _WHITESPACE.sub(" ", value).strip()
    pieces = []
    previous_encoded = False
    for chunk, charset in chunks:
        encoded = charset is not None
        if isinstance(chunk, str):
            text = chunk
        else:
            text = decode_bytes(chunk, charset) if encoded else chunk.decode("utf-8", "replace")
        if pieces and not (encoded and previous_encoded):
            # decode_header() drops the whitespace between encoded and plain chunks.
            pieces.append(" ")
        pieces.append(text)
        previous_encoded = encoded
    return _WHITESPACE.sub(" ", "".join(pieces)).strip()


def normalize_email(local_part: str, domain: str) -> str | None:
    """Return the normalized address for a local part and domain, or None when either is unusable."""
    local_part = local_part.strip()
    domain = domain.strip().rstrip(".")
    if not local_part or not domain or _WHITESPACE.search(local_part + domain):
        return None
    if "@" in domain or "@" in local_part or domain.startswith(".") or ".." in domain:
        return None
    if domain.startswith("[") and domain.endswith("]"):
        return f"{local_part.lower()}@{domain.lower()}"
    labels = []
    for label in domain.lower().split("."):
        if label.startswith("xn--"):
            try:
                label = idna.decode(label)
            except (idna.IDNAError, UnicodeError, ValueError):
                pass  # kept as sent: an undecodable A-label is still a stable key
        labels.append(label)
    normalized_domain = unicodedata.normalize("NFC", ".".join(labels))
    return f"{unicodedata.normalize('NFC', local_part.lower())}@{normalized_domain}"


def normalize_address(text: str) -> str | None:
    """Normalize a bare addr-spec typed by a person (as for a CRM contact), or None if it is not one."""
    local_part, at, domain = text.strip().rpartition("@")
    if not at:
        return None
    return normalize_email(local_part, domain)


def _parse_simple_addresses(role: str, value: str, defects: _Defects) -> list[Address] | None:
    """Parse the common plain forms by pattern, or return None to let the strict parser decide.

    The strict parser costs about 40 us per address, most of delivery's time; the forms accepted
    here (dot-atom addresses, quoted names without escapes, atom and encoded-word names) parse the
    same either way, which tests/services/test_mime.py checks.
    """
    addresses = []
    position = 0
    for match in _SIMPLE_ADDRESS.finditer(value):
        if match.start() != position:
            return None
        position = match.end()
        email = normalize_email(*(match.group("address") or match.group("bare")).rsplit("@", 1))
        if email is None:
            return None
        name = match.group("name") or ""
        if name.startswith('"'):
            name = name[1:-1]
        name = decode_header_value(name, defects) if "=?" in name else _WHITESPACE.sub(" ", name).strip()
        addresses.append(Address(role, name[:300], email))
        if len(addresses) >= MIME_MAX_ADDRESSES_PER_HEADER:
            return addresses
    if position != len(value) or not addresses:
        return None
    return addresses


def _parse_addresses(role: str, value: str, defects: _Defects) -> list[Address]:
    """Parse one address header strictly; anything not clearly an address is flagged, not guessed."""
    value = _FOLDING.sub(" ", value[:MIME_MAX_HEADER_VALUE_CHARS])
    if not value.strip():
        return []
    simple = _parse_simple_addresses(role, value, defects)
    if simple is not None:
        return simple
    return _parse_addresses_strict(role, value, defects)


def _parse_addresses_strict(role: str, value: str, defects: _Defects) -> list[Address]:
    """Parse an address header with the email package's RFC 5322 parser, flagging what is unclear."""
    try:
        address_list, rest = address_parser.get_address_list(value)
    except (email_errors.HeaderParseError, IndexError, ValueError, TypeError, RecursionError):
        defects.add(f"{role}: unparseable address header")
        return [Address(role, _WHITESPACE.sub(" ", value).strip()[:300], "", True)]
    addresses = []
    for mailbox in address_list.all_mailboxes[:MIME_MAX_ADDRESSES_PER_HEADER]:
        name = mailbox.display_name or ""
        email = None
        serious_defects = [
            d for d in mailbox.all_defects if not isinstance(d, email_errors.ObsoleteHeaderDefect)
        ]
        if mailbox.token_type == "mailbox" and not serious_defects:
            email = normalize_email(mailbox.local_part or "", mailbox.domain or "")
        if email is None:
            defects.add(f"{role}: ambiguous address")
            addresses.append(Address(role, _WHITESPACE.sub(" ", str(mailbox)).strip()[:300], "", True))
        else:
            addresses.append(Address(role, _WHITESPACE.sub(" ", name).strip()[:300], email))
    leftover = str(rest).strip() if rest else ""
    if leftover:
        defects.add(f"{role}: unparsed text after addresses")
        addresses.append(Address(role, leftover[:300], "", True))
    return addresses


def _normalize_message_id(value: str | None) -> str | None:
    """Return the first <id> of a Message-ID-like header, adding brackets to a bare token."""
    if not value:
        return None
    match = _MSG_ID.search(value)
    if match:
        return match.group(0)
    token = value.strip().split()
    if len(token) == 1 and len(token[0]) < 500:
        return f"<{token[0]}>"
    return None


def _parse_date(value: str | None, defects: _Defects) -> dt.datetime | None:
    """Parse a Date header into aware UTC, or None when missing, unparsable or absurd."""
    if not value:
        return None
    try:
        parsed = parsedate_to_datetime(value.strip())
    except (TypeError, ValueError, IndexError, OverflowError):
        defects.add("unparseable Date")
        return None
    if parsed is None:
        return None
    if parsed.tzinfo is None:  # "-0000" means UTC with unknown local zone (RFC 5322 3.3)
        parsed = parsed.replace(tzinfo=dt.timezone.utc)
    try:
        parsed = parsed.astimezone(dt.timezone.utc)
    except (OverflowError, ValueError):
        defects.add("absurd Date")
        return None
    if parsed < _EARLIEST_DATE or parsed > dt.datetime.now(dt.timezone.utc) + _FUTURE_TOLERANCE:
        defects.add("absurd Date")
        return None
    return parsed


def _split_header_block(raw: bytes, defects: _Defects) -> bytes:
    """Return the header block (up to the first blank line), capped at MIME_MAX_HEADER_BYTES."""
    if raw.startswith((b"\r\n", b"\n")):
        return b""
    match = _HEADER_END.search(raw, 0, MIME_MAX_HEADER_BYTES + 4)
    if match:
        return raw[: match.start()]
    if len(raw) <= MIME_MAX_HEADER_BYTES:
        return raw
    defects.add(f"header block larger than {MIME_MAX_HEADER_BYTES} bytes; truncated")
    # Cut mid-line on purpose: one giant header (a Subject) keeps its beginning.
    return raw[:MIME_MAX_HEADER_BYTES]


def _decode_header_block(block: bytes, defects: _Defects) -> str:
    """Decode raw header bytes; 8-bit bytes are read as UTF-8, per line falling back to Latin-1."""
    try:
        return block.decode("ascii")
    except UnicodeDecodeError:
        pass
    defects.add("8-bit bytes in headers")
    try:
        return block.decode("utf-8")
    except UnicodeDecodeError:
        lines = block.split(b"\n")
        return "\n".join(decode_bytes(line, None) for line in lines)


def _read_headers(raw: bytes, defects: _Defects) -> Message:
    """Parse only the header block with the fast compat32 parser."""
    text = _decode_header_block(_split_header_block(raw, defects), defects)
    # NUL and other C0 controls are never valid in headers and confuse later consumers.
    text = text.replace("\x00", "")
    return HeaderParser(policy=compat32).parsestr(text + "\n", headersonly=True)


def _header(headers: Message, name: str) -> str | None:
    """Return the first value of a header as a plain str, whatever the parser gave back."""
    try:
        value = headers.get(name)
    except Exception:  # noqa: BLE001 - compat32 may return Header objects for odd input
        return None
    if value is None:
        return None
    return str(value)


class _HeaderIndex:
    """A parsed header block by lower-case name: Message.get() scans every header per call."""

    def __init__(self, headers: Message):
        self.fields: dict[str, list] = {}
        for name, value in headers.items():
            self.fields.setdefault(name.lower(), []).append(value)

    def get(self, name: str):
        values = self.fields.get(name)
        return values[0] if values else None

    def get_all(self, name: str):
        return self.fields.get(name)


def _envelope_from_headers(raw: bytes, headers: Message, defects: _Defects) -> Envelope:
    """Build the Envelope from already-parsed headers."""
    try:
        headers = _HeaderIndex(headers)
    except Exception:  # noqa: BLE001 - odd values: read them one by one, as _header() does
        pass
    envelope = Envelope(size=len(raw))
    subject = _header(headers, "subject")
    if subject is not None:
        envelope.subject = decode_header_value(subject, defects)[:MIME_MAX_SUBJECT_CHARS]
    for role in ADDRESS_ROLES:
        for value in (headers.get_all(role) or [])[:10]:
            envelope.addresses.extend(_parse_addresses(role, str(value), defects))
    envelope.date = _parse_date(_header(headers, "date"), defects)
    message_id = _normalize_message_id(_header(headers, "message-id"))
    if message_id is None:
        # A substitute derived from the bytes, so that fetching the same bytes again deduplicates.
        message_id = f"<{hashlib.sha256(raw).hexdigest()}@{MIME_SUBSTITUTE_ID_DOMAIN}>"
        envelope.message_id_substituted = True
        defects.add("missing Message-ID")
    envelope.message_id = message_id
    envelope.in_reply_to = _normalize_message_id(_header(headers, "in-reply-to"))
    references = _MSG_ID.findall((_header(headers, "references") or "")[:MIME_MAX_HEADER_VALUE_CHARS])
    if len(references) > MIME_MAX_REFERENCES:
        # Threading needs the root and the nearest parents: keep both ends.
        references = references[:1] + references[-(MIME_MAX_REFERENCES - 1):]
    envelope.references = references
    content_type = (_header(headers, "content-type") or "").lower()
    disposition = (_header(headers, "content-disposition") or "").lower()
    main_type = content_type.split(";", 1)[0].strip()
    envelope.has_attachments = (
        main_type in ("multipart/mixed", "multipart/report")
        or disposition.startswith("attachment")
        or (bool(main_type) and not main_type.startswith(("text/", "multipart/")))
    )
    return envelope


def parse_envelope(raw: bytes) -> Envelope:
    """Read the header block of a raw message quickly and tolerantly, for delivery."""
    defects = _Defects()
    try:
        headers = _read_headers(raw, defects)
        envelope = _envelope_from_headers(raw, headers, defects)
    except Exception as error:  # noqa: BLE001 - delivery must store any bytes it is given
        defects.add(f"header parse failed: {type(error).__name__}")
        envelope = Envelope(
            subject=UNREADABLE_SUBJECT,
            size=len(raw),
            message_id=f"<{hashlib.sha256(raw).hexdigest()}@{MIME_SUBSTITUTE_ID_DOMAIN}>",
            message_id_substituted=True,
        )
    envelope.parse_defects = list(defects)
    return envelope


def envelope_as_json(envelope: Envelope) -> dict:
    """The envelope as plain JSON values, to keep beside bytes parsed once (envelope_from_json)."""
    data = dataclasses.asdict(envelope)
    data["date"] = envelope.date.isoformat() if envelope.date else None
    return data


def envelope_from_json(data: dict) -> Envelope:
    """The envelope envelope_as_json kept, as parse_envelope gave it."""
    fields = dict(data)
    fields["addresses"] = [Address(**address) for address in fields.get("addresses", ())]
    fields["date"] = dt.datetime.fromisoformat(fields["date"]) if fields.get("date") else None
    return Envelope(**fields)


# ---------------------------------------------------------------------------------------------
# Full parse


def _bound_structure(raw: bytes, defects: _Defects) -> bytes:
    """Cut the raw message where multipart nesting or the part count exceeds its bound.

    The email package recurses once per nesting level (RecursionError near 1,000) and keeps
    every part in memory, so the bounds are enforced on the bytes before it sees them. The scan
    follows declared boundaries and delimiter lines only; it is not a MIME parser.
    """
    lowered = raw.lower()
    if b"boundary" not in lowered:
        return raw
    # Two literal scans merged by position are ~20x faster than one regex with alternatives.
    events = [(m.start(), 0) for m in _DECLARATION_START.finditer(lowered)]
    events += [(m.start() + 1, 1) for m in _DELIMITER_START.finditer(raw)]
    if raw.startswith(b"--"):
        events.append((0, 1))
    events.sort()
    header_end_match = _HEADER_END.search(raw)
    header_end = header_end_match.end() if header_end_match else len(raw)
    open_boundaries: list[bytes] = []
    part_count = 0
    last_delimiter_start = 0
    for position, kind in events:
        if kind == 0:
            declaration = _DECLARATION.match(raw, position)
            if declaration is None or not _in_content_type_header(lowered, position):
                continue  # "boundary=" in body text declares nothing
            open_boundaries.append((declaration.group(1) or declaration.group(2) or b"").strip())
            if len(open_boundaries) > MIME_MAX_DEPTH:
                defects.add(f"multipart nested deeper than {MIME_MAX_DEPTH}; inner parts dropped")
                return raw[: max(last_delimiter_start, header_end)]
            continue
        line_end = raw.find(b"\n", position)
        delimiter = raw[position + 2 : line_end if line_end >= 0 else len(raw)].rstrip(b" \t\r")
        if delimiter in open_boundaries:
            del open_boundaries[open_boundaries.index(delimiter) + 1:]
            part_count += 1
            if part_count > MIME_MAX_PARTS:
                defects.add(f"more than {MIME_MAX_PARTS} parts; the rest dropped")
                return raw[:position]
            last_delimiter_start = position
        elif delimiter.endswith(b"--") and delimiter[:-2] in open_boundaries:
            del open_boundaries[open_boundaries.index(delimiter[:-2]):]
    return raw


def _in_content_type_header(lowered: bytes, position: int) -> bool:
    """Tell whether the parameter at `position` sits in a Content-Type header (folded lines included)."""
    header_start = lowered.rfind(b"content-type:", max(0, position - 4096), position)
    if header_start < 0 or (header_start > 0 and lowered[header_start - 1 : header_start] != b"\n"):
        return False
    return _HEADER_END.search(lowered, header_start, position) is None


def _parse_full(raw: bytes, defects: _Defects) -> Message:
    """Parse the whole message with compat32 after bounding its structure."""
    bounded = _bound_structure(raw, defects)
    message = BytesParser(policy=compat32).parsebytes(bounded)
    return message


def _iter_leaves(message: Message, defects: _Defects):
    """Yield (part_id, part) for every leaf part in document order, with IMAP-style ids ("1", "2.1")."""
    if not (message.is_multipart() and message.get_content_maintype() == "multipart"):
        yield "1", message
        return
    yield from _iter_leaves_under("", message, 0, defects, [0])


def _iter_leaves_under(prefix: str, node: Message, depth: int, defects: _Defects, count_box: list[int]):
    """Recursive helper of _iter_leaves; depth is bounded by MIME_MAX_DEPTH so recursion is safe."""
    children = node.get_payload()
    if not isinstance(children, list):
        return
    for index, child in enumerate(children, start=1):
        if not isinstance(child, Message):
            continue
        part_id = f"{prefix}.{index}" if prefix else str(index)
        if child.is_multipart() and child.get_content_maintype() == "multipart":
            if depth + 1 >= MIME_MAX_DEPTH:
                defects.add(f"multipart nested deeper than {MIME_MAX_DEPTH}; inner parts dropped")
                continue
            yield from _iter_leaves_under(part_id, child, depth + 1, defects, count_box)
        else:
            count_box[0] += 1
            if count_box[0] > MIME_MAX_PARTS:
                defects.add(f"more than {MIME_MAX_PARTS} parts; the rest dropped")
                return
            yield part_id, child
        if count_box[0] > MIME_MAX_PARTS:
            return


def _encoded_payload(part: Message) -> bytes:
    """Return the still-encoded payload of a leaf part as bytes."""
    payload = part.get_payload()
    if isinstance(payload, list):  # message/rfc822 carries a parsed message
        try:
            return payload[0].as_bytes() if payload else b""
        except Exception:  # noqa: BLE001 - re-serializing a broken inner message may fail
            return b""
    if isinstance(payload, str):
        # Only reached for transfer-encoded (ASCII) payloads and sizes; 8-bit bodies go through
        # get_payload(decode=True), since get_payload() replaces their raw bytes.
        return payload.encode("utf-8", "surrogateescape")
    return payload or b""


def _decode_payload(part: Message, defects: _Defects) -> bytes:
    """Decode a leaf part's transfer encoding; broken base64 and quoted-printable decode what they can."""
    payload = part.get_payload()
    if isinstance(payload, list):
        return _encoded_payload(part)
    if len(payload or "") > MIME_MAX_PART_BYTES * 4 // 3 + 1024:
        defects.add(f"part larger than {MIME_MAX_PART_BYTES} bytes; not decoded")
        return b""
    try:
        # compat32 decodes leniently (lost padding, stray characters) and keeps 8-bit bytes as sent.
        decoded = part.get_payload(decode=True)
    except (ValueError, binascii.Error, UnicodeError):
        defects.add("undecodable part")
        return b""
    return decoded if isinstance(decoded, bytes) else b""


def _decoded_size(part: Message) -> int:
    """Estimate a part's decoded size without decoding it (exact for clean base64)."""
    encoded = _encoded_payload(part)
    cte = str(part.get("content-transfer-encoding", "")).strip().lower()
    if cte == "base64":
        data_chars = len(encoded) - sum(encoded.count(c) for c in (b"\r", b"\n", b" ", b"\t"))
        padding = encoded.rstrip()[-2:].count(b"=")
        return max(0, data_chars * 3 // 4 - padding)
    if cte == "quoted-printable" or isinstance(part.get_payload(), list):
        return len(encoded)  # an estimate: decoding every attachment to list it costs too much
    decoded = part.get_payload(decode=True)
    return len(decoded) if isinstance(decoded, bytes) else 0


def _part_filename(part: Message, defects: _Defects) -> str | None:
    """Return a part's decoded filename (RFC 2231 or RFC 2047 forms), or None."""
    try:
        filename = part.get_filename()
    except Exception:  # noqa: BLE001 - malformed RFC 2231 parameters
        defects.add("unreadable filename")
        return None
    if not filename:
        return None
    filename = decode_header_value(str(filename), defects)
    # Path separators and control characters make no sense in a download name.
    filename = re.sub(r"[\x00-\x1f/\\]", "_", filename).strip()
    return filename[:255] or None


def _content_type(part: Message) -> str:
    """Return the part's lowercased content type, defaulting like RFC 2045 says."""
    try:
        return part.get_content_type()
    except Exception:  # noqa: BLE001
        return "application/octet-stream"


def _content_id(part: Message) -> str | None:
    """Return the Content-ID without angle brackets, or None."""
    value = part.get("content-id")
    if value is None:
        return None
    value = str(value).strip()
    if value.startswith("<") and value.endswith(">"):
        value = value[1:-1]
    return value.strip() or None


def html_to_text(html: str) -> str:
    """Derive readable plain text from an HTML body (tags and scripts removed, lines kept)."""
    with_breaks = _BLOCK_TAG.sub("\n", html[:MIME_MAX_TEXT_CHARS])
    stripped = nh3.clean(with_breaks, tags=set(), attributes={})
    text = html_lib.unescape(stripped)
    text = _SPACES.sub(" ", text)
    text = "\n".join(line.strip() for line in text.splitlines())
    return _BLANK_LINES.sub("\n\n", text).strip()


def _snippet(text: str) -> str:
    """Return the first MIME_SNIPPET_CHARS of text with whitespace collapsed."""
    return _WHITESPACE.sub(" ", text[: MIME_SNIPPET_CHARS * 8]).strip()[:MIME_SNIPPET_CHARS]


def _is_attachment(part: Message) -> bool:
    """Tell whether a text part is sent as an attachment rather than as the body."""
    disposition = str(part.get("content-disposition", "")).lower()
    return disposition.startswith("attachment") or (
        bool(part.get_param("name")) and not disposition.startswith("inline")
    )


def _disposition(part: Message) -> str | None:
    """Return 'attachment', 'inline' or None from Content-Disposition."""
    value = str(part.get("content-disposition", "")).split(";", 1)[0].strip().lower()
    return value or None


def parse_message(raw: bytes) -> ParsedMessage:
    """Parse a whole message for viewing and indexing, within fixed bounds, never raising."""
    envelope = parse_envelope(raw)
    defects = _Defects(envelope.parse_defects)
    parsed = ParsedMessage(envelope=envelope)
    try:
        message = _parse_full(raw, defects)
        _fill_parsed(parsed, message, defects)
    except Exception as error:  # noqa: BLE001 - the view must show something for any stored bytes
        defects.add(f"body parse failed: {type(error).__name__}")
        if not envelope.subject:
            envelope.subject = UNREADABLE_SUBJECT
    parsed.defects = list(defects)
    return parsed


def _fill_parsed(parsed: ParsedMessage, message: Message, defects: _Defects) -> None:
    """Fill headers, bodies and parts of a ParsedMessage from a parsed message tree."""
    for name, value in message.items()[:MIME_MAX_HEADERS]:
        parsed.headers.append((str(name), decode_header_value(_header_text(value), defects)))
    for defect in message.defects[:10]:
        defects.add(type(defect).__name__)
    html_cids: set[str] = set()
    leaves = list(_iter_leaves(message, defects))
    total_decoded = 0
    text = None
    for part_id, part in leaves:
        content_type = _content_type(part)
        if content_type in ("text/plain", "text/html") and not _is_attachment(part):
            if (content_type == "text/plain" and text is None) or (
                content_type == "text/html" and parsed.html is None
            ):
                data = _decode_payload(part, defects)
                total_decoded += len(data)
                body = decode_bytes(data, _safe_charset(part))[:MIME_MAX_TEXT_CHARS]
                if content_type == "text/plain":
                    text = body
                else:
                    parsed.html = body
                continue
    if parsed.html:
        html_cids = {
            _unquote_cid(cid).lower() for cid in re.findall(r"""(?i)cid:([^"'\s)>]+)""", parsed.html)
        }
    for part_id, part in leaves:
        content_type = _content_type(part)
        if content_type in ("text/plain", "text/html") and not _is_attachment(part):
            continue
        for defect in part.defects[:5]:
            defects.add(type(defect).__name__)
        content_id = _content_id(part)
        size = _decoded_size(part)
        total_decoded += size
        if total_decoded > MIME_MAX_TOTAL_DECODED_BYTES:
            defects.add(f"more than {MIME_MAX_TOTAL_DECODED_BYTES} decoded bytes; the rest dropped")
            break
        parsed.parts.append(
            Part(
                part_id=part_id,
                content_type=content_type,
                filename=_part_filename(part, defects),
                size=size,
                content_id=content_id,
                disposition=_disposition(part),
                is_inline=bool(content_id) and content_id.lower() in html_cids,
            )
        )
    # The text-only part of an HTML mail that lists text and html parts shown separately is fine;
    # when there is no plain part, derive it from the HTML so search and snippets still work.
    if text is None and parsed.html:
        text = html_to_text(parsed.html)
    parsed.text = text or ""
    parsed.snippet = _snippet(parsed.text)


def _header_text(value: object) -> str:
    """Return a header value from compat32 as text (it yields Header objects for 8-bit input)."""
    if isinstance(value, str):
        return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace") if _has_surrogates(value) else value
    try:
        return str(value)
    except Exception:  # noqa: BLE001
        return ""


def _has_surrogates(value: str) -> bool:
    """Tell whether a str carries surrogate-escaped raw bytes."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _safe_charset(part: Message) -> str | None:
    """Return the declared charset of a part, or None when the header is unreadable."""
    try:
        return part.get_content_charset()
    except Exception:  # noqa: BLE001
        return None


def _unquote_cid(value: str) -> str:
    """Undo URL quoting of a cid: reference (RFC 2392 allows %-escapes)."""
    return unquote(value)


def _find_part(message: Message, part_id: str, defects: _Defects) -> Message | None:
    """Return the leaf part with this id, as numbered by _iter_leaves."""
    for candidate_id, part in _iter_leaves(message, defects):
        if candidate_id == part_id:
            return part
    return None


def get_part(raw: bytes, part_id: str) -> tuple[str, str | None, bytes] | None:
    """Return (content type, filename, decoded bytes) of one part, or None if there is no such part."""
    defects = _Defects()
    try:
        message = _parse_full(raw, defects)
        part = _find_part(message, part_id, defects)
        if part is None:
            return None
        return _content_type(part), _part_filename(part, defects), _decode_payload(part, defects)
    except Exception:  # noqa: BLE001 - a broken message has no fetchable part rather than an error
        return None


def find_content_id(raw: bytes, cid: str) -> str | None:
    """Return the part id whose Content-ID matches a cid: reference, or None."""
    wanted = _unquote_cid(cid.strip().removeprefix("cid:")).strip("<>").lower()
    if not wanted:
        return None
    defects = _Defects()
    try:
        message = _parse_full(raw, defects)
        for part_id, part in _iter_leaves(message, defects):
            content_id = _content_id(part)
            if content_id and content_id.lower() == wanted:
                return part_id
    except Exception:  # noqa: BLE001
        return None
    return None


def search_text(raw: bytes) -> str:
    """Return subject, addresses, attachment names and body text for the full-text index, bounded."""
    return search_text_of(parse_message(raw))


def search_text_of(parsed: ParsedMessage) -> str:
    """search_text() for a message already parsed, so an index job parses each message once."""
    lines = [parsed.envelope.subject]
    for address in parsed.envelope.addresses:
        lines.append(f"{address.name} {address.email}".strip())
    lines.extend(part.filename for part in parsed.parts if part.filename)
    lines.append(parsed.text)
    return "\n".join(lines)[:MIME_SEARCH_TEXT_CHARS]
