"""`flask pop add|fetch|status`: the operator table of DESIGN.md."""
from __future__ import annotations

import json

import pytest
from sqlalchemy import func, select

from tests.pop.conftest import make_message
from webapp.extensions import db
from webapp.models import MailAccount, Message
from webapp.models.pop import PopAccount, PopUidl


def _add_args(dovecot, pop_user, user, *extra):
    name, password = pop_user
    return ["pop", "add", "--user", user.email, "--host", dovecot.host, "--port",
            str(dovecot.pop3s_port), "--security", "ssl", "--username", name,
            "--password", password, "--email", f"{name}@pop.example", *extra]


def test_pop_add_prints_the_id_last_and_sets_the_addon(pop_app, runner, dovecot, pop_user, user):
    from webapp.services.addon import get_addon_account

    result = runner.invoke(args=_add_args(dovecot, pop_user, user, "--delete-from-server",
                                          "--addon", "crm"))

    assert result.exit_code == 0, result.output
    account = db.session.get(PopAccount, int(result.output.strip().splitlines()[-1]))
    assert account.user_id == user.id and account.delete_from_server
    assert account.email == f"{pop_user[0]}@pop.example"
    assert pop_user[1] not in account.password_encrypted
    assert get_addon_account(db.session, user.id, "crm").id == account.mail_account_id


def test_pop_add_new_only_records_the_baseline(pop_app, runner, dovecot, pop_user, user):
    dovecot.seed(pop_user[0], [make_message(n) for n in range(3)])
    result = runner.invoke(args=_add_args(dovecot, pop_user, user, "--new-only"))
    assert result.exit_code == 0, result.output
    account_id = int(result.output.strip().splitlines()[-1])
    assert db.session.scalar(select(func.count()).select_from(PopUidl).where(
        PopUidl.account_id == account_id, PopUidl.state == "skipped")) == 3


@pytest.mark.parametrize("change, words", [
    ({"--user": "nobody@acme.example"}, "no user"),
    ({"--host": "bad host"}, "server name"),
    ({"--port": "70000"}, "70000"),
    ({"--security": "tls"}, "tls"),
    ({"--addon": "erp"}, "erp"),
    ({"--batch-size": "0"}, "batch size"),
])
def test_pop_add_refuses_bad_input_and_writes_nothing(pop_app, runner, dovecot, pop_user, user,
                                                      change, words):
    args = _add_args(dovecot, pop_user, user)
    for option, value in change.items():
        if option in args:
            args[args.index(option) + 1] = value
        else:
            args += [option, value]

    result = runner.invoke(args=args)

    assert result.exit_code != 0 and words in result.output
    assert db.session.scalar(select(func.count()).select_from(PopAccount)) == 0
    assert db.session.scalar(select(func.count()).select_from(MailAccount).where(
        MailAccount.kind == "pop")) == 0


def test_pop_fetch_runs_batch_after_batch_in_the_foreground(pop_app, runner, dovecot, pop_user,
                                                            make_pop):
    dovecot.seed(pop_user[0], [make_message(n) for n in range(12)])
    account = make_pop(pop_user, batch_size=5)

    result = runner.invoke(args=["pop", "fetch", str(account.id)])

    assert result.exit_code == 0, (result.output, result.exception)
    assert "Stored 12 messages, skipped 0, in 3 batches; 0 left" in result.output
    assert db.session.scalar(select(func.count()).select_from(Message).where(
        Message.account_id == account.mail_account_id)) == 12


def test_pop_fetch_reports_an_error_with_a_nonzero_exit(pop_app, runner, dovecot, pop_user,
                                                        make_pop):
    account = make_pop(pop_user, password="wrong")
    result = runner.invoke(args=["pop", "fetch", str(account.id)])
    assert result.exit_code == 1 and "password" in result.output
    assert runner.invoke(args=["pop", "fetch", "999999"]).exit_code == 1


def test_pop_status_json_has_the_documented_fields(pop_app, runner, dovecot, pop_user, make_pop,
                                                   user):
    from worker.jobs.fetch import run_batch

    dovecot.seed(pop_user[0], [make_message(n) for n in range(4)])
    account = make_pop(pop_user, batch_size=3)
    run_batch(account.id)

    result = runner.invoke(args=["pop", "status", "--user", user.email, "--json"])

    assert result.exit_code == 0, result.output
    [row] = json.loads(result.output)
    assert {k: row[k] for k in ("id", "email", "state", "auth_failures", "connection_failures",
                                "messages", "left", "last_error")} == {
        "id": account.id, "email": account.email, "state": "active", "auth_failures": 0,
        "connection_failures": 0, "messages": 3, "left": 1, "last_error": ""}
    text = runner.invoke(args=["pop", "status"])
    assert text.exit_code == 0 and account.email in text.output and "left 1" in text.output
