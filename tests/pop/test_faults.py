"""Faults a real Dovecot cannot be made to show, against the scripted fake POP3 server.

Each test says which fault it needs: RFC 3206 answers on demand, Gmail's "recent:" listing,
a connection dropped right after DELE, a UIDL listed twice, a stall.
"""
from __future__ import annotations

import pytest
from sqlalchemy import select

from tests.fixtures.fakepop import DROP, STALL, FakeMessage, FakePopScript
from tests.pop.conftest import make_message
from webapp.extensions import db
from webapp.models import Folder, MailAccount, Message
from webapp.models.pop import PopAccount, PopUidl
from webapp.services.delivery import deliver
from worker.jobs.fetch import run_batch


@pytest.fixture
def fake_account(make_pop):
    """make(server, **kw): a POP account on a fake server (plain POP3, no TLS there)."""
    def _make(server, **overrides):
        settings = dict(host=server.host, port=server.port, security="none")
        settings.update(overrides)
        return make_pop(("me", "pw"), **settings)
    return _make


def _reload(account: PopAccount) -> PopAccount:
    db.session.expire_all()
    return db.session.get(PopAccount, account.id)


@pytest.mark.parametrize("reply, kind, auth, connection, words", [
    ("-ERR [IN-USE] Mailbox locked by another session", "in_use", 0, 0, "Another program"),
    ("-ERR [LOGIN-DELAY] Wait 15 minutes", "login_delay", 0, 0, "every few minutes"),
    ("-ERR [SYS/TEMP] Backend down", "sys_temp", 0, 1, "temporary problem"),
    ("-ERR [SYS/PERM] POP disabled for this account", "sys_perm", 0, 1, "provider's settings"),
    ("-ERR [AUTH] Web login required: https://support.google.com/mail/answer/78754",
     "web_login_required", 1, 0, "app password"),
    ("-ERR [AUTH] Authentication failed.", "auth", 1, 0, "password"),
])
def test_rfc3206_answers_count_against_the_right_counter(fakepop, fake_account, reply, kind,
                                                         auth, connection, words):
    """RFC 3206 codes on demand: Dovecot only shows [AUTH] and [IN-USE], and not at will."""
    server = fakepop(FakePopScript(responses={"PASS": reply}))
    account = fake_account(server)

    result = run_batch(account.id)

    account = _reload(account)
    assert (result.status, result.error_kind) == ("error", kind)
    assert (account.auth_failures, account.connection_failures) == (auth, connection)
    assert account.last_error_kind == kind and words in account.last_error
    assert account.state == "active"


def test_a_success_resets_both_counters(fakepop, fake_account):
    """Needs a server that fails on demand and then recovers ([SYS/TEMP], then fine)."""
    script = FakePopScript(messages=[FakeMessage("u1", make_message(1))],
                           responses={"PASS": "-ERR [SYS/TEMP] later"})
    server = fakepop(script)
    account = fake_account(server)
    run_batch(account.id)
    account = _reload(account)
    account.auth_failures = 3
    db.session.commit()
    script.responses.clear()

    assert run_batch(account.id).stored == 1
    account = _reload(account)
    assert (account.auth_failures, account.connection_failures, account.last_error) == (0, 0, "")


def test_fifty_connection_failures_in_a_row_disable(fakepop, fake_account):
    """A [SYS/TEMP] server on demand, fifty times: Dovecot cannot be made to say it."""
    server = fakepop(FakePopScript(responses={"PASS": "-ERR [SYS/TEMP] later"}))
    account = fake_account(server)
    for _ in range(49):
        run_batch(account.id)
    assert _reload(account).state == "active"
    run_batch(account.id)
    account = _reload(account)
    assert (account.state, account.state_reason, account.connection_failures) == (
        "disabled", "connection_failures", 50)


def test_connection_dropped_after_dele_stores_once_and_deletes_next_time(fakepop, fake_account):
    """A drop right after DELE (so QUIT never happens) cannot be caused in Dovecot on demand."""
    dropping = {"on": True}
    script = FakePopScript(
        messages=[FakeMessage(f"u{n}", make_message(n)) for n in range(3)],
        hooks={"DELE": lambda session, argument: DROP if dropping["on"] else None})
    server = fakepop(script)
    account = fake_account(server, delete_from_server=True)

    first = run_batch(account.id)
    assert first.status == "error" and first.stored == 3  # committed before DELE
    assert len(script.messages) == 3  # no QUIT: nothing deleted

    dropping["on"] = False
    second = run_batch(account.id)
    assert second.status == "done" and second.stored == 0 and second.deleted == 3
    assert script.messages == []
    assert db.session.scalar(select(db.func.count()).select_from(Message)) == 3


