"""User management rules of the control panel: add, edit, disable, delete, reset credentials.

Every function takes a session and plain values and never commits; the caller commits the
change together with its audit row. Credentials the admin hands over are either a one-time
password (the user must replace it at first login) or a single-use, expiring link; the
admin never learns the password the user finally chooses.
"""
from __future__ import annotations

import hashlib
import logging
import secrets
from datetime import datetime, timedelta

from sqlalchemy import case, delete, func, select, update
from sqlalchemy.orm import Session

from webapp.models import Blob, Message, Organization, User
from webapp.models._types import utcnow
from webapp.models.sending import OutgoingMessage
from webapp.models.security import TOKEN_PURPOSES, CredentialToken, RecoveryAddress
from webapp.services import crm_records, outbox
from webapp.services.directory import DirectoryError, create_user, normalize_email
from webapp.services.passwords import WeakPasswordError, check_strength, hash_password

log = logging.getLogger("skydesk.admin")

TOKEN_LIFETIMES = {"reset": timedelta(hours=1), "invite": timedelta(days=7)}
MAX_QUOTA_BYTES = 100 * 1024**4


class AdminRuleError(ValueError):
    """The action breaks a rule (last admin, oneself, quota below use); the message says which."""


class TokenInvalidError(ValueError):
    """The link is unknown, used or expired; one message for all, so nothing leaks."""

    def __init__(self) -> None:
        super().__init__("This link is not valid any more: it was already used, it expired, "
                         "or it was replaced by a newer one. Ask for a new link.")


def hash_token(raw: str) -> str:
    """The sha256 hex of a link token: what the database stores instead of the token."""
    return hashlib.sha256(raw.encode("utf-8", "surrogatepass")).hexdigest()


def generate_one_time_password(email: str = "") -> str:
    """A random password that passes the strength rule (for the user to replace at first login)."""
    while True:
        candidate = secrets.token_urlsafe(12)
        try:
            check_strength(candidate, email)
        except WeakPasswordError:
            continue
        return candidate


def end_sessions(user: User) -> None:
    """End every session of the user at once (their cookies carry the old version)."""
    user.session_version += 1


def close_open_tokens(session: Session, user_id: int) -> None:
    """Make every unused link of the user unusable (a newer credential replaces them)."""
    session.execute(update(CredentialToken)
                    .where(CredentialToken.user_id == user_id, CredentialToken.used_at.is_(None))
                    .values(used_at=utcnow()))


def issue_token(session: Session, user: User, purpose: str, *, created_by_id: int | None = None,
                lifetime: timedelta | None = None) -> str:
    """Create a single-use link token for the user (older open ones are closed); return it raw."""
    if purpose not in TOKEN_PURPOSES:
        raise ValueError(f"unknown token purpose {purpose!r}")
    close_open_tokens(session, user.id)
    raw = secrets.token_urlsafe(32)
    session.add(CredentialToken(org_id=user.org_id, user_id=user.id, purpose=purpose,
                                token_hash=hash_token(raw), created_by_id=created_by_id,
                                expires_at=utcnow() + (lifetime or TOKEN_LIFETIMES[purpose])))
    session.flush()
    return raw


def find_valid_token(session: Session, raw: str,
                     now: datetime | None = None) -> CredentialToken | None:
    """The unused, unexpired token for this raw value whose user is still enabled, or None."""
    if not raw or len(raw) > 200:
        return None
    token = session.scalar(select(CredentialToken)
                           .where(CredentialToken.token_hash == hash_token(raw)))
    if token is None or token.used_at is not None or token.expires_at <= (now or utcnow()):
        return None
    user = session.get(User, token.user_id)
    if user is None or user.is_disabled:
        return None
    return token


