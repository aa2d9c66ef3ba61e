"""The rules of a user's mailbox: folders, listing pages, flags, moves and deletion for good.

Every function takes the owner's user id and puts it in every query, so an id that belongs to
someone else behaves exactly like an id that does not exist (``NotFoundError``). The caller
commits; nothing here commits, so a failure leaves the transaction to be rolled back whole.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import unicodedata
from collections.abc import Iterable, Sequence

from sqlalchemy import delete as sql_delete
from sqlalchemy import func, literal, select, tuple_, update
from sqlalchemy.orm import Session

from webapp.models import Folder, Message, User
from webapp.services import blobs, quota

PAGE_SIZE = 50
FOLDER_NAME_MAX = 100
# One request never touches more rows than this (a bulk form of one page holds 50).
BULK_MAX_IDS = 500
FLAGS = ("read", "unread", "flag", "unflag")
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)


class NotFoundError(LookupError):
    """No such folder or message for this user (it may exist for someone else: same answer)."""


class FolderError(ValueError):
    """A folder change that the rules refuse; the message says why, in the user's words."""


@dataclasses.dataclass(frozen=True)
class FolderInfo:
    """A folder as the sidebar shows it."""

    id: int
    name: str
    role: str | None
    unread: int

    @property
    def is_system(self) -> bool:
        """System folders (Inbox, Sent, ...) cannot be renamed or deleted."""
        return self.role is not None


@dataclasses.dataclass(frozen=True)
class Page:
    """One page of a folder, newest first, with the cursors of its neighbours (None at an end)."""

    messages: list[Message]
    newer_cursor: str | None
    older_cursor: str | None


# ---------------------------------------------------------------------------------------------
# Folders


def folder_counts(session: Session, user_id: int) -> list[FolderInfo]:
    """Every folder of the user in display order, with its unread count (one grouped query)."""
    folders = session.execute(
        select(Folder.id, Folder.name, Folder.role)
        .where(Folder.user_id == user_id)
        .order_by(Folder.position, func.lower(Folder.name), Folder.id)).all()
    # The folder ids are the user's own, so no user_id filter: with an index on
    # (folder_id, is_read) the count reads only index entries of unread mail, whatever the
    # folder's size; a user_id test would fetch every unread row.
    unread = dict(session.execute(
        select(Message.folder_id, func.count())
        .where(Message.folder_id.in_([f.id for f in folders]), Message.is_read.is_(False))
        .group_by(Message.folder_id)).all()) if folders else {}
    return [FolderInfo(f.id, f.name, f.role, unread.get(f.id, 0)) for f in folders]


def get_folder(session: Session, user_id: int, folder_id: int) -> Folder:
    """The user's folder with this id, or NotFoundError."""
    folder = session.scalar(select(Folder).where(Folder.id == folder_id, Folder.user_id == user_id))
    if folder is None:
        raise NotFoundError(f"no folder {folder_id}")
    return folder


def folder_by_role(session: Session, user_id: int, role: str) -> Folder:
    """The user's system folder with this role (inbox, sent, trash, ...)."""
    folder = session.scalar(select(Folder).where(Folder.user_id == user_id, Folder.role == role))
    if folder is None:
        raise NotFoundError(f"user has no {role} folder")
    return folder


def clean_folder_name(name: str) -> str:
    """A folder name as stored: NFC, single spaces, trimmed; FolderError if unusable."""
    cleaned = " ".join(unicodedata.normalize("NFC", name or "").split())
    if not cleaned:
        raise FolderError("Give the folder a name.")
    if len(cleaned) > FOLDER_NAME_MAX:
        raise FolderError(f"Folder names are at most {FOLDER_NAME_MAX} characters.")
    if any(unicodedata.category(ch) in ("Cc", "Cf") for ch in cleaned):
        raise FolderError("Folder names cannot contain control characters.")
    return cleaned


def _check_name_free(session: Session, user_id: int, name: str, except_id: int | None = None) -> None:
    """Refuse a name another folder of the user already has, ignoring case ("inbox" = "Inbox")."""
    stmt = select(Folder.id).where(Folder.user_id == user_id,
                                   func.lower(Folder.name) == name.lower())
    if except_id is not None:
        stmt = stmt.where(Folder.id != except_id)
    if session.scalar(stmt.limit(1)) is not None:
        raise FolderError(f"You already have a folder named “{name}”.")


