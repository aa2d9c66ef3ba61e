"""The fetch job against a real Dovecot: modes, batches, idempotence, failures, quota, size."""
from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from tests.pop.conftest import make_message, sha256
from webapp.extensions import db
from webapp.models import Folder, Message, User
from webapp.models.pop import PopAccount, PopFetchRun, PopUidl
from webapp.queue import get_queue
from webapp.services import blobs
from webapp.services.pop_accounts import probe_server, release_quarantine, update_pop_account
from worker.jobs.fetch import fetch_account, run_batch


def _stored(account: PopAccount) -> list[Message]:
    db.session.expire_all()
    return list(db.session.scalars(select(Message).where(
        Message.account_id == account.mail_account_id).order_by(Message.id)))


def _ledger(account: PopAccount) -> dict[str, str]:
    return dict(db.session.execute(select(PopUidl.uidl, PopUidl.state)
                                   .where(PopUidl.account_id == account.id)).all())


def _reload(account: PopAccount) -> PopAccount:
    db.session.expire_all()
    return db.session.get(PopAccount, account.id)


@pytest.mark.parametrize("delete_from_server", [False, True], ids=["keep", "delete"])
def test_fetch_stores_each_message_once_in_keep_and_delete_modes(
        dovecot, pop_user, make_pop, delete_from_server):
    messages = [make_message(n) for n in range(5)]
    dovecot.seed(pop_user[0], messages)
    account = make_pop(pop_user, delete_from_server=delete_from_server)

    result = run_batch(account.id)

    assert result.status == "done" and result.stored == 5 and result.left == 0
    stored = _stored(account)
    assert sorted(m.blob_sha256 for m in stored) == sorted(sha256(m) for m in messages)
    assert {db.session.get(Folder, m.folder_id).role for m in stored} == {"inbox"}
    assert set(_ledger(account).values()) == {"stored"}
    assert dovecot.count(pop_user[0]) == (0 if delete_from_server else 5)
    account = _reload(account)
    assert (account.messages_fetched, account.messages_left, account.server_messages) == (5, 0, 5)
    run = db.session.scalar(select(PopFetchRun).where(PopFetchRun.account_id == account.id))
    assert run.fetched == 5 and run.ended_at is not None and run.error_kind == ""
    assert run.bytes == sum(len(m) for m in messages)

    again = run_batch(account.id)
    assert again.status == "done" and again.stored == 0
    assert len(_stored(account)) == 5


def test_from_now_on_fetches_only_what_arrives_after_the_baseline(pop_app, dovecot, pop_user,
                                                                   make_pop):
    dovecot.seed(pop_user[0], [make_message(n) for n in range(3)])
    probe = probe_server(dovecot.host, dovecot.pop3s_port, "ssl", *pop_user,
                         ca_bundle=dovecot.ca_bundle, timeout=10, want_uidls=True)
    account = make_pop(pop_user, new_only=True, baseline_uidls=probe["uidls"])
    later = [make_message(n) for n in range(3, 5)]
    dovecot.seed(pop_user[0], later)

    result = run_batch(account.id)

    assert result.stored == 2
    assert sorted(m.blob_sha256 for m in _stored(account)) == sorted(sha256(m) for m in later)


def test_from_now_on_without_a_baseline_records_it_at_the_first_session(dovecot, pop_user,
                                                                        make_pop):
    dovecot.seed(pop_user[0], [make_message(n) for n in range(3)])
    account = make_pop(pop_user, new_only=True)  # the test connection failed at creation, say
    assert account.baseline_pending

    assert run_batch(account.id).stored == 0
    dovecot.seed(pop_user[0], [make_message(9)])
    assert run_batch(account.id).stored == 1
    assert [m.message_id for m in _stored(account)] == ["<msg-9@test.example>"]


def test_batches_continue_across_runs_and_the_job_enqueues_the_next(dovecot, pop_user,
                                                                    make_pop):
    dovecot.seed(pop_user[0], [make_message(n) for n in range(7)])
    account = make_pop(pop_user, batch_size=3, delete_from_server=True)
    queue = get_queue("fetch")
    queue.empty()

    first = fetch_account(account.id)
    assert (first["status"], first["stored"], first["left"]) == ("more", 3, 4)
    assert [j.args for j in queue.jobs] == [(account.id,)]
    assert dovecot.count(pop_user[0]) == 4
    second = run_batch(account.id)
    third = run_batch(account.id)
    assert (second.stored, third.stored, third.status) == (3, 1, "done")
    # Oldest first: the stored order follows the server's order.
    assert [m.message_id for m in _stored(account)] == [f"<msg-{n}@test.example>" for n in range(7)]
    assert dovecot.count(pop_user[0]) == 0


