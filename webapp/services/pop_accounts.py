"""POP accounts: create, change, delete, re-enable, fetch now, and their status in words.

Plain functions over a SQLAlchemy session; the caller commits. Fetch jobs are enqueued
after the commit by dotted path. The one call that talks to a POP server from here is
`probe_server()` (the settings page's connection test), which imports the protocol client
only when called.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from webapp.models import MailAccount, Message, User
from webapp.models._types import utcnow
from webapp.models.pop import POP_SECURITY, PopAccount, PopFetchRun, PopUidl
from webapp.services.directory import normalize_email
from webapp.services.secrets import decrypt_secret, encrypt_secret

AUTH_FAILURE_LIMIT = 10
CONNECTION_FAILURE_LIMIT = 50
FETCH_JOB = "worker.jobs.fetch.fetch_account"

# Messages per batch (one job, one commit) for new accounts. Each batch also pays a login,
# a UIDL/LIST of the whole mailbox and a commit; memory is bounded per RETR round, not per
# batch, so a large first import goes fastest in large batches.
DEFAULT_BATCH_SIZE = 1000

# Defaults of the POP_* settings (read through pop_setting(); config.py may set them).
POP_DEFAULTS: dict[str, Any] = {
    "POP_TIMEOUT_SECONDS": 30.0,
    "POP_LOCK_SECONDS": 60,  # the per-account lock expires this long after a crashed worker
    "POP_JOB_TIMEOUT": 600,
    "POP_BATCH_SECONDS": 240,  # a batch stops taking new messages after this, well inside the job timeout
    "POP_SWEEP_SECONDS": 5.0,
    "POP_PAUSED_RECHECK_SECONDS": 60,
    "POP_QUEUED_MARKER_SECONDS": 120,
    "POP_DEFAULT_BATCH_SIZE": DEFAULT_BATCH_SIZE,
    "POP_DEFAULT_INTERVAL_SECONDS": 300,
}
BATCH_SIZE_RANGE = (1, 2000)
INTERVAL_RANGE = (60, 7 * 24 * 3600)

STATE_REASON_WORDS = {
    "auth_failures": f"disabled after {AUTH_FAILURE_LIMIT} failed logins in a row",
    "connection_failures": f"disabled after {CONNECTION_FAILURE_LIMIT} failed connections in a row",
    "storage_full": "paused: storage full",
    "admin": "disabled by an administrator",
}


class PopAccountError(ValueError):
    """Bad account settings; the message says what to change."""


class PasswordNeededError(PopAccountError):
    """The server or login changed but no password was typed: the saved one must not follow."""


PASSWORD_AGAIN = "Enter the password again: the server or login changed."
# POP3 sends USER and PASS as text lines: a CR or LF would end the line and start a command.
_LINE_BREAKING = ("\r", "\n", "\0")


def pop_setting(config: dict, name: str) -> Any:
    """A POP_* setting from the app config, or its default (MAIL_MAX_MESSAGE_BYTES for the size)."""
    if name == "POP_MAX_MESSAGE_BYTES":
        return config.get(name) or config["MAIL_MAX_MESSAGE_BYTES"]
    value = config.get(name)
    return POP_DEFAULTS[name] if value is None else value


def lock_key(account_id: int) -> str:
    """Redis key of the one-fetch-at-a-time lock of an account."""
    return f"skydesk:pop:lock:{account_id}"


def queued_key(account_id: int) -> str:
    """Redis key saying a fetch of the account is waiting in the queue."""
    return f"skydesk:pop:queued:{account_id}"


def progress_key(account_id: int) -> str:
    """Redis hash with the live progress of a running fetch."""
    return f"skydesk:pop:progress:{account_id}"


def is_gmail_recent(username: str) -> bool:
    """Gmail's "recent:" prefix: every session lists the last 30 days, sent mail included."""
    return username.strip().lower().startswith("recent:")


