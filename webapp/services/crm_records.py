"""What happens to a user's CRM records when the user leaves the organization."""
from __future__ import annotations

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from webapp.models import User
from webapp.models.crm import Activity, Contact, Lead, Potential


class RecordsTransferError(ValueError):
    """The records cannot go to that user (other organization, same user); shown as is."""


def reassign_or_delete(session: Session, org_id: int, user_id: int,
                       to_user_id: int | None) -> dict[str, int]:
    """Give the user's records to another user of the same organization, or delete them.

    Returns how many rows of each kind moved or went; not committed (the caller commits the
    user deletion in the same transaction so nothing is left half-transferred).
    """
    owned = (Contact, Lead, Potential, Activity)
    counts: dict[str, int] = {}
    if to_user_id is not None:
        if to_user_id == user_id:
            raise RecordsTransferError("Choose another user to receive the records.")
        target = session.scalar(select(User).where(User.id == to_user_id, User.org_id == org_id))
        if target is None:
            raise RecordsTransferError("The user receiving the records must belong to the "
                                       "same organization.")
        for model in owned:
            result = session.execute(update(model)
                                     .where(model.org_id == org_id, model.owner_id == user_id)
                                     .values(owner_id=to_user_id)
                                     .execution_options(synchronize_session=False))
            counts[model.__tablename__] = result.rowcount
    else:
        # Activities first: those on other users' records go too (they were this user's notes);
        # those on this user's records would cascade anyway.
        for model in owned[::-1]:
            result = session.execute(delete(model)
                                     .where(model.org_id == org_id, model.owner_id == user_id)
                                     .execution_options(synchronize_session=False))
            counts[model.__tablename__] = result.rowcount
    session.expire_all()
    return counts
