"""Send Mail As: the addresses a user may send as, proving ownership, and their transports."""
from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable
from datetime import timedelta

from flask import current_app
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from webapp.models import User
from webapp.models._types import utcnow
from webapp.models.sending import SECURITIES, TRANSPORTS, SendIdentity
from webapp.services import compose
from webapp.services.directory import DirectoryError, normalize_email
from webapp.services.secrets import decrypt_secret, encrypt_secret

MAX_CONFIRM_ATTEMPTS = 5
CODE_LIFETIME = timedelta(days=3)
# Unambiguous characters only: the code may be typed from a phone screen.
_CODE_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"


class SendAsError(ValueError):
    """Bad input for a Send Mail As address; the message is shown as is."""


class SmtpPasswordError(SendAsError):
    """The SMTP password must be typed (again); the message belongs on the password field."""


PASSWORD_AGAIN = "Enter the password again: the server or login changed."


def _hash_code(code: str) -> str:
    return hashlib.sha256(code.strip().upper().encode()).hexdigest()


def ensure_hosted_identity(session: Session, user: User) -> SendIdentity:
    """The user's hosted address as an identity (created on first use; always verified)."""
    identity = session.scalar(select(SendIdentity).where(SendIdentity.user_id == user.id,
                                                         SendIdentity.is_hosted.is_(True)))
    if identity is not None:
        return identity
    identity = SendIdentity(org_id=user.org_id, user_id=user.id, email=user.email,
                            display_name=user.display_name, is_hosted=True, is_verified=True,
                            transport="relay")
    try:
        # A savepoint: two first requests racing must not break the caller's transaction.
        with session.begin_nested():
            session.add(identity)
    except IntegrityError:
        identity = session.scalar(select(SendIdentity).where(SendIdentity.user_id == user.id,
                                                             SendIdentity.email == user.email))
    return identity


def list_identities(session: Session, user: User, verified_only: bool = False
                    ) -> list[SendIdentity]:
    """The user's identities, the hosted one first."""
    ensure_hosted_identity(session, user)
    query = select(SendIdentity).where(SendIdentity.user_id == user.id)
    if verified_only:
        query = query.where(SendIdentity.is_verified.is_(True))
    return list(session.scalars(query.order_by(SendIdentity.is_hosted.desc(), SendIdentity.email)))


def get_identity(session: Session, user_id: int, identity_id: int) -> SendIdentity | None:
    """One of the user's identities, or None (another user's id included)."""
    return session.scalar(select(SendIdentity).where(SendIdentity.id == identity_id,
                                                     SendIdentity.user_id == user_id))


def _check_text(field: str, value: str, limit: int) -> str:
    value = (value or "").strip()
    if any(c in value for c in "\r\n\x00"):
        raise SendAsError(f"{field} must not contain line breaks.")
    if len(value) > limit:
        raise SendAsError(f"{field} is longer than {limit} characters.")
    return value


def _check_reply_to(value: str) -> str:
    value = _check_text("Reply-to", value, 320)
    if value:
        try:
            parsed = compose.parse_address_list(value, field="Reply-to")
        except compose.ComposeError as error:
            raise SendAsError(str(error)) from None
        if len(parsed) != 1:
            raise SendAsError("Reply-to takes one address.")
        value = parsed[0][1]
    return value


def add_identity(session: Session, user: User, email: str, display_name: str = "",
                 reply_to: str = "") -> SendIdentity:
    """Add an unconfirmed external address (usable once confirmed); the caller sends the code."""
    try:
        address = normalize_email(email)
    except DirectoryError as error:
        raise SendAsError(str(error)) from None
    existing = session.scalar(select(SendIdentity).where(SendIdentity.user_id == user.id,
                                                         SendIdentity.email == address))
    if existing is not None or address == user.email.lower():
        raise SendAsError(f"{address} is already one of your addresses.")
    identity = SendIdentity(org_id=user.org_id, user_id=user.id, email=address,
                            display_name=_check_text("Name", display_name, 200),
                            reply_to=_check_reply_to(reply_to), is_hosted=False,
                            is_verified=False, transport="relay")
    session.add(identity)
    session.flush()
    return identity


def send_confirmation(session: Session, identity: SendIdentity,
                      confirm_link: Callable[[str], str]) -> str:
    """Mail a fresh confirmation code (and link) to the address through the org relay.

    Returns the code (tests and the CLI use it; the web never shows it).
    """
    from webapp.services.outbox import queue_system_message

    code = "".join(secrets.choice(_CODE_ALPHABET) for _ in range(10))
    identity.verify_token_hash = _hash_code(code)
    identity.verify_sent_at = utcnow()
    identity.verify_attempts = 0
    user = session.get(User, identity.user_id)
    text = (f"{user.email} asked to send mail as {identity.email}.\n\n"
            f"To allow it, open this link while signed in:\n{confirm_link(code)}\n\n"
            f"or enter this code in Settings » Send Mail As: {code}\n\n"
            "If you did not ask for this, ignore this message: nothing happens without the code.")
    queue_system_message(session, identity.org_id, identity.email,
                         f"Confirm {identity.email} for sending", text)
    return code


