"""The POP sent-mail filter against a real Dovecot: fetched own messages land in Sent (issue 6)."""
from __future__ import annotations

from sqlalchemy import select

from webapp.extensions import db
from webapp.models import Folder, Message
from webapp.services.filters import create_sent_mail_filter
from webapp.services.pop_accounts import create_pop_account
from worker.jobs.fetch import run_batch


def crlf_message(n: int, sender: str) -> bytes:
    """A message as a POP server hands it out (CRLF line ends)."""
    return (f"From: {sender}\r\nTo: friend@elsewhere.example\r\nSubject: Note {n}\r\n"
            f"Date: Sun, 29 Nov 2026 10:0{n}:00 +0000\r\nMessage-ID: <own-{n}@pop.example>\r\n"
            "Content-Type: text/plain; charset=utf-8\r\n\r\nHello.\r\n").encode()


def test_fetched_own_messages_land_in_sent(app, dovecot, pop_user, user):
    app.config["MAIL_CA_BUNDLE"] = dovecot.ca_bundle
    app.config["POP_TIMEOUT_SECONDS"] = 10.0
    name, password = pop_user
    address = f"{name}@pop.example"
    account = create_pop_account(db.session, user, email=address, host=dovecot.host,
                                 port=dovecot.pop3s_port, security="ssl", username=name,
                                 password=password, secret_keys=app.config["MAIL_SECRET_KEYS"])
    create_sent_mail_filter(db.session, user.id, address)
    db.session.commit()
    dovecot.seed(name, [crlf_message(1, f"Me <{address.upper()}>"),
                        crlf_message(2, "Friend <friend@elsewhere.example>")])

    assert run_batch(account.id).stored == 2

    db.session.expire_all()
    placed = dict(db.session.execute(
        select(Message.subject, Folder.role).join(Folder, Folder.id == Message.folder_id)
        .where(Message.user_id == user.id)).all())
    assert placed == {"Note 1": "sent", "Note 2": "inbox"}
