"""POP account credentials: the saved password stays with its server; no line breaks in logins."""
from __future__ import annotations

import pytest
from sqlalchemy import func, select

from tests.conftest import post_form
from tests.fixtures.fakepop import FakePopScript
from tests.pop.test_settings_pages import NEW, _form
from webapp.extensions import db
from webapp.models.pop import PopAccount
from webapp.queue import get_queue
from webapp.services import pop_accounts as service

PASSWORD_AGAIN = "Enter the password again: the server or login changed."


def _saved(account_id: int) -> tuple:
    db.session.expire_all()
    account = db.session.get(PopAccount, account_id)
    return (account.host, account.port, account.security, account.username,
            account.password_encrypted, account.interval_seconds)


@pytest.fixture
def listening_pop(fakepop):
    """Someone else's POP server that accepts any login and records every line it receives.

    Scripted, not Dovecot: the point is to see which USER/PASS lines reached it, and a real
    server does not report the passwords it was sent.
    """
    return fakepop(FakePopScript())


@pytest.mark.parametrize("change", ["host", "port", "security", "username"])
def test_editing_the_server_or_login_needs_the_password_typed_again(
        pop_app, client, login_as, user, dovecot, pop_user, make_pop, listening_pop, change):
    """Defect: on edit a blank password kept the saved one even for a new host, port,
    security or username, and the connection test at once sent it to that server (a borrowed
    session could harvest the mailbox password). Now nothing is tested or saved until the
    password is typed again."""
    account = make_pop(pop_user, security="none", port=dovecot.pop3_port)
    before = _saved(account.id)
    new_value = {"host": "localhost", "port": str(listening_pop.port),
                 "security": "starttls", "username": "someone-else"}[change]
    login_as(user)
    get_queue("fetch").empty()
    url = f"/settings/accounts/{account.id}/edit"
    data = _form(dovecot, pop_user, port=str(dovecot.pop3_port), security="none", which=None,
                 email=None, interval_minutes="7", password="")
    data[change] = new_value

    refused = post_form(client, url, data)

    page = refused.get_data(as_text=True)
    assert refused.status_code == 200 and PASSWORD_AGAIN in page
    assert "The connection test failed." not in page and "Connected" not in page
    assert listening_pop.commands == []  # not even a connection reached the named server
    assert _saved(account.id) == before
    assert get_queue("fetch").jobs == []

    retyped = post_form(client, url, {**data, "password": pop_user[1]})
    assert PASSWORD_AGAIN not in retyped.get_data(as_text=True)


def test_saving_the_same_server_and_login_keeps_the_saved_password(
        pop_app, client, login_as, user, dovecot, pop_user, make_pop):
    """The blank password still means "keep it" when only other settings change (host case and
    surrounding spaces do not make another server)."""
    account = make_pop(pop_user)
    token = account.password_encrypted
    login_as(user)
    data = _form(dovecot, pop_user, host=f" {dovecot.host.upper()} ", which=None, email=None,
                 interval_minutes="9", password="")

    response = post_form(client, f"/settings/accounts/{account.id}/edit", data)

    assert response.status_code == 302
    assert _saved(account.id)[4:] == (token, 540)


@pytest.mark.parametrize("change", [{"host": "pop.elsewhere.example"}, {"port": 1995},
                                    {"security": "starttls"}, {"username": "someone-else"}])
def test_the_service_refuses_a_new_server_or_login_without_the_password(
        pop_app, dovecot, pop_user, make_pop, change):
    """Defect (every entry point): update_pop_account kept the saved password for a new server
    or login and enqueued a fetch that logged in there with it."""
    account = make_pop(pop_user)
    before = _saved(account.id)
    keys = pop_app.config["MAIL_SECRET_KEYS"]
    settings = {"host": account.host, "port": account.port, "security": account.security,
                "username": account.username, **change}
    get_queue("fetch").empty()

    with pytest.raises(service.PasswordNeededError, match=PASSWORD_AGAIN):
        service.password_for_login(account, **settings, password="", secret_keys=keys)
    with pytest.raises(service.PasswordNeededError, match=PASSWORD_AGAIN):
        service.update_pop_account(db.session, account, **settings, secret_keys=keys,
                                   password=None, interval_seconds=3600)
    db.session.rollback()

    assert _saved(account.id) == before
    assert get_queue("fetch").jobs == []
    assert service.password_for_login(account, **settings, password="typed",
                                      secret_keys=keys) == "typed"
    assert service.update_pop_account(db.session, account, **settings, secret_keys=keys,
                                      password="typed") is True


@pytest.mark.parametrize("field", ["username", "password"])
@pytest.mark.parametrize("bad", ["\r\nQUIT", "\nDELE 1", "\r", "\0"])
def test_line_breaks_in_the_login_are_refused_by_the_form(
        pop_app, client, login_as, user, dovecot, pop_user, listening_pop, field, bad):
    """Defect: CR/LF in the username or password reached the server as extra POP3 commands
    (poplib does not check). The form says so and contacts no server."""
    login_as(user)
    data = _form(dovecot, pop_user, host=listening_pop.host, port=str(listening_pop.port),
                 security="none")
    data[field] = f"{data[field]}{bad}"

    response = post_form(client, NEW, data)

    assert response.status_code == 200
    assert f"The {field} must not contain line breaks." in response.get_data(as_text=True)
    assert listening_pop.commands == []
    assert db.session.scalar(select(func.count()).select_from(PopAccount)) == 0


@pytest.mark.parametrize("bad", ["pw\r\nQUIT", "pw\nDELE 1", "pw\0"])
def test_line_breaks_in_the_password_are_refused_by_the_service(pop_app, dovecot, pop_user,
                                                                 make_pop, user, bad):
    """Defect: create/update accepted a password that POP3 would send as several commands."""
    keys = pop_app.config["MAIL_SECRET_KEYS"]
    with pytest.raises(service.PopAccountError, match="password must not contain line breaks"):
        service.create_pop_account(db.session, user, email="other@pop.example",
                                   host=dovecot.host, port=dovecot.pop3s_port, security="ssl",
                                   username="other", password=bad, secret_keys=keys)
    db.session.rollback()
    account = make_pop(pop_user)
    before = _saved(account.id)
    with pytest.raises(service.PopAccountError, match="password must not contain line breaks"):
        service.update_pop_account(db.session, account, host=account.host, port=account.port,
                                   security=account.security, username=account.username,
                                   password=bad, secret_keys=keys)
    db.session.rollback()
    assert _saved(account.id) == before
    with pytest.raises(service.PopAccountError, match="username must not contain line breaks"):
        service.validate_settings(host="pop.example", port=995, security="ssl",
                                  username="me\0", batch_size=200, interval_seconds=300)
