"""webapp.services.mailbox: keyset pages, folders and their refusals, flags, moves, deletion for good."""
from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import func, select

from tests import factories
from tests.mail.helpers import bulk_messages, deliver_raw, folder, plain_mail
from webapp.extensions import db
from webapp.models import Blob, Folder, Message, MessageAddress, MessageText, User
from webapp.services import blobs, mailbox
from worker.jobs.index import index_pending


def walk(user_id, folder_id, limit):
    """Every page from the newest to the oldest and back again; return both id sequences."""
    down, page = [], mailbox.list_page(db.session, user_id, folder_id, limit=limit)
    pages = [page]
    while True:
        down.extend(m.id for m in page.messages)
        if page.older_cursor is None:
            break
        page = mailbox.list_page(db.session, user_id, folder_id, before=page.older_cursor,
                                 limit=limit)
        pages.append(page)
    up = []
    while page.newer_cursor is not None:
        page = mailbox.list_page(db.session, user_id, folder_id, after=page.newer_cursor,
                                 limit=limit)
        up = [m.id for m in page.messages] + up
    return down, up, pages


@pytest.mark.parametrize("step_minutes", [1, 0], ids=["distinct-dates", "equal-dates"])
@pytest.mark.parametrize("count,limit", [(7, 3), (6, 3), (1, 3), (0, 3), (101, 50)])
def test_keyset_pages_cover_the_folder_once_in_order(app, user, step_minutes, count, limit):
    inbox = folder(user, "inbox")
    ids = bulk_messages(user, count, inbox.id, step=dt.timedelta(minutes=step_minutes))
    expected = [m.id for m in db.session.scalars(
        select(Message).where(Message.folder_id == inbox.id)
        .order_by(Message.sort_date.desc(), Message.id.desc()))]
    assert sorted(expected) == sorted(ids)
    down, up, pages = walk(user.id, inbox.id, limit)
    assert down == expected
    # Walking back up from the last page gives every page but the last, in the same order.
    assert up == expected[: len(expected) - len(pages[-1].messages)]
    assert pages[0].newer_cursor is None
    assert all(len(p.messages) == limit for p in pages[:-1])


def test_malformed_cursor_gives_the_first_page(app, user):
    inbox = folder(user, "inbox")
    bulk_messages(user, 3, inbox.id)
    for bad in ("x", "1.", ".1", "1.2.3", "9" * 60 + ".1", "-1.-1"):
        page = mailbox.list_page(db.session, user.id, inbox.id, before=bad)
        assert len(page.messages) == 3, bad


def test_list_page_of_another_users_folder_is_not_found(app, user, org):
    other = factories.make_user(org)
    with pytest.raises(mailbox.NotFoundError):
        mailbox.list_page(db.session, user.id, folder(other, "inbox").id)


def test_folder_counts_are_unread_per_folder(app, user):
    inbox, spam = folder(user, "inbox"), folder(user, "spam")
    deliver_raw(user, plain_mail())
    deliver_raw(user, plain_mail())
    deliver_raw(user, plain_mail(), is_read=True)
    deliver_raw(user, plain_mail(), role="spam")
    counts = {f.name: f.unread for f in mailbox.folder_counts(db.session, user.id)}
    assert counts == {"Inbox": 2, "Drafts": 0, "Sent": 0, "Spam": 1, "Trash": 0}
    assert [f.role for f in mailbox.folder_counts(db.session, user.id)] == \
        ["inbox", "drafts", "sent", "spam", "trash"]
    assert inbox.id != spam.id


def test_folder_create_rename_delete(app, user):
    created = mailbox.create_folder(db.session, user.id, "  Deals   2026 ")
    assert created.name == "Deals 2026" and created.role is None
    mailbox.rename_folder(db.session, user.id, created.id, "Won deals")
    db.session.commit()
    assert db.session.get(Folder, created.id).name == "Won deals"
    # Renaming to its own name in another case is fine (the clash check skips itself).
    mailbox.rename_folder(db.session, user.id, created.id, "WON DEALS")
    assert mailbox.delete_folder(db.session, user.id, created.id) == 0
    db.session.commit()
    assert db.session.get(Folder, created.id) is None


@pytest.mark.parametrize("name,error", [
    ("", "Give the folder a name"),
    ("   ", "Give the folder a name"),
    ("x" * 101, "at most 100"),
    ("bad\x00name", "control characters"),
    ("inbox", "already have a folder"),
    ("TRASH", "already have a folder"),
    ("Projects", "already have a folder"),
    ("projects", "already have a folder"),
])
def test_folder_names_are_validated(app, user, name, error):
    mailbox.create_folder(db.session, user.id, "Projects")
    with pytest.raises(mailbox.FolderError, match=error):
        mailbox.create_folder(db.session, user.id, name)


def test_same_folder_name_for_two_users_is_fine(app, user, org):
    other = factories.make_user(org)
    mailbox.create_folder(db.session, user.id, "Projects")
    mailbox.create_folder(db.session, other.id, "Projects")


def test_system_folders_cannot_be_renamed_or_deleted(app, user):
    for role in ("inbox", "drafts", "sent", "spam", "trash"):
        system = folder(user, role)
        with pytest.raises(mailbox.FolderError, match="system folder"):
            mailbox.rename_folder(db.session, user.id, system.id, "Other")
        with pytest.raises(mailbox.FolderError, match="system folder"):
            mailbox.delete_folder(db.session, user.id, system.id)


