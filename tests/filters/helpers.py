"""Helpers of the filter tests: real message bytes, the hosted account, filters from specs."""
from __future__ import annotations

from email.message import EmailMessage

from sqlalchemy import select

from webapp.extensions import db
from webapp.models import Folder, MailAccount
from webapp.services.filters import ActionSpec, ConditionSpec, FilterSpec, save_filter


def make_raw(subject="Invoice 2026-11 overdue", sender='"Jane Doe" <jane@customer.example>',
             to="user@acme.example", cc="boss@acme.example",
             body="Please pay the invoice by Friday.", extra_headers=(), n=1) -> bytes:
    """A real message as a mail client writes it."""
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    if cc:
        msg["Cc"] = cc
    msg["Subject"] = subject
    msg["Message-ID"] = f"<m{n}@customer.example>"
    msg["Date"] = "Mon, 23 Nov 2026 10:00:00 +0100"
    for name, value in extra_headers:
        msg[name] = value
    msg.set_content(body)
    return bytes(msg)


def hosted(user) -> MailAccount:
    """The user's hosted account."""
    return db.session.scalar(select(MailAccount).where(MailAccount.user_id == user.id,
                                                       MailAccount.kind == "hosted"))


def folder(user, role=None, name=None) -> Folder:
    """A folder of the user by role, or a custom one by name (created when missing)."""
    if role:
        return db.session.scalar(select(Folder).where(Folder.user_id == user.id,
                                                      Folder.role == role))
    found = db.session.scalar(select(Folder).where(Folder.user_id == user.id, Folder.name == name))
    if found is None:
        found = Folder(user_id=user.id, name=name, position=100)
        db.session.add(found)
        db.session.flush()
    return found


def make_filter(user, conditions, actions, name="Test filter", match_all=True, enabled=True):
    """Save a filter from tuples: conditions (field, operator, value[, header]) and actions."""
    conds = [ConditionSpec(c[0], c[1], c[2], c[3] if len(c) > 3 else "") for c in conditions]
    acts = [a if isinstance(a, ActionSpec) else ActionSpec(a) for a in actions]
    filter_ = save_filter(db.session, user.id, FilterSpec(name=name, conditions=conds,
                                                          actions=acts, match_all=match_all,
                                                          enabled=enabled))
    db.session.commit()
    return filter_