def test_a_held_lock_means_busy_and_nothing_is_fetched(pop_app, dovecot, pop_user, make_pop):
    from webapp.queue import get_redis
    from webapp.services.pop_accounts import lock_key

    dovecot.seed(pop_user[0], [make_message(1)])
    account = make_pop(pop_user)
    lock = get_redis().lock(lock_key(account.id), timeout=30)
    assert lock.acquire(blocking=False)
    try:
        assert run_batch(account.id).status == "busy"
    finally:
        lock.release()
    assert _stored(account) == []
    assert run_batch(account.id).stored == 1


def test_wrong_password_disables_at_ten_and_a_new_password_reenables(pop_app, dovecot, pop_user,
                                                                      make_pop):
    dovecot.seed(pop_user[0], [make_message(1)])
    account = make_pop(pop_user, password="not-the-password")
    for attempt in range(1, 11):
        result = run_batch(account.id)
        assert result.status == "error" and result.error_kind == "auth"
        account = _reload(account)
        assert account.auth_failures == attempt
        assert account.state == ("disabled" if attempt == 10 else "active")
    assert "password" in account.last_error
    assert run_batch(account.id).status == "inactive"  # disabled: not even a login

    queue = get_queue("fetch")
    queue.empty()
    update_pop_account(db.session, account, host=account.host, port=account.port,
                       security=account.security, username=account.username,
                       password=pop_user[1], secret_keys=pop_app.config["MAIL_SECRET_KEYS"])
    db.session.commit()
    account = _reload(account)
    assert (account.state, account.auth_failures) == ("active", 0)
    assert [j.args for j in queue.jobs] == [(account.id,)]  # fetched at once
    assert run_batch(account.id).stored == 1


@pytest.mark.parametrize("kind", ["self_signed", "expired", "wrong_host"])
def test_a_bad_certificate_is_explained_and_nothing_is_fetched(dovecot, pop_user, make_pop, kind):
    dovecot.seed(pop_user[0], [make_message(1)])
    host, port = dovecot.bad_cert_listener(kind)
    account = make_pop(pop_user, host=host, port=port)

    result = run_batch(account.id)

    assert result.status == "error" and result.error_kind == "cert_invalid"
    account = _reload(account)
    assert account.connection_failures == 1 and account.auth_failures == 0
    assert "certificate" in account.last_error
    assert _stored(account) == [] and dovecot.count(pop_user[0]) == 1


def test_a_full_quota_pauses_and_fetching_resumes_when_space_frees(dovecot, pop_user, make_pop,
                                                                   user):
    messages = [make_message(n, body_bytes=2000) for n in range(5)]
    dovecot.seed(pop_user[0], messages)
    owner = db.session.get(User, user.id)
    owner.quota_bytes = owner.used_bytes + len(messages[0]) * 2 + 100
    db.session.commit()
    account = make_pop(pop_user, delete_from_server=True)

    result = run_batch(account.id)

    assert result.status == "paused" and result.stored == 2
    account = _reload(account)
    assert (account.state, account.state_reason) == ("paused", "storage_full")
    assert "storage is full" in account.last_error
    assert dovecot.count(pop_user[0]) == 3  # only what was stored was deleted
    # Still full: the job checks the quota without logging in.
    assert run_batch(account.id).status == "paused"

    owner = db.session.get(User, user.id)
    owner.quota_bytes += 10 * len(messages[0])
    db.session.commit()
    resumed = run_batch(account.id)
    assert resumed.status == "done" and resumed.stored == 3
    account = _reload(account)
    assert account.state == "active" and account.last_error == ""
    assert dovecot.count(pop_user[0]) == 0 and len(_stored(account)) == 5


def test_oversize_messages_are_skipped_by_their_list_size_and_left_on_the_server(
        pop_app, dovecot, pop_user, make_pop):
    pop_app.config["POP_MAX_MESSAGE_BYTES"] = 5000
    dovecot.seed(pop_user[0], [make_message(1), make_message(2, body_bytes=20000), make_message(3)])
    account = make_pop(pop_user, delete_from_server=True)

    result = run_batch(account.id)

    assert (result.stored, result.skipped) == (2, 1)
    reasons = db.session.scalars(select(PopUidl.reason).where(PopUidl.account_id == account.id,
                                                              PopUidl.state == "skipped")).all()
    assert len(reasons) == 1 and "size limit" in reasons[0]
    assert dovecot.count(pop_user[0]) == 1  # the big one stays
    assert _reload(account).messages_skipped == 1
    assert run_batch(account.id).stored == 0


