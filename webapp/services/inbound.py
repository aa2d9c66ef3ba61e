"""Rules of the inbound listener: who we accept mail for, who may submit, and the replies.

Plain functions over a SQLAlchemy session, shared by the listener (`worker/inbound.py`) and
its tests. Every reply is a full SMTP status line with an RFC 3463 enhanced code, chosen so
that the sending MTA does the right thing: 5xx means "bounce, retrying cannot help", 4xx
means "keep it queued and try later" (nothing may be lost on our side).
"""
from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass

import redis
from sqlalchemy import select
from sqlalchemy.orm import Session

from webapp.models import Domain, MailAccount, User
from webapp.services import ipfilter, quota, throttle
from webapp.services.audit import record
from webapp.services.passwords import verify_password

# Unknown and disabled mailboxes get the same answer, so the reply does not tell a
# prober which addresses belong to someone who left.
REPLY_UNKNOWN_MAILBOX = "550 5.1.1 mailbox unavailable"
# We are the final destination for hosted domains only; anything else is a relay attempt.
REPLY_RELAY_DENIED = "550 5.7.1 relaying denied"
REPLY_BAD_ADDRESS = "553 5.1.3 malformed recipient address"
REPLY_MAILBOX_FULL = "452 4.2.2 mailbox full"
REPLY_TOO_MANY_RECIPIENTS = "452 4.5.3 too many recipients"
REPLY_TOO_BIG = "552 5.3.4 message too big"
REPLY_TEMPORARY = "451 4.3.0 temporary failure, try again later"
REPLY_OK_RECIPIENT = "250 2.1.5 recipient ok"
REPLY_AUTH_OK = "235 2.7.0 authentication successful"
REPLY_AUTH_FAILED = "535 5.7.8 authentication credentials invalid"
REPLY_AUTH_PASSWORD_CHANGE = ("535 5.7.8 you must choose a new password: log in on the web "
                              "first to choose it, then use it here")
REPLY_AUTH_THROTTLED = "454 4.7.0 too many failed logins, try again later"
REPLY_AUTH_NEEDS_TLS = "538 5.7.11 encryption required for authentication (use STARTTLS)"
REPLY_AUTH_REQUIRED = "530 5.7.0 authentication required"
REPLY_SENDER_NOT_YOURS = "553 5.7.1 sender address is not one of yours"
REPLY_SENDER_OK = "250 2.1.0 sender ok"


@dataclass(frozen=True)
class RecipientCheck:
    """The answer to one RCPT: the reply line, and the account when it is accepted."""

    reply: str
    account_id: int | None = None
    address: str = ""  # the hosted address it resolved to (lowercase)

    @property
    def accepted(self) -> bool:
        """Whether the recipient was accepted (a 2xx reply)."""
        return self.reply.startswith("2")


@dataclass(frozen=True)
class SubmitterCheck:
    """The answer to one AUTH on the submission port."""

    reply: str
    user_id: int | None = None
    email: str = ""

    @property
    def accepted(self) -> bool:
        """Whether the login succeeded."""
        return self.user_id is not None


def split_address(address: str) -> tuple[str, str] | None:
    """(local part, domain) of an envelope address, lowercased; None when it has no domain."""
    local, at, domain = (address or "").strip().rpartition("@")
    domain = domain.lower().rstrip(".")
    if not at or not local or not domain:
        return None
    return local.lower(), domain


def _domain_forms(domain: str) -> set[str]:
    """The domain as typed and in IDNA form: SMTPUTF8 peers may send U-labels."""
    forms = {domain}
    try:
        forms.add(domain.encode("idna").decode("ascii"))
    except UnicodeError:
        pass
    return forms


def check_recipient(session: Session, address: str,
                    declared_size: int | None = None) -> RecipientCheck:
    """Decide one RCPT TO for delivery: an enabled hosted mailbox with room, or a refusal.

    `user+tag@domain` reaches `user@domain` when no mailbox has the full address, and
    `postmaster@domain` (which RFC 5321 section 4.5.1 requires) reaches the organization's
    first admin when nobody has that address.
    """
    parts = split_address(address)
    if parts is None:
        return RecipientCheck(REPLY_BAD_ADDRESS)
    local, domain = parts
    hosted = session.scalar(select(Domain).where(Domain.name.in_(_domain_forms(domain))))
    if hosted is None:
        return RecipientCheck(REPLY_RELAY_DENIED)
    candidates = [f"{local}@{hosted.name}"]
    if "+" in local.strip("+"):
        candidates.append(f"{local.split('+', 1)[0]}@{hosted.name}")
    base = select(MailAccount.id, User.id, User.is_disabled, MailAccount.email) \
        .join(User, User.id == MailAccount.user_id) \
        .where(MailAccount.kind == "hosted", User.org_id == hosted.org_id)
    queries = [base.where(MailAccount.email == candidate) for candidate in candidates]
    if local == "postmaster":
        queries.append(base.where(User.is_admin.is_(True), User.is_disabled.is_(False))
                       .order_by(User.id).limit(1))
    for query in queries:
        row = session.execute(query).first()
        if row is None:
            continue
        account_id, user_id, disabled, email = row
        if disabled:
            return RecipientCheck(REPLY_UNKNOWN_MAILBOX)
        # Refusing at RCPT (with the size the client declared) spares sending the data;
        # 452 is temporary: the MTA keeps the message and tries again once there is room.
        if not quota.has_room(session, user_id, max(declared_size or 0, 1)):
            return RecipientCheck(REPLY_MAILBOX_FULL)
        return RecipientCheck(REPLY_OK_RECIPIENT, account_id, email)
    return RecipientCheck(REPLY_UNKNOWN_MAILBOX)


