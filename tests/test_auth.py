"""Login, CSRF, throttling, session revocation and the forced password change."""
from __future__ import annotations

import time

import pytest

from tests.conftest import csrf_from, post_form
from tests.factories import PASSWORD
from webapp.auth.views import LOGIN_FAILED
from webapp.extensions import db


def login(client, email, password, ip="10.0.0.1", **kw):
    """Post the real login form from a given client address."""
    page = client.get("/login", environ_base={"REMOTE_ADDR": ip})
    return client.post("/login", data={"email": email, "password": password,
                                       "csrf_token": csrf_from(page)},
                       environ_base={"REMOTE_ADDR": ip}, **kw)


def test_login_through_the_real_form(client, user):
    response = login(client, user.email.upper(), PASSWORD)
    assert response.status_code == 302 and response.headers["Location"] == "/"
    assert client.get("/settings/").status_code == 200


def test_anonymous_is_sent_to_login(client):
    response = client.get("/settings/")
    assert response.status_code == 302 and response.headers["Location"].startswith("/login")


@pytest.mark.parametrize("email, password", [
    ("user-does-not-exist@acme.example", PASSWORD),
    (None, "wrong password here"),
])
def test_failures_say_the_same_thing(client, user, email, password):
    response = login(client, email or user.email, password)
    assert response.status_code == 200
    assert LOGIN_FAILED.encode() in response.data
    assert client.get("/settings/").status_code == 302


def test_disabled_user_cannot_log_in_and_gets_the_same_message(client, user):
    user.is_disabled = True
    db.session.commit()
    assert LOGIN_FAILED.encode() in login(client, user.email, PASSWORD).data


def test_post_without_csrf_token_is_rejected(client, user):
    response = client.post("/login", data={"email": user.email, "password": PASSWORD})
    assert response.status_code == 400
    assert b"security token" in response.data
    assert client.get("/settings/").status_code == 302


def test_next_only_follows_local_paths(client, user):
    page = client.get("/login")
    response = client.post("/login?next=//evil.example/x", data={
        "email": user.email, "password": PASSWORD, "csrf_token": csrf_from(page)})
    assert response.headers["Location"] == "/"


def test_cookie_flags(client, user):
    response = login(client, user.email, PASSWORD)
    cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie


def test_secure_cookie_in_production(app, user):
    app.config["SESSION_COOKIE_SECURE"] = True
    client = app.test_client()
    response = login(client, user.email, PASSWORD)
    assert "Secure" in response.headers["Set-Cookie"]


def test_throttling_blocks_one_place_but_not_the_owner_elsewhere(app, client, user):
    limit = app.config["LOGIN_THROTTLE_PER_ACCOUNT_IP"]
    for _ in range(limit):
        assert login(client, user.email, "wrong password!!", ip="203.0.113.9").status_code == 200
    blocked = login(client, user.email, PASSWORD, ip="203.0.113.9")
    assert blocked.status_code == 429 and b"Too many failed attempts" in blocked.data
    other = app.test_client()
    assert login(other, user.email, PASSWORD, ip="198.51.100.7").status_code == 302


def test_throttling_is_not_permanent(app, client, user):
    """A block ends with its window: shorten the live counters' TTLs as time passing would."""
    from webapp.queue import get_redis

    for _ in range(app.config["LOGIN_THROTTLE_PER_ACCOUNT_IP"]):
        login(client, user.email, "wrong password!!")
    assert login(client, user.email, PASSWORD).status_code == 429
    conn = get_redis()
    keys = conn.keys("skydesk:login:*")
    assert keys and all(0 < conn.ttl(k) <= app.config["LOGIN_THROTTLE_WINDOW"] for k in keys)
    for key in keys:
        conn.pexpire(key, 50)
    time.sleep(0.2)
    assert login(client, user.email, PASSWORD).status_code == 302


def test_throttling_per_ip_stops_password_spraying(app, client, org):
    from tests.factories import make_user

    app.config["LOGIN_THROTTLE_PER_IP"] = 3
    users = [make_user(org) for _ in range(4)]
    for victim in users[:3]:
        login(client, victim.email, "wrong password!!", ip="192.0.2.50")
    assert login(client, users[3].email, PASSWORD, ip="192.0.2.50").status_code == 429


def _second_session(app, user):
    other = app.test_client()
    assert login(other, user.email, PASSWORD, ip="10.9.9.9").status_code == 302
    assert other.get("/settings/").status_code == 200
    return other


def test_disabling_ends_sessions_at_once(app, client, user):
    other = _second_session(app, user)
    user.is_disabled = True
    db.session.commit()
    assert other.get("/settings/").status_code == 302


def test_deleting_ends_sessions_at_once(app, user):
    other = _second_session(app, user)
    db.session.delete(user)
    db.session.commit()
    assert other.get("/settings/").status_code == 302


def test_password_change_ends_other_sessions_and_keeps_this_one(app, client, user):
    other = _second_session(app, user)
    login(client, user.email, PASSWORD)
    response = post_form(client, "/settings/password", {
        "current_password": PASSWORD, "new_password": "a brand new passphrase",
        "confirm": "a brand new passphrase"})
    assert response.status_code == 302
    assert client.get("/settings/").status_code == 200
    assert other.get("/settings/").status_code == 302
    assert login(app.test_client(), user.email, "a brand new passphrase",
                 ip="10.1.1.1").status_code == 302


@pytest.mark.parametrize("current, new, confirm, message", [
    ("wrong current pw", "a brand new passphrase", "a brand new passphrase", b"not your current"),
    (PASSWORD, "short", "short", b"at least 10"),
    (PASSWORD, "a brand new passphrase", "something else entirely", b"differ"),
    (PASSWORD, PASSWORD, PASSWORD, b"different from the current"),
    (PASSWORD, "password123", "password123", b"too common"),
])
def test_password_change_refuses_bad_input(client, user, login_as, current, new, confirm, message):
    login_as(user)
    old_hash = user.password_hash
    response = post_form(client, "/settings/password", {
        "current_password": current, "new_password": new, "confirm": confirm})
    assert response.status_code == 200 and message in response.data
    db.session.refresh(user)
    assert user.password_hash == old_hash


def test_admin_set_password_forces_a_change(client, user):
    user.must_change_password = True
    db.session.commit()
    login(client, user.email, PASSWORD)
    response = client.get("/mail/")
    assert response.status_code == 302 and response.headers["Location"] == "/settings/password"
    post_form(client, "/settings/password", {
        "current_password": PASSWORD, "new_password": "my own passphrase 42",
        "confirm": "my own passphrase 42"})
    assert client.get("/mail/").status_code == 200


def test_logout_needs_post_with_token(client, user, login_as):
    login_as(user)
    assert client.get("/logout").status_code == 405
    client.post("/logout", data={})
    assert client.get("/settings/").status_code == 200
    post_form(client, "/logout", {}, page="/settings/")
    assert client.get("/settings/").status_code == 302


def test_password_change_closes_open_reset_links(client, user, login_as):
    """Review finding: a reset link handed out earlier still took over the account after the
    owner changed their password."""
    from webapp.services import accounts_admin

    raw = accounts_admin.issue_token(db.session, user, "reset")
    db.session.commit()
    assert accounts_admin.find_valid_token(db.session, raw) is not None
    login_as(user)
    post_form(client, "/settings/password", {
        "current_password": PASSWORD, "new_password": "a brand new passphrase",
        "confirm": "a brand new passphrase"})
    db.session.expire_all()
    assert accounts_admin.find_valid_token(db.session, raw) is None