def validate_settings(*, host: str, port: int, security: str, username: str,
                      batch_size: int, interval_seconds: int) -> None:
    """Refuse settings that cannot work, with a sentence naming the field."""
    if not host or any(c.isspace() for c in host) or len(host) > 255:
        raise PopAccountError("Enter the server name, such as pop.example.com.")
    if not 1 <= int(port) <= 65535:
        raise PopAccountError("The port must be between 1 and 65535 (usually 995 for SSL).")
    if security not in POP_SECURITY:
        raise PopAccountError(f"Security must be one of {', '.join(POP_SECURITY)}.")
    if not username or len(username) > 320:
        raise PopAccountError("Enter the username the provider gave you.")
    if any(c in username for c in _LINE_BREAKING):
        raise PopAccountError("The username must not contain line breaks.")
    if not BATCH_SIZE_RANGE[0] <= int(batch_size) <= BATCH_SIZE_RANGE[1]:
        raise PopAccountError(f"The batch size must be between {BATCH_SIZE_RANGE[0]} and "
                              f"{BATCH_SIZE_RANGE[1]}.")
    if int(interval_seconds) < 1:
        raise PopAccountError("The interval must be positive.")


def validate_password(password: str) -> None:
    """Refuse a password POP3 cannot carry (a line break would be sent as a command)."""
    if any(c in password for c in _LINE_BREAKING):
        raise PopAccountError("The password must not contain line breaks.")


def login_changed(account: PopAccount, *, host: str, port: int, security: str,
                  username: str) -> bool:
    """Whether these settings name another server or login than the ones saved on the account."""
    return (host.strip().lower(), int(port), security, username.strip()) != (
        account.host, account.port, account.security, account.username)


def password_for_login(account: PopAccount, *, host: str, port: int, security: str,
                       username: str, password: str, secret_keys: list[str]) -> str:
    """The password to test these settings with: the typed one, else the saved one.

    The saved password is used only for the saved server and login: sending it to a server
    named in the same request would hand the mailbox password to whoever runs that server.
    Raises PasswordNeededError then, and SecretDecryptError when the keys no longer match.
    """
    if password:
        validate_password(password)
        return password
    if login_changed(account, host=host, port=port, security=security, username=username):
        raise PasswordNeededError(PASSWORD_AGAIN)
    return decrypt_secret(secret_keys, account.password_encrypted)


def probe_server(host: str, port: int, security: str, username: str, password: str, *,
                 ca_bundle: str | None, timeout: float, want_uidls: bool = False) -> dict:
    """Log in, count the messages (and list their UIDLs if asked), QUIT; raise PopError."""
    from worker import pop3  # the protocol client, only when a test is asked for

    if not want_uidls:
        return pop3.test_connection(host, port, security, username, password, timeout=timeout,
                                    ca_bundle=ca_bundle)
    with pop3.open_session(host, port, security, username, password, timeout=timeout,
                           ca_bundle=ca_bundle) as session:
        messages, octets = session.stat()
        uidls = [uidl for _, uidl in session.uidls()]
        session.quit()
    return {"messages": messages, "octets": octets, "uidls": uidls}


@dataclass
class ConnectionCheck:
    """The outcome of a connection test, in words for the settings page."""

    ok: bool
    message: str
    kind: str = ""
    messages: int = 0
    uidls: list[str] | None = None


def check_connection(host: str, port: int, security: str, username: str, password: str, *,
                     ca_bundle: str | None, timeout: float, want_uidls: bool = False) -> ConnectionCheck:
    """Test the settings against the server; never raises for a server or network failure."""
    from worker.pop3 import PopError

    try:
        found = probe_server(host, port, security, username, password, ca_bundle=ca_bundle,
                             timeout=timeout, want_uidls=want_uidls)
    except PopError as exc:
        return ConnectionCheck(False, exc.user_message, exc.kind)
    count = found["messages"]
    return ConnectionCheck(True, f"Connected and logged in: {count} message"
                           f"{'' if count == 1 else 's'} on the server.", messages=count,
                           uidls=found.get("uidls"))


def _enqueue_fetch_after_commit(session: Session, account_id: int, job_timeout: int) -> None:
    from webapp.queue import enqueue_after_commit

    enqueue_after_commit(FETCH_JOB, account_id, queue="fetch", job_timeout=job_timeout,
                         session=session)