def redeem_token(session: Session, raw: str, new_password: str) -> User:
    """Set the user's password through a link; the link is spent and every session ends.

    Raises TokenInvalidError or WeakPasswordError; a link is spent only by a password
    that passes the strength rule.
    """
    token = find_valid_token(session, raw)
    if token is None:
        raise TokenInvalidError()
    user = session.get(User, token.user_id)
    check_strength(new_password, user.email)
    # Conditional UPDATE: of two requests racing with the same link only one wins.
    won = session.execute(update(CredentialToken)
                          .where(CredentialToken.id == token.id,
                                 CredentialToken.used_at.is_(None))
                          .values(used_at=utcnow())
                          .execution_options(synchronize_session=False)).rowcount
    if not won:
        raise TokenInvalidError()
    close_open_tokens(session, user.id)
    user.password_hash = hash_password(new_password)
    user.must_change_password = False
    end_sessions(user)
    session.flush()
    return user


def set_one_time_password(session: Session, user: User) -> str:
    """Give the user a one-time password they must change at first login; return it."""
    password = generate_one_time_password(user.email)
    user.password_hash = hash_password(password)
    user.must_change_password = True
    close_open_tokens(session, user.id)
    end_sessions(user)
    session.flush()
    return password


def get_org_user(session: Session, org_id: int, user_id: int) -> User | None:
    """The user with this id if it belongs to the organization (else None: a 404 for views)."""
    return session.scalar(select(User).where(User.id == user_id, User.org_id == org_id))


def enabled_admin_count(session: Session, org_id: int, excluding: int | None = None) -> int:
    """How many enabled admins the organization has, not counting ``excluding``."""
    query = select(func.count()).select_from(User).where(
        User.org_id == org_id, User.is_admin.is_(True), User.is_disabled.is_(False))
    if excluding is not None:
        query = query.where(User.id != excluding)
    return session.scalar(query) or 0


def _keep_an_admin(session: Session, user: User, what: str) -> None:
    if user.is_admin and not user.is_disabled \
            and enabled_admin_count(session, user.org_id, excluding=user.id) == 0:
        raise AdminRuleError(f"You cannot {what} the organization's last admin: "
                             "make another user an admin first.")


def recovery_address_of(session: Session, user_id: int) -> str:
    """The user's recovery address, or '' when none is set."""
    row = session.get(RecoveryAddress, user_id)
    return row.email if row else ""


def set_recovery_address(session: Session, user: User, email: str | None) -> None:
    """Set (validated) or clear the address the user's self-service reset links go to."""
    row = session.get(RecoveryAddress, user.id)
    value = (email or "").strip()
    if not value:
        if row is not None:
            session.delete(row)
        return
    address = normalize_email(value)
    if address == user.email:
        raise DirectoryError("The recovery address must be outside the hosted mailbox: a user "
                             "who cannot log in cannot read mail sent there.")
    if row is None:
        session.add(RecoveryAddress(user_id=user.id, org_id=user.org_id, email=address))
    else:
        row.email = address


def validate_quota(quota_bytes: int, used_bytes: int, allow_below_use: bool) -> None:
    """Refuse a nonsensical quota, and one below current use unless explicitly allowed."""
    if quota_bytes < 1 or quota_bytes > MAX_QUOTA_BYTES:
        raise AdminRuleError("The quota must be more than 0 and at most 100 TB.")
    if quota_bytes < used_bytes and not allow_below_use:
        raise AdminRuleError("This quota is below what the user already stores: new mail "
                             "would be refused until they delete some. Tick the confirmation "
                             "to set it anyway.")


def add_user(session: Session, org: Organization, *, email: str, display_name: str,
             is_admin: bool, quota_bytes: int, credential: str, recovery_email: str = "",
             created_by_id: int | None = None) -> tuple[User, str]:
    """Create a user with hosted address and folders; return it with its first credential.

    ``credential`` is "password" (a one-time password is returned; it must be changed at
    first login) or "invite" (a raw invitation token is returned; nobody knows the
    placeholder password it replaces).
    """
    if credential not in ("password", "invite"):
        raise ValueError(f"unknown credential kind {credential!r}")
    validate_quota(quota_bytes, 0, allow_below_use=False)
    if credential == "password":
        secret = generate_one_time_password(email)
        user = create_user(session, org, email=email, password=secret, is_admin=is_admin,
                           display_name=display_name, must_change_password=True,
                           quota_bytes=quota_bytes)
    else:
        user = create_user(session, org, email=email,
                           password=generate_one_time_password(email) + secrets.token_hex(16),
                           is_admin=is_admin, display_name=display_name,
                           quota_bytes=quota_bytes)
        secret = issue_token(session, user, "invite", created_by_id=created_by_id)
    set_recovery_address(session, user, recovery_email)
    session.flush()
    return user, secret


