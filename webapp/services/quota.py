"""Storage quotas: every stored byte counts against its user, POP mail included."""
from __future__ import annotations

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from webapp.models import User


class QuotaExceededError(Exception):
    """Storing this would take the user over their quota; nothing was stored."""

    def __init__(self, user_id: int, needed: int, free: int):
        self.user_id, self.needed, self.free = user_id, needed, max(free, 0)
        super().__init__(
            f"Storage full: this message needs {human_bytes(needed)} and "
            f"{human_bytes(self.free)} is free. Delete mail (and empty Trash) or ask "
            "your administrator for more space.")


def human_bytes(n: int) -> str:
    """Bytes in the unit a person reads at a glance."""
    value = float(n)
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if value < 1024 or unit == "TB":
            return f"{int(value)} {unit}" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} bytes"


def charge(session: Session, user_id: int, nbytes: int) -> None:
    """Count bytes against the quota atomically, or raise QuotaExceededError.

    One conditional UPDATE, so two deliveries racing for the last free bytes cannot both win.
    """
    if not try_charge(session, user_id, nbytes):
        raise QuotaExceededError(user_id, nbytes, free_bytes(session, user_id))


def try_charge(session: Session, user_id: int, nbytes: int) -> bool:
    """Count bytes against the quota if they fit (one conditional UPDATE); whether they did."""
    return bool(session.execute(
        update(User)
        .where(User.id == user_id, User.used_bytes + nbytes <= User.quota_bytes)
        .values(used_bytes=User.used_bytes + nbytes)
        .execution_options(synchronize_session=False)).rowcount)


def charge_prefix(session: Session, user_id: int, sizes: list[int]) -> int:
    """Charge the longest leading run of ``sizes`` that fits, atomically; return its length.

    A batch keeps arrival order: once one message does not fit, the later ones wait too.
    """
    count = len(sizes)
    while count:
        if try_charge(session, user_id, sum(sizes[:count])):
            return count
        free, fitting, total = free_bytes(session, user_id), 0, 0
        for size in sizes[:count - 1]:
            if total + size > free:
                break
            total, fitting = total + size, fitting + 1
        count = fitting  # another delivery may take the room first: then try fewer
    return 0


def free_bytes(session: Session, user_id: int) -> int:
    """Bytes left under the user's quota (never negative)."""
    used, quota = session.execute(
        select(User.used_bytes, User.quota_bytes).where(User.id == user_id)).one()
    return max(quota - used, 0)


def refund(session: Session, user_id: int, nbytes: int) -> None:
    """Give bytes back when messages are deleted for good."""
    session.execute(update(User).where(User.id == user_id)
                    .values(used_bytes=User.used_bytes - nbytes)
                    .execution_options(synchronize_session=False))


def has_room(session: Session, user_id: int, nbytes: int = 1) -> bool:
    """Whether nbytes more would still fit (a cheap check before fetching)."""
    used, quota = session.execute(
        select(User.used_bytes, User.quota_bytes).where(User.id == user_id)).one()
    return used + nbytes <= quota