def _mail_account_for(session: Session, user: User, email: str, display_name: str) -> MailAccount:
    """The user's MailAccount for this address: a new one, or the one a deleted POP account left."""
    existing = session.scalar(select(MailAccount).where(MailAccount.user_id == user.id,
                                                        MailAccount.email == email))
    if existing is not None:
        taken = existing.kind != "pop" or session.scalar(
            select(PopAccount.id).where(PopAccount.mail_account_id == existing.id))
        if taken:
            raise PopAccountError(f"You already have an account for {email}.")
        existing.display_name = display_name or existing.display_name
        return existing
    account = MailAccount(org_id=user.org_id, user_id=user.id, kind="pop", email=email,
                          display_name=display_name)
    session.add(account)
    session.flush()
    return account


def create_pop_account(session: Session, user: User, *, email: str, host: str, port: int,
                       security: str, username: str, password: str, secret_keys: list[str],
                       display_name: str = "", delete_from_server: bool = False,
                       new_only: bool = False, batch_size: int = DEFAULT_BATCH_SIZE,
                       interval_seconds: int = 300, baseline_uidls: list[str] | None = None,
                       job_timeout: int = 600) -> PopAccount:
    """Add a POP account (and its MailAccount); the first fetch is enqueued after the commit.

    "From now on" records ``baseline_uidls`` (the UIDLs on the server at creation) as
    skipped; without them the first successful session records the baseline instead.
    """
    try:
        email = normalize_email(email)
    except ValueError as exc:
        raise PopAccountError(str(exc)) from None
    host = host.strip().lower()
    username = username.strip()
    validate_settings(host=host, port=port, security=security, username=username,
                      batch_size=batch_size, interval_seconds=interval_seconds)
    if not password:
        raise PopAccountError("Enter the password of the mailbox.")
    validate_password(password)
    mail_account = _mail_account_for(session, user, email, display_name.strip())
    account = PopAccount(
        org_id=user.org_id, user_id=user.id, mail_account_id=mail_account.id, host=host,
        port=int(port), security=security, username=username,
        password_encrypted=encrypt_secret(secret_keys, password),
        # Gmail's recent: mode lists mail again in every session; deleting is meaningless there.
        delete_from_server=bool(delete_from_server) and not is_gmail_recent(username),
        new_only=bool(new_only), baseline_pending=bool(new_only) and baseline_uidls is None,
        batch_size=int(batch_size), interval_seconds=int(interval_seconds), state="active",
        next_fetch_at=utcnow())
    account.mail_account = mail_account
    session.add(account)
    session.flush()
    if new_only and baseline_uidls:
        for uidl in dict.fromkeys(baseline_uidls):
            session.add(PopUidl(account_id=account.id, uidl=uidl[:255], state="skipped",
                                reason="Already on the server when the account was added."))
    _enqueue_fetch_after_commit(session, account.id, job_timeout)
    return account


def update_pop_account(session: Session, account: PopAccount, *, host: str, port: int,
                       security: str, username: str, secret_keys: list[str],
                       password: str | None = None, display_name: str | None = None,
                       delete_from_server: bool | None = None, batch_size: int | None = None,
                       interval_seconds: int | None = None, job_timeout: int = 600) -> bool:
    """Change an account's settings; a new password re-enables it and fetches at once.

    A new server or login needs the password typed again (PasswordNeededError otherwise), so
    the saved one is never sent to a server it was not saved for. Returns whether a fetch was
    enqueued (after the commit).
    """
    username = username.strip()
    host = host.strip().lower()
    batch_size = account.batch_size if batch_size is None else int(batch_size)
    interval_seconds = account.interval_seconds if interval_seconds is None else int(interval_seconds)
    validate_settings(host=host, port=port, security=security, username=username,
                      batch_size=batch_size, interval_seconds=interval_seconds)
    server_changed = login_changed(account, host=host, port=port, security=security,
                                   username=username)
    if password:
        validate_password(password)
    elif server_changed:
        raise PasswordNeededError(PASSWORD_AGAIN)
    account.host, account.port, account.security, account.username = host, int(port), security, username
    account.batch_size, account.interval_seconds = batch_size, interval_seconds
    if display_name is not None:
        account.mail_account.display_name = display_name.strip()
    if delete_from_server is not None:
        account.delete_from_server = bool(delete_from_server) and not is_gmail_recent(username)
    elif is_gmail_recent(username):
        account.delete_from_server = False
    if password or server_changed:
        if password:
            account.password_encrypted = encrypt_secret(secret_keys, password)
        # New credentials or a new server: the old failures say nothing about them.
        _reactivate(account)
        _enqueue_fetch_after_commit(session, account.id, job_timeout)
        return True
    return False


