"""Settings » Mail Accounts: list, add (with a real connection test), edit, delete, fetch now."""
from __future__ import annotations

from sqlalchemy import func, select

from tests.conftest import post_form
from tests.factories import make_user
from tests.pop.conftest import make_message
from webapp.extensions import db
from webapp.models import MailAccount
from webapp.models.pop import PopAccount, PopUidl
from webapp.queue import get_queue
from worker.jobs.fetch import run_batch

NEW = "/settings/accounts/new"


def _form(dovecot, pop_user, **overrides):
    name, password = pop_user
    data = {"email": f"{name}@pop.example", "display_name": "Elsewhere", "host": dovecot.host,
            "port": str(dovecot.pop3s_port), "security": "ssl", "username": name,
            "password": password, "delete_from_server": "keep", "which": "all",
            "batch_size": "200", "interval_minutes": "5", "file_sent": "y"}
    data.update(overrides)
    return {k: v for k, v in data.items() if v is not None}


def _pop_count() -> int:
    return db.session.scalar(select(func.count()).select_from(PopAccount))


def test_the_list_shows_the_hosted_account_and_pop_accounts(pop_app, client, login_as, user,
                                                            dovecot, pop_user, make_pop):
    dovecot.seed(pop_user[0], [make_message(n) for n in range(3)])
    account = make_pop(pop_user, batch_size=2, security="none", port=dovecot.pop3_port)
    run_batch(account.id)
    login_as(user)

    page = client.get("/settings/accounts").get_data(as_text=True)

    assert user.email in page and "cannot be deleted" in page
    assert account.email in page and "Unencrypted" in page
    assert '<progress max="3" value="2">' in page and "Fetch now" in page
    assert "Failed logins in a row: 0 of 10" in page
    assert "/static/pop.js" in page
    assert "Mail Accounts" in client.get("/settings/").get_data(as_text=True)


def test_the_list_needs_a_login(client):
    assert client.get("/settings/accounts").status_code in (302, 401)


def test_adding_tests_the_connection_and_starts_fetching(pop_app, client, login_as, user, dovecot,
                                                         pop_user):
    login_as(user)
    get_queue("fetch").empty()

    response = post_form(client, NEW, _form(dovecot, pop_user), follow_redirects=True)

    page = response.get_data(as_text=True)
    assert "Connected and logged in: 0 messages on the server" in page
    account = db.session.scalar(select(PopAccount))
    assert account.user_id == user.id and account.mail_account.display_name == "Elsewhere"
    assert pop_user[1] not in account.password_encrypted
    assert [j.args for j in get_queue("fetch").jobs] == [(account.id,)]
    from webapp.models.filters import Filter
    assert db.session.scalar(select(func.count()).select_from(Filter).where(
        Filter.user_id == user.id)) == 1


def test_a_failed_test_refuses_until_the_user_saves_anyway(pop_app, client, login_as, user,
                                                           dovecot, pop_user):
    login_as(user)
    data = _form(dovecot, pop_user, password="wrong-password")

    refused = post_form(client, NEW, data)
    page = refused.get_data(as_text=True)
    assert refused.status_code == 200 and "The connection test failed." in page
    assert "rejected the username or password" in page and "Save anyway" in page
    assert _pop_count() == 0 and 'value="wrong-password"' not in page

    saved = post_form(client, NEW, {**data, "save_anyway": "y"}, follow_redirects=True)
    assert "Saved, but the connection test failed" in saved.get_data(as_text=True)
    account = db.session.scalar(select(PopAccount))
    assert account.last_error_kind == "auth"


def test_new_only_from_the_page_records_the_baseline(pop_app, client, login_as, user, dovecot,
                                                     pop_user):
    dovecot.seed(pop_user[0], [make_message(n) for n in range(2)])
    login_as(user)
    post_form(client, NEW, _form(dovecot, pop_user, which="new"))
    account = db.session.scalar(select(PopAccount))
    assert account.new_only and not account.baseline_pending
    assert db.session.scalar(select(func.count()).select_from(PopUidl)) == 2