def create_folder(session: Session, user_id: int, name: str) -> Folder:
    """Add a custom folder; FolderError when the name is empty, too long or taken."""
    name = clean_folder_name(name)
    _check_name_free(session, user_id, name)
    folder = Folder(user_id=user_id, name=name, role=None, position=100)
    session.add(folder)
    session.flush()
    return folder


def rename_folder(session: Session, user_id: int, folder_id: int, name: str) -> Folder:
    """Rename a custom folder; system folders and taken names are refused."""
    folder = get_folder(session, user_id, folder_id)
    if folder.role is not None:
        raise FolderError(f"“{folder.name}” is a system folder and cannot be renamed.")
    name = clean_folder_name(name)
    _check_name_free(session, user_id, name, except_id=folder.id)
    folder.name = name
    session.flush()
    return folder


def delete_folder(session: Session, user_id: int, folder_id: int) -> int:
    """Delete a custom folder; its messages go to Trash (never lost). Return how many moved."""
    folder = get_folder(session, user_id, folder_id)
    if folder.role is not None:
        raise FolderError(f"“{folder.name}” is a system folder and cannot be deleted.")
    trash = folder_by_role(session, user_id, "trash")
    moved = session.execute(
        update(Message).where(Message.user_id == user_id, Message.folder_id == folder.id)
        .values(folder_id=trash.id).execution_options(synchronize_session=False)).rowcount
    session.delete(folder)
    session.flush()
    # A filter that filed into this folder is switched off now, with a notice, not at the
    # next delivery (which would send that mail to the Inbox anyway).
    from webapp.services.filters import disable_broken_filters

    disable_broken_filters(session, user_id)
    return moved


# ---------------------------------------------------------------------------------------------
# Listing


def encode_cursor(sort_date: dt.datetime, message_id: int) -> str:
    """A page cursor: the (sort_date, id) of a message as '<microseconds since 1970>.<id>'."""
    micros = (sort_date.astimezone(dt.timezone.utc) - _EPOCH) // dt.timedelta(microseconds=1)
    return f"{micros}.{message_id}"


def decode_cursor(cursor: str) -> tuple[dt.datetime, int]:
    """The (sort_date, id) of a cursor; ValueError for anything a link of ours never holds."""
    micros, _, message_id = (cursor or "").partition(".")
    if not micros.lstrip("-").isdigit() or not message_id.isdigit() or len(cursor) > 40:
        raise ValueError("bad cursor")
    return _EPOCH + dt.timedelta(microseconds=int(micros)), int(message_id)


def list_page(session: Session, user_id: int, folder_id: int, before: str | None = None,
              after: str | None = None, limit: int = PAGE_SIZE) -> Page:
    """One page of a folder, newest first: the first page, or the page older than ``before``
    or newer than ``after`` (cursors from a previous page).

    Keyset pagination on (sort_date, id) walks ix_message_folder_listing from the cursor, so a
    deep page costs what the first one does, whatever the folder's size (no OFFSET, no COUNT).
    A malformed cursor gives the first page.
    """
    get_folder(session, user_id, folder_id)
    key = tuple_(Message.sort_date, Message.id)

    def cursor_key(cursor: str):
        sort_date, message_id = decode_cursor(cursor)
        return tuple_(literal(sort_date, Message.sort_date.type), literal(message_id))
    stmt = select(Message).where(Message.folder_id == folder_id, Message.user_id == user_id)
    newest_first = True
    try:
        if after:
            stmt = stmt.where(key > cursor_key(after))
            newest_first = False
        elif before:
            stmt = stmt.where(key < cursor_key(before))
    except ValueError:
        before = after = None
        newest_first = True
    if newest_first:
        stmt = stmt.order_by(Message.sort_date.desc(), Message.id.desc())
    else:
        stmt = stmt.order_by(Message.sort_date.asc(), Message.id.asc())
    # One row more than the page tells whether there is a page beyond it.
    rows = list(session.scalars(stmt.limit(limit + 1)))
    more = len(rows) > limit
    rows = rows[:limit]
    if not newest_first:
        rows.reverse()
    if not rows:
        return Page([], None, None)
    first, last = rows[0], rows[-1]
    if newest_first:
        newer = encode_cursor(first.sort_date, first.id) if before else None
        older = encode_cursor(last.sort_date, last.id) if more else None
    else:
        newer = encode_cursor(first.sort_date, first.id) if more else None
        older = encode_cursor(last.sort_date, last.id)
    return Page(rows, newer, older)


def get_message(session: Session, user_id: int, message_id: int) -> Message:
    """The user's message with this id, or NotFoundError."""
    message = session.scalar(select(Message).where(Message.id == message_id,
                                                   Message.user_id == user_id))
    if message is None:
        raise NotFoundError(f"no message {message_id}")
    return message