def _reactivate(account: PopAccount) -> None:
    if account.state == "disabled":
        account.state, account.state_reason = "active", ""
    account.auth_failures = 0
    account.connection_failures = 0
    account.last_error_kind, account.last_error = "", ""
    account.next_fetch_at = utcnow()


def reenable_account(session: Session, account: PopAccount, job_timeout: int = 600) -> None:
    """Re-enable a disabled account (counters reset) and fetch it at once after the commit."""
    _reactivate(account)
    if account.state == "paused":
        account.state, account.state_reason = "active", ""
    _enqueue_fetch_after_commit(session, account.id, job_timeout)


def request_fetch(session: Session, account: PopAccount, job_timeout: int = 600) -> None:
    """"Fetch now": make the account due and enqueue a fetch after the commit."""
    if account.state == "disabled":
        raise PopAccountError("This account is disabled; save its password again (or ask your "
                              "administrator to re-enable it) first.")
    account.next_fetch_at = utcnow()
    _enqueue_fetch_after_commit(session, account.id, job_timeout)


def delete_pop_account(session: Session, account: PopAccount) -> None:
    """Stop fetching and forget the account's ledger; the mail already fetched stays."""
    session.delete(account)


def release_quarantine(session: Session, account: PopAccount) -> int:
    """Forget quarantined UIDLs so the next fetch tries them again; return how many."""
    released = session.execute(delete(PopUidl).where(PopUidl.account_id == account.id,
                                                      PopUidl.state == "quarantined")).rowcount
    account.messages_quarantined = 0
    account.next_fetch_at = utcnow()
    return released


def user_accounts(session: Session, user_id: int) -> list[MailAccount]:
    """Every mail account of the user, hosted first."""
    return list(session.scalars(select(MailAccount).where(MailAccount.user_id == user_id)
                                .order_by((MailAccount.kind != "hosted"), MailAccount.id)))


def pop_account_of(session: Session, user_id: int, pop_id: int) -> PopAccount | None:
    """The user's POP account with this id, or None (someone else's is None too)."""
    return session.scalar(select(PopAccount).where(PopAccount.id == pop_id,
                                                   PopAccount.user_id == user_id))


def state_words(account: PopAccount) -> str:
    """The account's state as a user reads it."""
    if account.state == "active":
        return "active"
    return STATE_REASON_WORDS.get(account.state_reason, account.state)


@dataclass
class Progress:
    """Numbers for the progress bar: on the server, fetched, left, rate, time left."""

    running: bool
    on_server: int
    fetched: int
    left: int
    rate: float
    eta_seconds: int | None

    @property
    def done_fraction(self) -> float:
        """Share of this import done, 0..1."""
        total = self.fetched + self.left
        return 1.0 if total == 0 else self.fetched / total


def live_progress(account: PopAccount, redis=None) -> Progress:
    """The progress of the account: Redis while a fetch runs, else the row's last batch."""
    live: dict = {}
    if redis is not None:
        raw = redis.get(progress_key(account.id))
        if raw:
            live = json.loads(raw)
    running = bool(live) and redis is not None and bool(redis.exists(lock_key(account.id)))
    if running:
        on_server, fetched, left = live["on_server"], live["fetched"], live["left"]
        rate = float(live.get("rate") or account.rate_per_second)
    else:
        on_server, fetched, left = (account.server_messages, account.messages_fetched,
                                    account.messages_left)
        rate = account.rate_per_second
    eta = int(left / rate) if rate > 0 and left else (0 if not left else None)
    return Progress(running, on_server, fetched, left, round(rate, 1), eta)