def hosted_account_usable(session: Session, account_id: int) -> MailAccount | None:
    """The hosted account if it and its user still exist and the user is enabled."""
    account = session.get(MailAccount, account_id)
    if account is None or account.kind != "hosted":
        return None
    user = session.get(User, account.user_id)
    if user is None or user.is_disabled:
        return None
    return account


def delivery_source_key(raw_sha256: str, recipient: str) -> str:
    """The source key of one inbound delivery: the exact bytes and the mailbox they are for.

    A sending MTA that retries after our 4xx sends the very same bytes (its queue file does
    not change), so the retry finds this key and stores nothing twice. Two different
    messages always differ in some byte (Message-ID, Date, Received lines), so both are
    stored, even when they carry the same Message-ID. The one thing this merges is a
    byte-identical copy to the same mailbox, which no reader could tell from the first.
    """
    digest = hashlib.sha256(f"{raw_sha256}\0{recipient.lower()}".encode()).hexdigest()
    return f"inbound:{digest}"


def combine_smtp_replies(replies: list[str]) -> str:
    """One reply for an SMTP transaction that delivered to several recipients.

    SMTP has a single reply after DATA: 250 only when every recipient has the message. Any
    other outcome is temporary (452 when every failure was a full mailbox), so the MTA
    retries; the recipients already stored are skipped then by their source keys, and a
    mailbox that went away meanwhile is refused at RCPT on the retry.
    """
    failures = [reply for reply in replies if not reply.startswith("2")]
    if not failures:
        return replies[0] if len(replies) == 1 else "250 2.0.0 delivered"
    if all(reply.startswith("552") for reply in failures):
        return failures[0]
    if all(reply.startswith("452") for reply in failures):
        return REPLY_MAILBOX_FULL
    return REPLY_TEMPORARY


def is_loopback(ip: str) -> bool:
    """Whether the peer connects from this machine (IPv4-mapped IPv6 included)."""
    try:
        address = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


def throttle_limits(config: Mapping) -> throttle.ThrottleLimits:
    """The login throttle limits of the web login, which submission shares."""
    return throttle.ThrottleLimits(window=config["LOGIN_THROTTLE_WINDOW"],
                                   per_account_ip=config["LOGIN_THROTTLE_PER_ACCOUNT_IP"],
                                   per_ip=config["LOGIN_THROTTLE_PER_IP"],
                                   per_account=config["LOGIN_THROTTLE_PER_ACCOUNT"])


def authenticate_submitter(session: Session, conn: redis.Redis, limits: throttle.ThrottleLimits,
                           login: str, password: str, ip: str) -> SubmitterCheck:
    """Check an AUTH login: password under the web login's throttle, the organization's IP
    allowlist, and no pending forced password change. A refusal from outside the allowlist
    adds an audit row to the session: the caller commits."""
    email = login.strip().lower()
    # Checked before the password: a blocked guesser learns nothing, even when right.
    if throttle.seconds_blocked(conn, limits, email, ip):
        return SubmitterCheck(REPLY_AUTH_THROTTLED)
    user = session.scalar(select(User).where(User.email == email))
    if user is None or not verify_password(user.password_hash, password) or user.is_disabled:
        throttle.record_failure(conn, limits, email, ip)
        return SubmitterCheck(REPLY_AUTH_FAILED)
    if not ipfilter.address_allowed(ip, ipfilter.org_networks(session, user.org_id)):
        # The organization's allowlist binds every way in, as on the web; the reply is the
        # wrong-password one, so a guesser outside the networks learns nothing.
        throttle.record_failure(conn, limits, email, ip)
        if ipfilter.should_audit_refusal(conn, user.id, ip):
            record(session, action="ip.refused_login", org_id=user.org_id, actor_id=user.id,
                   target=user.email, detail={"service": "submission"}, ip=ip)
        return SubmitterCheck(REPLY_AUTH_FAILED)
    if user.must_change_password:
        # The web forces the change at login; a mail client cannot, so it must not get round it.
        return SubmitterCheck(REPLY_AUTH_PASSWORD_CHANGE)
    throttle.record_success(conn, email, ip)
    return SubmitterCheck(REPLY_AUTH_OK, user.id, user.email)


def allowed_senders(session: Session, user_id: int) -> set[str]:
    """Envelope senders a user may submit with: hosted addresses and confirmed Send Mail As ones.

    The same rule as the outbox's (`queue_raw_submission`), checked at MAIL FROM so that a
    client learns it before sending the data.
    """
    from webapp.models.sending import SendIdentity

    hosted = session.scalars(select(MailAccount.email).where(
        MailAccount.user_id == user_id, MailAccount.kind == "hosted")).all()
    confirmed = session.scalars(select(SendIdentity.email).where(
        SendIdentity.user_id == user_id, SendIdentity.is_verified.is_(True))).all()
    return {email.lower() for email in (*hosted, *confirmed)}


def reply_text(text: str, limit: int = 400) -> str:
    """A message made safe for one SMTP reply line: ASCII, no line breaks, bounded."""
    flat = " ".join(text.split())
    return flat.encode("ascii", "replace").decode("ascii")[:limit]


def check_sender(session: Session, user_id: int, mail_from: str) -> str:
    """Decide MAIL FROM on the submission port: the user must be enabled and own the address."""
    user = session.get(User, user_id)
    if user is None or user.is_disabled:
        return REPLY_AUTH_REQUIRED
    if (mail_from or "").strip().lower() not in allowed_senders(session, user_id):
        return REPLY_SENDER_NOT_YOURS
    return REPLY_SENDER_OK