def test_a_message_that_cannot_be_stored_is_quarantined_and_never_deleted(
        pop_app, dovecot, pop_user, make_pop):
    messages = [make_message(n) for n in range(3)]
    # The blob folder of message 1 is a file: its bytes cannot be written (a real OSError).
    # So is the packs folder, so the batch falls back to a file per message.
    digest = sha256(messages[1])
    blocker = Path(pop_app.config["BLOB_DIR"]) / digest[:2] / digest[2:4]
    blocker.parent.mkdir(parents=True, exist_ok=True)
    blocker.write_text("a file where a blob folder should be")
    (Path(pop_app.config["BLOB_DIR"]) / blobs.PACK_FOLDER).write_text("not a folder")
    dovecot.seed(pop_user[0], messages)
    account = make_pop(pop_user, delete_from_server=True)

    first = run_batch(account.id)

    # The others of the batch are stored; the bad one is quarantined with its reason.
    assert (first.status, first.stored, first.quarantined) == ("done", 2, 1)
    assert sorted(m.blob_sha256 for m in _stored(account)) == sorted(
        sha256(m) for m in (messages[0], messages[2]))
    rows = db.session.scalars(select(PopUidl).where(PopUidl.account_id == account.id,
                                                    PopUidl.state == "quarantined")).all()
    assert len(rows) == 1 and "Could not be stored" in rows[0].reason
    assert str(blocker) in rows[0].reason  # the system's own words name the place
    assert dovecot.count(pop_user[0]) == 1  # never deleted from the server
    owner = db.session.get(User, account.user_id)
    assert owner.used_bytes == len(messages[0]) + len(messages[2])  # no quota for the failure
    assert _reload(account).messages_quarantined == 1
    assert run_batch(account.id).quarantined == 0  # never retried on its own

    blocker.unlink()
    assert release_quarantine(db.session, _reload(account)) == 1
    db.session.commit()
    assert run_batch(account.id).stored == 1
    assert dovecot.count(pop_user[0]) == 0


@pytest.fixture
def poisoned_subject():
    """A database trigger that refuses one message row: a real database error mid-batch."""
    engine = db.engine
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.exec_driver_sql(
                "CREATE FUNCTION refuse_poison() RETURNS trigger AS $$ BEGIN "
                "RAISE EXCEPTION 'refused by the test trigger'; END $$ LANGUAGE plpgsql")
            conn.exec_driver_sql(
                "CREATE TRIGGER poison BEFORE INSERT ON message FOR EACH ROW "
                "WHEN (NEW.subject = 'poison') EXECUTE FUNCTION refuse_poison()")
        else:
            conn.exec_driver_sql(
                "CREATE TRIGGER poison BEFORE INSERT ON message WHEN NEW.subject = 'poison' "
                "BEGIN SELECT RAISE(ABORT, 'refused by the test trigger'); END")
    yield "poison"
    db.session.remove()
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP TRIGGER poison" + (
            " ON message" if engine.dialect.name == "postgresql" else ""))
        if engine.dialect.name == "postgresql":
            conn.exec_driver_sql("DROP FUNCTION refuse_poison()")


def test_a_database_error_quarantines_the_one_message_that_causes_it(
        dovecot, pop_user, make_pop, poisoned_subject):
    messages = [make_message(0), make_message(1, subject=poisoned_subject), make_message(2)]
    dovecot.seed(pop_user[0], messages)
    account = make_pop(pop_user, delete_from_server=True)

    first = run_batch(account.id)

    # The batch insert failed as a whole: the culprit is found alone and quarantined, the
    # batch's work is rolled back and nothing is deleted; the next batch stores the others.
    assert (first.status, first.stored, first.quarantined) == ("more", 0, 1)
    assert _stored(account) == [] and dovecot.count(pop_user[0]) == 3
    row = db.session.scalar(select(PopUidl).where(PopUidl.account_id == account.id,
                                                  PopUidl.state == "quarantined"))
    assert "refused by the test trigger" in row.reason
    second = run_batch(account.id)
    assert (second.status, second.stored, second.quarantined) == ("done", 2, 0)
    assert dovecot.count(pop_user[0]) == 1
    assert db.session.get(User, account.user_id).used_bytes == len(messages[0]) + len(messages[2])


def test_retrieval_rounds_are_bounded_by_count_and_bytes():
    """A batch of large messages is fetched a few at a time, never all in memory at once."""
    from worker.jobs.fetch import CHUNK_BYTES, CHUNK_MESSAGES, _chunks

    small = [(n, f"u{n}") for n in range(1, 2 * CHUNK_MESSAGES + 2)]
    assert [len(c) for c in _chunks(small, {n: 100 for n, _ in small})] == [
        CHUNK_MESSAGES, CHUNK_MESSAGES, 1]
    big = [(n, f"u{n}") for n in range(1, 6)]
    sizes = {n: CHUNK_BYTES // 2 for n, _ in big}
    sizes[5] = CHUNK_BYTES * 3  # one over the bound still goes, alone
    assert [[n for n, _ in c] for c in _chunks(big, sizes)] == [[1, 2], [3, 4], [5]]
