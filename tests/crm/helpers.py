"""Helpers of the CRM tests: real messages delivered through the one delivery path."""
from __future__ import annotations

import itertools
from email.message import EmailMessage

from sqlalchemy import select

from webapp.extensions import db
from webapp.models import Folder, MailAccount, Message
from webapp.services.delivery import deliver

_seq = itertools.count(1)


def make_raw(*, sender: str, to: str, cc: str = "", subject: str = "Hello",
             date: str = "Mon, 23 Nov 2026 10:00:00 +0000") -> bytes:
    """A small real message with these headers."""
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    if cc:
        msg["Cc"] = cc
    msg["Subject"] = subject
    msg["Date"] = date
    msg["Message-ID"] = f"<crm-test-{next(_seq)}@test.example>"
    msg.set_content("Body of " + subject)
    return bytes(msg)


def hosted(user) -> MailAccount:
    """The user's hosted account."""
    return db.session.scalar(select(MailAccount).where(MailAccount.user_id == user.id,
                                                       MailAccount.kind == "hosted"))


def pop_account(user, email: str = "me@isp.example") -> MailAccount:
    """A second (POP) account of the user, committed."""
    account = MailAccount(org_id=user.org_id, user_id=user.id, kind="pop", email=email)
    db.session.add(account)
    db.session.commit()
    return account


def deliver_raw(account: MailAccount, raw: bytes, folder_role: str = "inbox") -> Message:
    """Deliver and commit one message into a system folder of the account's user."""
    result = deliver(db.session, account, raw, f"src-{next(_seq)}", folder_role=folder_role,
                     run_filters=False)
    db.session.commit()
    return result.message


def custom_folder(user, name: str = "Projects") -> Folder:
    """A folder the user made (no role), committed."""
    folder = Folder(user_id=user.id, name=name, role=None)
    db.session.add(folder)
    db.session.commit()
    return folder


def move(message: Message, folder: Folder) -> None:
    """Move a message by hand, as the webmail does: only its folder changes."""
    message.folder_id = folder.id
    db.session.commit()