def confirm_identity(session: Session, identity: SendIdentity, code: str) -> None:
    """Mark the address confirmed if the code matches; SendAsError otherwise."""
    if identity.is_verified:
        return
    if not identity.verify_token_hash or identity.verify_sent_at is None \
            or utcnow() - identity.verify_sent_at > CODE_LIFETIME:
        raise SendAsError("This code has expired. Send a new one.")
    if identity.verify_attempts >= MAX_CONFIRM_ATTEMPTS:
        raise SendAsError("Too many wrong codes. Send a new one.")
    if not hmac.compare_digest(identity.verify_token_hash, _hash_code(code or "")):
        identity.verify_attempts += 1
        raise SendAsError("That code is not right. Check the message sent to "
                          f"{identity.email} and try again.")
    identity.is_verified = True
    identity.verify_token_hash = ""


def _login_changed(identity: SendIdentity, host: str, port: int, security: str,
                   username: str) -> bool:
    return (host.lower(), int(port), security, username) != (
        identity.smtp_host.lower(), identity.smtp_port, identity.smtp_security,
        identity.smtp_username)


def update_identity(session: Session, identity: SendIdentity, *, display_name: str,
                    reply_to: str, transport: str, smtp_host: str = "", smtp_port: int = 587,
                    smtp_security: str = "starttls", smtp_username: str = "",
                    smtp_password: str | None = None) -> None:
    """Change name, reply-to and transport; an empty password keeps the stored one.

    Only for the stored server and login: when host, port, security or username change, the
    password must be typed again (SmtpPasswordError), so the stored one is never sent to a
    server it was not saved for. Nothing changes when an error is raised.
    """
    if transport not in TRANSPORTS:
        raise SendAsError("Choose the organization relay or your own SMTP server.")
    display_name = _check_text("Name", display_name, 200)
    reply_to = _check_reply_to(reply_to)
    if transport == "smtp":
        host = _check_text("SMTP server", smtp_host, 253)
        if not host or " " in host:
            raise SendAsError("Enter the SMTP server's name (for example smtp.gmail.com).")
        if smtp_security not in SECURITIES:
            raise SendAsError("Choose SSL, STARTTLS or none.")
        if not 1 <= int(smtp_port) <= 65535:
            raise SendAsError("The port is a number from 1 to 65535.")
        username = _check_text("Username", smtp_username, 320)
        if smtp_password and any(c in smtp_password for c in "\r\n\0"):
            raise SmtpPasswordError("The password must not contain line breaks.")
        forget_password = smtp_password is not None and not smtp_password and not username
        if not smtp_password and identity.smtp_password_encrypted \
                and _login_changed(identity, host, smtp_port, smtp_security, username):
            if username:
                raise SmtpPasswordError(PASSWORD_AGAIN)
            forget_password = True  # no login now; the old password must not follow later
        identity.smtp_host = host
        identity.smtp_port = int(smtp_port)
        identity.smtp_security = smtp_security
        identity.smtp_username = username
        if smtp_password:
            identity.smtp_password_encrypted = encrypt_secret(
                current_app.config["MAIL_SECRET_KEYS"], smtp_password)
        elif forget_password:
            identity.smtp_password_encrypted = ""
    identity.display_name = display_name
    identity.reply_to = reply_to
    identity.transport = transport


def delete_identity(session: Session, identity: SendIdentity) -> None:
    """Delete an external address (the hosted one stays)."""
    if identity.is_hosted:
        raise SendAsError("Your own address cannot be removed.")
    session.delete(identity)
    session.flush()


def smtp_password(identity: SendIdentity) -> str:
    """The identity's decrypted SMTP password ('' when none is stored)."""
    if not identity.smtp_password_encrypted:
        return ""
    return decrypt_secret(current_app.config["MAIL_SECRET_KEYS"], identity.smtp_password_encrypted)


def test_smtp(host: str, port: int, security: str, username: str, password: str,
              ca_bundle: str | None = None) -> tuple[bool, str]:
    """Connect, secure and sign in (then QUIT); (True, what worked) or (False, what to fix)."""
    from worker.smtp import SmtpError, test_connection  # the protocol client, only when asked

    try:
        test_connection(host, port, security=security, username=username or None,
                        password=password or None, timeout=15.0, ca_bundle=ca_bundle)
    except SmtpError as error:
        return False, error.user_message
    secured = {"ssl": "over SSL", "starttls": "with STARTTLS", "none": "without encryption"}
    signed = f", signed in as {username}" if username else " (no sign-in)"
    return True, f"Connected to {host}:{port} {secured.get(security, '')}{signed}. It works."


def test_identity(session: Session, identity: SendIdentity) -> tuple[bool, str]:
    """Test the transport this address sends through (its own server, or the org relay)."""
    from webapp.services.outbox import relay_settings

    ca_bundle = current_app.config.get("MAIL_CA_BUNDLE")
    if identity.transport == "smtp":
        return test_smtp(identity.smtp_host, identity.smtp_port, identity.smtp_security,
                         identity.smtp_username, smtp_password(identity), ca_bundle)
    relay = relay_settings(session, identity.org_id)
    if not relay.configured:
        return False, ("The organization's relay is not set up yet; ask your administrator "
                       "(Admin » Relay & limits).")
    return test_smtp(relay.host, relay.port, relay.security, relay.username, relay.password,
                     ca_bundle)


test_smtp.__test__ = False  # type: ignore[attr-defined]  # not a pytest test when imported
test_identity.__test__ = False  # type: ignore[attr-defined]