def test_bad_form_input_saves_nothing(pop_app, client, login_as, user, dovecot, pop_user):
    login_as(user)
    for change in ({"port": "0"}, {"email": "not an address"}, {"host": ""},
                   {"batch_size": "0"}, {"password": ""}):
        response = post_form(client, NEW, _form(dovecot, pop_user, **change))
        assert response.status_code == 200 and 'class="error"' in response.get_data(as_text=True)
    assert _pop_count() == 0
    assert db.session.scalar(select(func.count()).select_from(MailAccount).where(
        MailAccount.kind == "pop")) == 0


def test_choosing_no_security_warns(pop_app, client, login_as, user, dovecot, pop_user):
    login_as(user)
    page = client.get(NEW).get_data(as_text=True)
    assert 'id="security-none-warning"' in page and "hidden" in page
    response = post_form(client, NEW, _form(dovecot, pop_user, security="none",
                                            port=str(dovecot.pop3_port)), follow_redirects=True)
    assert "connects without encryption" in response.get_data(as_text=True)


def test_editing_keeps_a_blank_password_and_a_new_one_reenables(pop_app, client, login_as, user,
                                                                dovecot, pop_user, make_pop):
    account = make_pop(pop_user, password="old-wrong")
    stored_token = account.password_encrypted
    db.session.get(PopAccount, account.id).state = "disabled"
    db.session.get(PopAccount, account.id).state_reason = "auth_failures"
    db.session.get(PopAccount, account.id).auth_failures = 10
    db.session.commit()
    login_as(user)
    url = f"/settings/accounts/{account.id}/edit"
    page = client.get(url).get_data(as_text=True)
    assert "old-wrong" not in page and stored_token not in page

    blank = _form(dovecot, pop_user, password="", which=None, email=None, interval_minutes="7")
    refused = post_form(client, url, blank)
    assert "The connection test failed." in refused.get_data(as_text=True)

    get_queue("fetch").empty()
    post_form(client, url, {**blank, "password": pop_user[1]}, follow_redirects=True)
    db.session.expire_all()
    account = db.session.get(PopAccount, account.id)
    assert (account.state, account.auth_failures, account.interval_seconds) == ("active", 0, 420)
    assert account.password_encrypted != stored_token
    assert [j.args for j in get_queue("fetch").jobs] == [(account.id,)]


def test_another_users_account_is_404_everywhere(pop_app, client, login_as, org, dovecot,
                                                 pop_user, make_pop):
    account = make_pop(pop_user)
    login_as(make_user(org))
    for method, path in (("get", "edit"), ("get", "delete"), ("get", "progress"),
                         ("post", "fetch"), ("post", "delete")):
        response = getattr(client, method)(f"/settings/accounts/{account.id}/{path}")
        assert response.status_code in (404, 400), (method, path)
    assert _pop_count() == 1


def test_fetch_now_enqueues_and_progress_is_json(pop_app, client, login_as, user, dovecot,
                                                 pop_user, make_pop):
    dovecot.seed(pop_user[0], [make_message(n) for n in range(3)])
    account = make_pop(pop_user, batch_size=2)
    run_batch(account.id)
    login_as(user)
    get_queue("fetch").empty()

    post_form(client, f"/settings/accounts/{account.id}/fetch", {}, page="/settings/accounts")

    assert [j.args for j in get_queue("fetch").jobs] == [(account.id,)]
    data = client.get(f"/settings/accounts/{account.id}/progress").get_json()
    assert (data["messages"], data["left"], data["on_server"], data["state"]) == (2, 1, 3, "active")
    assert data["eta"]


def test_deleting_asks_first_and_keeps_the_mail(pop_app, client, login_as, user, dovecot,
                                               pop_user, make_pop):
    dovecot.seed(pop_user[0], [make_message(1)])
    account = make_pop(pop_user)
    run_batch(account.id)
    login_as(user)
    url = f"/settings/accounts/{account.id}/delete"
    assert "Stop fetching" in client.get(url).get_data(as_text=True)

    post_form(client, url, {})

    assert _pop_count() == 0
    from webapp.models import Message
    assert db.session.scalar(select(func.count()).select_from(Message)) == 1