def update_user(session: Session, user: User, *, actor_id: int, display_name: str,
                is_admin: bool, recovery_email: str) -> list[str]:
    """Change name, admin flag and recovery address; return the names of what changed."""
    changed = []
    if user.is_admin and not is_admin:
        _keep_an_admin(session, user, "remove the admin role of")
    if display_name.strip() != user.display_name:
        user.display_name = display_name.strip()
        changed.append("display_name")
    if is_admin != user.is_admin:
        user.is_admin = is_admin
        changed.append("is_admin")
    if (recovery_email or "").strip().lower() != recovery_address_of(session, user.id):
        set_recovery_address(session, user, recovery_email)
        changed.append("recovery_email")
    session.flush()
    return changed


def set_quota(session: Session, user: User, quota_bytes: int, allow_below_use: bool) -> None:
    """Override the user's quota (validated against their current use)."""
    validate_quota(quota_bytes, user.used_bytes, allow_below_use)
    user.quota_bytes = quota_bytes
    session.flush()


def set_disabled(session: Session, user: User, disabled: bool, *, actor_id: int) -> None:
    """Disable (every session ends at once; queued jobs see it and do nothing) or enable."""
    if disabled:
        if user.id == actor_id:
            raise AdminRuleError("You cannot disable your own account.")
        _keep_an_admin(session, user, "disable")
        user.is_disabled = True
        end_sessions(user)
    else:
        user.is_disabled = False
    session.flush()


def delete_user(session: Session, user: User, *, actor_id: int,
                reassign_to_id: int | None) -> None:
    """Delete the user and everything they own; their CRM records go to another user or away.

    Rows of the user cascade in the database, so jobs queued for them find nothing and stop;
    the blob references of their messages are given back for garbage collection first.
    """
    if user.id == actor_id:
        raise AdminRuleError("You cannot delete your own account.")
    _keep_an_admin(session, user, "delete")
    if reassign_to_id is not None:
        target = get_org_user(session, user.org_id, reassign_to_id)
        if target is None or target.id == user.id:
            raise AdminRuleError("Choose another user of this organization to take the records.")
    try:
        crm_records.reassign_or_delete(session, user.org_id, user.id, reassign_to_id)
    except crm_records.RecordsTransferError as exc:
        raise AdminRuleError(str(exc)) from None
    counts = session.execute(select(Message.blob_sha256, func.count())
                             .where(Message.user_id == user.id)
                             .group_by(Message.blob_sha256)).all()
    # Outgoing messages not yet sent or cancelled still hold a reference to their bytes.
    counts += session.execute(select(OutgoingMessage.blob_sha256, func.count())
                              .where(OutgoingMessage.user_id == user.id,
                                     OutgoingMessage.state.not_in(("sent", "cancelled")))
                              .group_by(OutgoingMessage.blob_sha256)).all()
    for sha256, count in counts:
        session.execute(update(Blob).where(Blob.sha256 == sha256)
                        .values(refcount=case((Blob.refcount > count, Blob.refcount - count),
                                              else_=0)))
    end_sessions(user)
    session.flush()
    session.execute(delete(User).where(User.id == user.id))
    session.expunge(user)


def send_system_mail(session: Session, org_id: int, to_addr: str, subject: str,
                     text: str) -> bool:
    """Queue a system message through the outbox; False when the outbox refuses it."""
    try:
        with session.begin_nested():
            outbox.queue_system_message(session, org_id, to_addr, subject, text)
    except ValueError as exc:  # the outbox's refusals (no domain, relay not set up)
        log.warning("system mail to the recovery address not queued: %s", exc)
        return False
    return True
