"""Fixtures of the POP account tests: a Dovecot mailbox, its account, seeded messages."""
from __future__ import annotations

import hashlib
from collections.abc import Callable

import pytest

from webapp.extensions import db
from webapp.models.pop import PopAccount
from webapp.services.pop_accounts import create_pop_account


def make_message(n: int, *, sender: str = "alice@elsewhere.example",
                 to: str = "someone@acme.example", body_bytes: int = 300,
                 message_id: str | None = None, subject: str | None = None) -> bytes:
    """A small RFC 5322 message with CRLF line ends and a unique Message-ID."""
    body_line = b"The quick brown fox jumps over the lazy dog. 0123456789\r\n"
    body = body_line * max(1, body_bytes // len(body_line))
    head = (f"From: Sender <{sender}>\r\nTo: {to}\r\n"
            f"Subject: {subject or f'Message number {n}'}\r\n"
            f"Date: Sun, 29 Nov 2026 10:{n % 60:02d}:00 +0000\r\n"
            f"Message-ID: {message_id or f'<msg-{n}@test.example>'}\r\n"
            "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n")
    return head.encode() + body


def sha256(data: bytes) -> str:
    """The blob hash our store gives these bytes."""
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def pop_app(app, dovecot):
    """The app trusting the test CA (MAIL_CA_BUNDLE), with short POP timeouts for tests."""
    app.config["MAIL_CA_BUNDLE"] = dovecot.ca_bundle
    app.config["POP_TIMEOUT_SECONDS"] = 10.0
    app.config["POP_LOCK_SECONDS"] = 5
    return app


@pytest.fixture
def make_pop(pop_app, dovecot, user) -> Callable[..., PopAccount]:
    """Create (and commit) a POP account of `user` on a Dovecot mailbox: make_pop(pop_user, **kw)."""
    def _make(pop_user: tuple[str, str], **overrides) -> PopAccount:
        name, password = pop_user
        settings = dict(email=f"{name}@pop.example", host=dovecot.host, port=dovecot.pop3s_port,
                        security="ssl", username=name, password=password,
                        secret_keys=pop_app.config["MAIL_SECRET_KEYS"])
        settings.update(overrides)
        owner = settings.pop("owner", user)
        account = create_pop_account(db.session, owner, **settings)
        db.session.commit()
        return account
    return _make
