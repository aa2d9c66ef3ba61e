"""Which mail account feeds an add-on (CRM, Recruit): the hosted one unless the user chose."""
from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from webapp.models import MailAccount
from webapp.models.crm import ADDON_SERVICES, AddonAccount


class AddonError(ValueError):
    """A bad add-on choice (unknown service, an account that is not the user's); shown as is."""


def _check_service(service: str) -> None:
    if service not in ADDON_SERVICES:
        raise AddonError(f"Unknown add-on {service!r}: use one of {', '.join(ADDON_SERVICES)}.")


def hosted_account(session: Session, user_id: int) -> MailAccount | None:
    """The user's hosted mail account (every user has one; None only for broken data)."""
    return session.scalar(select(MailAccount).where(MailAccount.user_id == user_id,
                                                    MailAccount.kind == "hosted")
                          .order_by(MailAccount.id).limit(1))


def set_addon_account(session: Session, user_id: int, service: str, account_id: int) -> None:
    """Make one of the user's own accounts feed the add-on (not committed)."""
    _check_service(service)
    account = session.scalar(select(MailAccount).where(MailAccount.id == account_id,
                                                       MailAccount.user_id == user_id))
    if account is None:
        # Also refuses another user's account id: the choice must never expose their mail.
        raise AddonError("That mail account is not one of yours.")
    row = session.scalar(select(AddonAccount).where(AddonAccount.user_id == user_id,
                                                    AddonAccount.service == service))
    if row is None:
        session.add(AddonAccount(org_id=account.org_id, user_id=user_id, service=service,
                                 account_id=account.id))
    else:
        row.account_id = account.id
    session.flush()


def get_addon_account(session: Session, user_id: int, service: str) -> MailAccount | None:
    """The account feeding the add-on for this user: the chosen one, else the hosted one."""
    _check_service(service)
    chosen = session.scalar(
        select(MailAccount).join(AddonAccount, AddonAccount.account_id == MailAccount.id)
        .where(AddonAccount.user_id == user_id, AddonAccount.service == service,
               MailAccount.user_id == user_id))
    return chosen or hosted_account(session, user_id)
