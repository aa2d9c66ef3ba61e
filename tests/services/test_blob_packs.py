"""Pack files: a delivered batch in one file, read back by hash, collected and compacted."""
from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from tests.services.test_delivery import hosted, make_raw
from webapp.extensions import db
from webapp.models import Blob, Message
from webapp.services import blobs, mailbox
from webapp.services.delivery import Incoming, deliver, deliver_many, wait_durable


def _raws(count: int, tag: str = "m") -> list[bytes]:
    return [make_raw(subject=f"Batch {tag}{n}", message_id=f"<{tag}{n}@customer.example>",
                     body=f"Body {n} " * (50 + n)) for n in range(count)]


def _deliver_batch(user, raws: list[bytes], tag: str = "k") -> list[Message]:
    outcomes = deliver_many(db.session, hosted(user),
                            [Incoming(raw, f"{tag}-{n}") for n, raw in enumerate(raws)])
    db.session.commit()
    assert [o.status for o in outcomes] == ["stored"] * len(raws)
    return [db.session.get(Message, o.message_pk) for o in outcomes]


def _store(app) -> blobs.LocalBlobStore:
    return blobs.get_store(app.config["BLOB_DIR"])


def _age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def test_a_batch_is_one_pack_and_every_message_reads_back_exactly(app, user):
    raws = _raws(3)
    messages = _deliver_batch(user, raws)
    store = _store(app)

    rows = db.session.scalars(select(Blob).order_by(Blob.pack_offset)).all()
    assert len({row.pack for row in rows}) == 1 and rows[0].pack is not None
    assert [row.pack_offset for row in rows] == [0, len(raws[0]), len(raws[0]) + len(raws[1])]
    assert [name for name, _, _ in store.iter_packs()] == [rows[0].pack]
    assert list(store.iter_hashes()) == []  # no file per message
    for message, raw in zip(messages, raws):
        assert store.get(message.blob_sha256) == raw
        with store.open(message.blob_sha256) as handle:
            assert handle.read() == raw
        assert store.exists(message.blob_sha256)


def test_bytes_stored_before_keep_their_place(app, user):
    raws = _raws(2)
    single = deliver(db.session, hosted(user), raws[0], "alone").message
    db.session.commit()

    _deliver_batch(user, raws)

    row = db.session.get(Blob, single.blob_sha256)
    assert (row.pack, row.refcount) == (None, 2)  # its own file, used twice
    assert _store(app).get(single.blob_sha256) == raws[0]
    assert db.session.get(Blob, hashlib.sha256(raws[1]).hexdigest()).pack is not None


def test_a_damaged_pack_is_an_error_not_other_bytes(app, user):
    raws = _raws(2)
    messages = _deliver_batch(user, raws)
    row = db.session.get(Blob, messages[1].blob_sha256)
    path = _store(app).pack_path(row.pack)
    data = bytearray(path.read_bytes())
    data[row.pack_offset + 10] ^= 0xFF
    path.write_bytes(bytes(data))

    with pytest.raises(blobs.BlobMissingError, match="does not hold these bytes"):
        _store(app).get(messages[1].blob_sha256)
    assert _store(app).get(messages[0].blob_sha256) == raws[0]


def test_a_short_file_of_the_same_hash_does_not_shadow_the_pack(app, user):
    """A delivery that died mid-write can leave a short file; the row says where the bytes are."""
    raws = _raws(2)
    messages = _deliver_batch(user, raws)
    digest = messages[0].blob_sha256
    stray = Path(app.config["BLOB_DIR"]) / digest[:2] / digest[2:4] / digest
    stray.parent.mkdir(parents=True)
    stray.write_bytes(raws[0][:100])

    assert _store(app).get(digest) == raws[0]


def test_a_pack_goes_when_its_messages_are_deleted(app, user):
    messages = _deliver_batch(user, _raws(3))
    store = _store(app)
    mailbox.delete_forever(db.session, user.id, [m.id for m in messages])
    db.session.commit()

    assert blobs.collect_garbage(db.session, store, orphan_age=-1) == 1
    assert list(store.iter_packs()) == []
    assert db.session.scalar(select(Blob.sha256)) is None


def test_a_mostly_deleted_pack_is_compacted_into_files(app, user):
    raws = _raws(4)
    messages = _deliver_batch(user, raws)
    store = _store(app)
    mailbox.delete_forever(db.session, user.id, [m.id for m in messages[:3]])
    db.session.commit()

    blobs.collect_garbage(db.session, store)

    kept = db.session.get(Blob, messages[3].blob_sha256)
    db.session.refresh(kept)
    assert (kept.pack, kept.pack_offset, kept.refcount) == (None, None, 1)
    assert list(store.iter_packs()) == []
    assert list(store.iter_hashes()) == [kept.sha256]
    assert store.get(kept.sha256) == raws[3]