def test_a_drop_in_the_middle_of_a_batch_keeps_what_was_stored_with_its_ledger(fakepop,
                                                                               fake_account):
    """A connection lost mid-RETR on demand (in the second retrieval round) needs a scripted server."""
    from worker.jobs.fetch import CHUNK_MESSAGES

    total, drop_at = CHUNK_MESSAGES + 30, CHUNK_MESSAGES + 11
    script = FakePopScript(
        messages=[FakeMessage(f"u{n}", make_message(n)) for n in range(total)],
        hooks={"RETR": lambda session, argument: DROP if int(argument) == drop_at else None})
    server = fakepop(script)
    account = fake_account(server, delete_from_server=True, batch_size=total)

    first = run_batch(account.id)

    # The first round was delivered whole before the drop: it stays, with its ledger rows.
    assert (first.status, first.error_kind, first.stored) == ("error", "connect", CHUNK_MESSAGES)
    assert db.session.scalar(select(db.func.count()).select_from(PopUidl)) == CHUNK_MESSAGES
    assert db.session.scalar(select(db.func.count()).select_from(Message)) == CHUNK_MESSAGES
    assert len(script.messages) == total  # no QUIT, nothing deleted
    script.hooks.clear()
    second = run_batch(account.id)
    assert (second.status, second.stored, second.deleted) == ("done", 30, total)
    assert script.messages == []
    assert _reload(account).messages_fetched == total


def test_a_uidl_listed_twice_is_fetched_once_and_the_twin_never_deleted(fakepop, fake_account):
    """Duplicate UIDLs: a broken-server fault Dovecot never shows."""
    script = FakePopScript(messages=[
        FakeMessage("same", make_message(1)), FakeMessage("same", make_message(2)),
        FakeMessage("other", make_message(3))])
    server = fakepop(script)
    account = fake_account(server, delete_from_server=True)

    result = run_batch(account.id)

    assert result.stored == 2
    assert [m.data for m in script.messages] == [make_message(2)]


def test_a_stalled_server_times_out_as_a_connection_failure(pop_app, fakepop, fake_account):
    """A server that stops answering mid-session: only a scripted server stalls on demand."""
    pop_app.config["POP_TIMEOUT_SECONDS"] = 1.0
    server = fakepop(FakePopScript(messages=[FakeMessage("u1", make_message(1))],
                                   hooks={"UIDL": lambda session, argument: STALL}))
    account = fake_account(server)

    result = run_batch(account.id)

    assert (result.status, result.error_kind) == ("error", "timeout")
    assert _reload(account).connection_failures == 1


def test_gmail_recent_mode_files_own_mail_in_sent_and_dedupes(fakepop, fake_account, user):
    """Gmail's recent: listing (30 days again in every session) exists only in the fake server."""
    hosted = db.session.scalar(select(MailAccount).where(MailAccount.user_id == user.id,
                                                         MailAccount.kind == "hosted"))
    # A message we sent ourselves earlier, already in Sent.
    deliver(db.session, hosted, make_message(50, sender=user.email,
                                             message_id="<we-sent@acme.example>"),
            "hosted-sent-1", folder_role="sent")
    db.session.commit()
    script = FakePopScript(gmail=True, messages=[
        FakeMessage("g-old", make_message(1), age_days=45),
        FakeMessage("g-in", make_message(2), age_days=3),
        FakeMessage("g-own", make_message(3, sender="me@gmail.example", to="bob@x.example"),
                    age_days=2),
        FakeMessage("g-own-hosted", make_message(4, sender=user.email.upper()), age_days=2),
        FakeMessage("g-twin", make_message(5, message_id="<msg-2@test.example>"), age_days=1),
        FakeMessage("g-ours", make_message(6, sender=user.email,
                                           message_id="<we-sent@acme.example>"), age_days=1),
    ])
    server = fakepop(script)
    account = fake_account(server, email="me@gmail.example", username="recent:me@gmail.example",
                           delete_from_server=True)
    assert account.delete_from_server is False  # recent: forces leave-on-server

    result = run_batch(account.id)

    assert (result.stored, result.skipped, result.sent) == (3, 2, 2)
    folders = dict(db.session.execute(
        select(Message.message_id, Folder.role).join(Folder, Folder.id == Message.folder_id)
        .where(Message.account_id == account.mail_account_id)).all())
    assert folders == {"<msg-2@test.example>": "inbox", "<msg-3@test.example>": "sent",
                       "<msg-4@test.example>": "sent"}
    assert db.session.scalar(select(db.func.count()).select_from(Message).where(
        Message.message_id == "<we-sent@acme.example>")) == 1
    # Every session re-lists the last 30 days: nothing new is stored, nothing is deleted.
    again = run_batch(account.id)
    assert (again.stored, again.skipped) == (0, 0)
    assert len(script.messages) == 6
    assert db.session.scalar(select(db.func.count()).select_from(PopUidl)) == 5