def test_deleting_a_folder_moves_its_mail_to_trash(app, user):
    projects = mailbox.create_folder(db.session, user.id, "Projects")
    db.session.commit()
    message = deliver_raw(user, plain_mail())
    mailbox.move(db.session, user.id, [message.id], projects.id)
    db.session.commit()
    assert mailbox.delete_folder(db.session, user.id, projects.id) == 1
    db.session.commit()
    assert db.session.get(Message, message.id).folder_id == folder(user, "trash").id


def test_another_users_folder_cannot_be_touched(app, user, org):
    other = factories.make_user(org)
    theirs = mailbox.create_folder(db.session, other.id, "Theirs")
    db.session.commit()
    for call in (lambda: mailbox.rename_folder(db.session, user.id, theirs.id, "Mine"),
                 lambda: mailbox.delete_folder(db.session, user.id, theirs.id),
                 lambda: mailbox.move(db.session, user.id, [1], theirs.id)):
        with pytest.raises(mailbox.NotFoundError):
            call()


def test_flags_and_moves_touch_only_the_owners_messages(app, user, org):
    other = factories.make_user(org)
    mine, theirs = deliver_raw(user, plain_mail()), deliver_raw(other, plain_mail())
    ids = [mine.id, theirs.id]
    assert mailbox.set_flags(db.session, user.id, ids, "read") == 1
    assert mailbox.set_flags(db.session, user.id, ids, "flag") == 1
    assert mailbox.move(db.session, user.id, ids, folder(user, "spam").id) == 1
    assert mailbox.trash_or_delete(db.session, user.id, ids) == (1, 0)
    db.session.commit()
    db.session.expire_all()
    mine, theirs = db.session.get(Message, mine.id), db.session.get(Message, theirs.id)
    assert (mine.is_read, mine.is_flagged, mine.folder_id) == (True, True, folder(user, "trash").id)
    assert (theirs.is_read, theirs.is_flagged, theirs.folder_id) == \
        (False, False, folder(other, "inbox").id)
    with pytest.raises(ValueError):
        mailbox.set_flags(db.session, user.id, ids, "explode")


def used_bytes(user) -> int:
    return db.session.scalar(select(User.used_bytes).where(User.id == user.id))


def test_delete_in_trash_is_forever_and_refunds_quota_and_blobs(app, user):
    raw = plain_mail(subject="Twice stored")
    first, second = deliver_raw(user, raw), deliver_raw(user, raw)
    other = deliver_raw(user, plain_mail(subject="Kept"))
    index_pending(user.id)
    db.session.commit()
    assert first.blob_sha256 == second.blob_sha256
    blob = first.blob_sha256
    first_id, second_id, other_id = first.id, second.id, other.id
    before = used_bytes(user)
    assert mailbox.trash_or_delete(db.session, user.id, [first_id]) == (1, 0)
    db.session.commit()
    assert used_bytes(user) == before  # Trash still counts
    assert mailbox.trash_or_delete(db.session, user.id, [first_id]) == (0, 1)
    db.session.commit()
    assert used_bytes(user) == before - len(raw)
    assert db.session.get(Blob, blob).refcount == 1
    assert db.session.get(Message, first_id) is None
    assert db.session.scalar(select(func.count()).select_from(MessageAddress)
                             .where(MessageAddress.message_pk == first_id)) == 0
    assert db.session.get(MessageText, first_id) is None
    assert mailbox.delete_forever(db.session, user.id, [second_id, other_id]) == 2
    db.session.commit()
    assert used_bytes(user) == 0
    assert db.session.get(Blob, blob).refcount == 0
    # The bytes go when garbage is collected, and only then.
    store = blobs.get_store(app.config["BLOB_DIR"])
    assert store.exists(blob)
    blobs.collect_garbage(db.session, store)
    assert not store.exists(blob)


def test_delete_forever_rolls_back_whole(app, user):
    message = deliver_raw(user, plain_mail())
    message_id, blob = message.id, message.blob_sha256
    before = used_bytes(user)
    mailbox.delete_forever(db.session, user.id, [message_id])
    db.session.rollback()
    assert db.session.get(Message, message_id) is not None
    assert used_bytes(user) == before
    assert db.session.get(Blob, blob).refcount == 1


def test_empty_trash_deletes_only_trash_and_only_mine(app, user, org):
    other = factories.make_user(org)
    trashed = [deliver_raw(user, plain_mail(), role="trash").id for _ in range(3)]
    kept = deliver_raw(user, plain_mail())
    theirs = deliver_raw(other, plain_mail(), role="trash")
    kept_id, kept_size, theirs_id = kept.id, kept.size, theirs.id
    assert mailbox.folder_message_count(db.session, user.id, folder(user, "trash").id) == 3
    assert mailbox.empty_trash(db.session, user.id) == 3
    db.session.commit()
    assert all(db.session.get(Message, m) is None for m in trashed)
    assert db.session.get(Message, kept_id) is not None
    assert db.session.get(Message, theirs_id) is not None
    assert used_bytes(user) == kept_size
    assert mailbox.empty_trash(db.session, user.id) == 0


def test_bulk_size_is_bounded(app, user):
    with pytest.raises(ValueError):
        mailbox.set_flags(db.session, user.id, list(range(mailbox.BULK_MAX_IDS + 1)), "read")