def _owned_ids(ids: Iterable[int]) -> list[int]:
    """The distinct ids of a request, bounded (a form of ours never sends more than a page)."""
    unique = sorted({int(i) for i in ids})
    if len(unique) > BULK_MAX_IDS:
        raise ValueError(f"at most {BULK_MAX_IDS} messages at once")
    return unique


# ---------------------------------------------------------------------------------------------
# Changes


def move(session: Session, user_id: int, ids: Sequence[int], folder_id: int) -> int:
    """Move the user's messages to one of the user's folders; return how many moved."""
    target = get_folder(session, user_id, folder_id)
    wanted = _owned_ids(ids)
    if not wanted:
        return 0
    return session.execute(
        update(Message).where(Message.user_id == user_id, Message.id.in_(wanted))
        .values(folder_id=target.id).execution_options(synchronize_session="fetch")).rowcount


def set_flags(session: Session, user_id: int, ids: Sequence[int], flag: str) -> int:
    """Mark the user's messages read/unread or flag/unflag them; return how many matched."""
    values = {"read": {"is_read": True}, "unread": {"is_read": False},
              "flag": {"is_flagged": True}, "unflag": {"is_flagged": False}}.get(flag)
    if values is None:
        raise ValueError(f"unknown flag change {flag!r}")
    wanted = _owned_ids(ids)
    if not wanted:
        return 0
    return session.execute(
        update(Message).where(Message.user_id == user_id, Message.id.in_(wanted))
        .values(**values).execution_options(synchronize_session="fetch")).rowcount


def delete_forever(session: Session, user_id: int, ids: Sequence[int]) -> int:
    """Remove the user's messages for good: rows, blob references and quota, in one transaction.

    Return how many were deleted. Addresses and search text go with the rows (ON DELETE CASCADE).
    """
    wanted = _owned_ids(ids)
    if not wanted:
        return 0
    return _delete_rows(session, user_id, select(Message.id, Message.blob_sha256, Message.size)
                        .where(Message.user_id == user_id, Message.id.in_(wanted)))


def _delete_rows(session: Session, user_id: int, selection) -> int:
    """Delete the messages a (id, blob_sha256, size) selection names; refund and unreference."""
    rows = session.execute(selection).all()
    if not rows:
        return 0
    for row in rows:
        blobs.drop_reference(session, row.blob_sha256)
    quota.refund(session, user_id, sum(row.size for row in rows))
    ids = [row.id for row in rows]
    for start in range(0, len(ids), BULK_MAX_IDS):
        session.execute(sql_delete(Message).where(Message.user_id == user_id,
                                              Message.id.in_(ids[start:start + BULK_MAX_IDS]))
                        .execution_options(synchronize_session=False))
    session.expire_all()
    return len(ids)


def trash_or_delete(session: Session, user_id: int, ids: Sequence[int]) -> tuple[int, int]:
    """The Delete button: move to Trash, or delete for good what is already in Trash.

    Return (moved to Trash, deleted for good).
    """
    wanted = _owned_ids(ids)
    if not wanted:
        return 0, 0
    trash = folder_by_role(session, user_id, "trash")
    forever = _delete_rows(session, user_id, select(Message.id, Message.blob_sha256, Message.size)
                           .where(Message.user_id == user_id, Message.id.in_(wanted),
                                  Message.folder_id == trash.id))
    trashed = session.execute(
        update(Message).where(Message.user_id == user_id, Message.id.in_(wanted))
        .values(folder_id=trash.id).execution_options(synchronize_session="fetch")).rowcount
    return trashed, forever


def empty_trash(session: Session, user_id: int) -> int:
    """Delete every message in the user's Trash for good; return how many."""
    trash = folder_by_role(session, user_id, "trash")
    return _delete_rows(session, user_id, select(Message.id, Message.blob_sha256, Message.size)
                        .where(Message.user_id == user_id, Message.folder_id == trash.id))


def folder_message_count(session: Session, user_id: int, folder_id: int) -> int:
    """How many messages one of the user's folders holds (for a confirmation step, not per page)."""
    return session.scalar(select(func.count()).select_from(Message)
                          .where(Message.user_id == user_id, Message.folder_id == folder_id)) or 0


def storage(session: Session, user_id: int) -> tuple[int, int]:
    """The user's (used bytes, quota bytes)."""
    used, limit = session.execute(select(User.used_bytes, User.quota_bytes)
                                  .where(User.id == user_id)).one()
    return used, limit