def human_duration(seconds: int | None) -> str:
    """A duration as a person says it: 'about 3 minutes'."""
    if seconds is None:
        return "unknown"
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"about {round(seconds / 60)} min"
    return f"about {seconds / 3600:.1f} h"


def status_of(session: Session, account: PopAccount, redis=None) -> dict:
    """Everything the CLI, the admin page and the JSON endpoint show about one account."""
    progress = live_progress(account, redis)
    stored = session.scalar(select(func.count()).select_from(PopUidl).where(
        PopUidl.account_id == account.id, PopUidl.state == "stored"))
    owner = session.get(User, account.user_id)
    return {
        "id": account.id,
        "email": account.email,
        "user": owner.email if owner else None,
        "host": account.host,
        "port": account.port,
        "security": account.security,
        "username": account.username,
        "state": account.state,
        "state_words": state_words(account),
        "state_reason": account.state_reason,
        "auth_failures": account.auth_failures,
        "connection_failures": account.connection_failures,
        "messages": stored,
        "on_server": progress.on_server,
        "left": progress.left,
        "skipped": account.messages_skipped,
        "quarantined": account.messages_quarantined,
        "rate": progress.rate,
        "eta_seconds": progress.eta_seconds,
        "running": progress.running,
        "delete_from_server": account.delete_from_server,
        "new_only": account.new_only,
        "last_error": account.last_error,
        "last_error_kind": account.last_error_kind,
        "last_error_at": _iso(account.last_error_at),
        "last_fetch_at": _iso(account.last_fetch_at),
        "next_fetch_at": _iso(account.next_fetch_at),
    }


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def recent_runs(session: Session, account_id: int, limit: int = 10) -> list[PopFetchRun]:
    """The account's latest journal rows, newest first."""
    return list(session.scalars(select(PopFetchRun).where(PopFetchRun.account_id == account_id)
                                .order_by(PopFetchRun.started_at.desc(), PopFetchRun.id.desc())
                                .limit(limit)))


def own_addresses(session: Session, user_id: int) -> set[str]:
    """Every address the user sends as: hosted, POP accounts, and send-as identities."""
    addresses = {e.lower() for e in session.scalars(
        select(MailAccount.email).where(MailAccount.user_id == user_id))}
    user = session.get(User, user_id)
    if user is not None:
        addresses.add(user.email.lower())
    try:
        from webapp.models.sending import SendIdentity  # the sending feature's send-as addresses
    except ImportError:
        return addresses
    addresses.update(e.lower() for e in session.scalars(
        select(SendIdentity.email).where(SendIdentity.user_id == user_id)))
    return addresses


def mark_failure(session: Session, account_id: int, *, kind: str, counts_as: str | None,
                 message: str, retry_after: timedelta) -> None:
    """Record a failed fetch: bump its counter atomically, disable at the limit, say why."""
    now = utcnow()
    values: dict[str, Any] = {"last_error_kind": kind, "last_error": message,
                              "last_error_at": now, "last_fetch_at": now,
                              "next_fetch_at": now + retry_after}
    # Counted in the UPDATE itself: a web save and a job can never lose an increment.
    if counts_as == "auth":
        values["auth_failures"] = PopAccount.auth_failures + 1
    elif counts_as == "connection":
        values["connection_failures"] = PopAccount.connection_failures + 1
    session.execute(update(PopAccount).where(PopAccount.id == account_id).values(**values)
                    .execution_options(synchronize_session=False))
    for column, limit, reason in ((PopAccount.auth_failures, AUTH_FAILURE_LIMIT, "auth_failures"),
                                  (PopAccount.connection_failures, CONNECTION_FAILURE_LIMIT,
                                   "connection_failures")):
        session.execute(update(PopAccount)
                        .where(PopAccount.id == account_id, PopAccount.state != "disabled",
                               column >= limit)
                        .values(state="disabled", state_reason=reason)
                        .execution_options(synchronize_session=False))


def stored_message_ids(session: Session, account: PopAccount) -> list[str]:
    """Message-IDs of the messages stored from this account (for checks and tests)."""
    return list(session.scalars(select(Message.message_id).join(
        PopUidl, PopUidl.message_pk == Message.id).where(PopUidl.account_id == account.id)))