def test_an_uncommitted_pack_is_kept_while_young_and_removed_when_old(app, user):
    store = _store(app)
    deliver_many(db.session, hosted(user), [Incoming(raw, f"u-{n}")
                                            for n, raw in enumerate(_raws(2))])
    db.session.rollback()  # the delivery never committed: its pack is an orphan
    [(name, _, _)] = list(store.iter_packs())

    assert blobs.collect_garbage(db.session, store) == 0
    assert [n for n, _, _ in store.iter_packs()] == [name]
    _age(store.pack_path(name), 7200)
    assert blobs.collect_garbage(db.session, store) == 1
    assert list(store.iter_packs()) == []


def test_the_caller_can_hold_the_flush_until_its_commit(app, user):
    pending: list = []
    outcomes = deliver_many(db.session, hosted(user),
                            [Incoming(raw, f"p-{n}") for n, raw in enumerate(_raws(2))],
                            pending_syncs=pending)
    assert len(pending) == 1
    wait_durable(pending)
    assert pending == []
    db.session.commit()
    assert [o.status for o in outcomes] == ["stored", "stored"]


def test_without_a_packs_folder_a_batch_is_stored_a_file_per_message(app, user):
    (Path(app.config["BLOB_DIR"])).mkdir(parents=True, exist_ok=True)
    (Path(app.config["BLOB_DIR"]) / blobs.PACK_FOLDER).write_text("not a folder")
    raws = _raws(2)

    messages = _deliver_batch(user, raws)

    store = _store(app)
    assert sorted(store.iter_hashes()) == sorted(m.blob_sha256 for m in messages)
    assert [store.get(m.blob_sha256) for m in messages] == raws
    assert all(db.session.get(Blob, m.blob_sha256).pack is None for m in messages)


def test_gc_unpack_command_moves_every_message_out_of_packs(app, user, runner):
    raws = _raws(3)
    messages = _deliver_batch(user, raws)

    result = runner.invoke(args=["blobs", "gc", "--unpack"])

    assert result.exit_code == 0, result.output
    assert "Unpacked 3 messages from 1 packs." in result.output
    db.session.expire_all()
    assert all(db.session.get(Blob, m.blob_sha256).pack is None for m in messages)
    assert [_store(app).get(m.blob_sha256) for m in messages] == raws
    assert list(_store(app).iter_packs()) == []


def test_bytes_already_stored_are_filed_without_being_written_again(app, user):
    """A Sent copy names its outbox blob: no second copy, no pack, one more reference."""
    raw = _raws(1)[0]
    first = deliver(db.session, hosted(user), raw, "outbox").message
    db.session.commit()
    digest = first.blob_sha256

    outcomes = deliver_many(db.session, hosted(user),
                            [Incoming(raw, f"sent:{n}", "sent", True, sha256=digest)
                             for n in range(2)])
    db.session.commit()

    assert [o.status for o in outcomes] == ["stored", "stored"]
    assert list(_store(app).iter_packs()) == []
    row = db.session.get(Blob, digest)
    db.session.refresh(row)
    assert (row.refcount, row.pack) == (3, None)
    assert _store(app).get(digest) == raw


def test_a_damaged_file_is_an_error_not_other_bytes(app, user):
    raw = _raws(1)[0]
    digest = deliver(db.session, hosted(user), raw, "one").message.blob_sha256
    db.session.commit()
    path = Path(app.config["BLOB_DIR"]) / digest[:2] / digest[2:4] / digest
    path.write_bytes(raw[:-1] + b"!")

    with pytest.raises(blobs.BlobMissingError, match="does not hold these bytes"):
        _store(app).get(digest)


def test_a_forked_child_delivers_batches_with_threads_of_its_own(app, user):
    """An RQ work horse is forked from a worker that may have delivered a batch already."""
    _deliver_batch(user, _raws(2, "parent"))  # the parent's write and flush threads exist
    user_id = user.id
    db.session.remove()
    db.engine.dispose()  # no connection crosses the fork
    pid = os.fork()
    if pid == 0:  # the child: exit 0 only if its batch is stored (a dead thread would hang)
        code = 1
        try:
            with app.app_context():
                _deliver_batch(db.session.get(type(user), user_id), _raws(2, "child"), "c")
                code = 0
        except BaseException:
            import traceback
            traceback.print_exc()
        finally:
            os._exit(code)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        time.sleep(0.05)
    else:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        pytest.fail("the child's batch delivery hung")
    assert os.waitstatus_to_exitcode(status) == 0
    assert db.session.scalar(select(Message.id).where(Message.source_key == "c-1")) is not None


def test_a_pack_of_more_messages_than_one_system_call_takes(app):
    """writev(2) takes at most 1,024 buffers: a larger batch is written in several calls."""
    store = blobs.LocalBlobStore(Path(app.config["BLOB_DIR"]))
    raws = [f"message {n}\r\n".encode() * (n % 7 + 1) for n in range(2500)]

    pack, located = store.write_pack(raws)

    assert store.pack_path(pack).stat().st_size == sum(map(len, raws))
    for raw, (digest, offset) in zip(raws, located):
        assert digest == hashlib.sha256(raw).hexdigest()
        assert store.read_packed(digest, pack, offset, len(raw)) == raw
