"""Helpers for the webmail tests: real messages delivered into a user's hosted account."""
from __future__ import annotations

import datetime as dt
from email.message import EmailMessage

from sqlalchemy import select

from webapp.extensions import db
from webapp.models import Folder, MailAccount, Message
from webapp.services.delivery import deliver

_counter = iter(range(1, 10**9))


def hosted(user) -> MailAccount:
    """The user's hosted account."""
    return db.session.scalar(select(MailAccount).where(MailAccount.user_id == user.id,
                                                       MailAccount.kind == "hosted"))


def folder(user, role: str) -> Folder:
    """One of the user's system folders."""
    return db.session.scalar(select(Folder).where(Folder.user_id == user.id, Folder.role == role))


def plain_mail(subject="Pipeline review", body="Hello,\nthe renewal <b>is</b> attached.\n",
               sender='"Jane Doe" <jane@customer.example>', to="user@acme.example",
               cc=None, date="Mon, 23 Nov 2026 10:00:00 +0100") -> bytes:
    """A plain-text message as bytes."""
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    if cc:
        msg["Cc"] = cc
    msg["Subject"] = subject
    msg["Date"] = date
    msg["Message-ID"] = f"<t{next(_counter)}@customer.example>"
    msg.set_content(body)
    return bytes(msg)


def html_mail(html: str, subject="HTML mail", text: str | None = None,
              inline_images: dict[str, bytes] | None = None,
              attachments: list[tuple[str, str, bytes]] | None = None) -> bytes:
    """An HTML message, optionally with a text part, cid: images and attachments."""
    msg = EmailMessage()
    msg["From"] = "Sender <sender@customer.example>"
    msg["To"] = "user@acme.example"
    msg["Subject"] = subject
    msg["Date"] = "Mon, 23 Nov 2026 11:00:00 +0000"
    msg["Message-ID"] = f"<h{next(_counter)}@customer.example>"
    if text is not None:
        msg.set_content(text)
        msg.add_alternative(html, subtype="html")
        html_part = msg.get_payload()[1]
    else:
        msg.set_content(html, subtype="html")
        html_part = msg
    for cid, data in (inline_images or {}).items():
        html_part.add_related(data, maintype="image", subtype="png", cid=f"<{cid}>")
    for filename, ctype, data in attachments or []:
        maintype, subtype = ctype.split("/")
        msg.add_attachment(data, maintype=maintype, subtype=subtype, filename=filename)
    return bytes(msg)


def deliver_raw(user, raw: bytes, role: str = "inbox", is_read: bool = False) -> Message:
    """Deliver bytes into the user's hosted account through the one delivery path; committed."""
    result = deliver(db.session, hosted(user), raw, f"test-{next(_counter)}",
                     folder_role=role, run_filters=False, is_read=is_read)
    db.session.commit()
    return result.message


def bulk_messages(user, count: int, folder_id: int, sort_date: dt.datetime | None = None,
                  step: dt.timedelta = dt.timedelta(minutes=1)) -> list[int]:
    """Insert listing rows directly (no blobs needed for list tests); return their ids.

    With ``step`` zero every message has the same date, to prove the id breaks ties.
    """
    from webapp.services import blobs

    account = hosted(user)
    base = sort_date or dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc)
    blobs.add_reference(db.session, "0" * 64, 10)
    rows = []
    for n in range(count):
        rows.append(Message(user_id=user.id, account_id=account.id, folder_id=folder_id,
                            blob_sha256="0" * 64, source_key=f"bulk-{next(_counter)}", size=10,
                            message_id=f"<b{n}@x>", subject=f"Message {n}",
                            from_email="a@b.example", sort_date=base + step * n,
                            received_at=base + step * n, indexed=True))
    db.session.add_all(rows)
    db.session.commit()
    return [row.id for row in rows]
