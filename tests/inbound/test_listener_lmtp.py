"""LMTP from an MTA: one reply per recipient after DATA (RFC 2033; issue 3 item 6)."""
from __future__ import annotations

import smtplib

from sqlalchemy import func, select

from tests.factories import make_user
from webapp.extensions import db
from webapp.models import Message


def stored_for(user) -> int:
    db.session.expire_all()
    return db.session.scalar(select(func.count()).select_from(Message)
                             .where(Message.user_id == user.id))


def test_lmtp_answers_each_recipient_on_its_own(app, org, listener):
    roomy, full = make_user(org), make_user(org)
    full.quota_bytes = 100
    db.session.commit()
    server = listener("lmtp")
    raw = (b"From: a@sender.example\r\nSubject: per recipient\r\nMessage-ID: <l1@x>\r\n\r\n"
           + b"w" * 300 + b"\r\n")
    with smtplib.LMTP(server.host, server.port, timeout=30) as lmtp:
        assert lmtp.ehlo()[0] == 250  # smtplib.LMTP sends LHLO
        assert lmtp.mail("a@sender.example")[0] == 250
        assert lmtp.rcpt(roomy.email)[0] == 250
        assert lmtp.rcpt("nobody@" + roomy.email.split("@")[1])[0] == 550
        assert lmtp.rcpt("someone@not-hosted.example")[:2] == (550, b"5.7.1 relaying denied")
        assert lmtp.rcpt(full.email)[0] == 250  # 1 byte would still fit
        first = lmtp.data(raw)
        second = lmtp.getreply()
    assert first[0] == 250
    assert second == (452, b"4.2.2 mailbox full")
    assert stored_for(roomy) == 1 and stored_for(full) == 0


def test_lmtp_refuses_smtp_greetings(app, user, listener):
    server = listener("lmtp")
    with smtplib.SMTP(server.host, server.port, timeout=30) as smtp:
        assert smtp.docmd("EHLO", "mta.example")[0] == 500
