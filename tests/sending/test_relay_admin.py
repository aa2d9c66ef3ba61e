"""Admin » Relay & limits: edit, audit, test, and scoping to the admin's organization."""
from __future__ import annotations

import json

from sqlalchemy import select

from tests.conftest import post_form
from tests.factories import make_org
from webapp.extensions import db
from webapp.models import AuditEvent, User
from webapp.models.sending import OrgRelay

URL = "/admin/relay"


def _fields(server=None, **overrides):
    data = {"host": server.host if server else "smtp.relay.example",
            "port": str(server.port) if server else "587", "security": "none",
            "username": "", "password": "", "envelope_policy": "hosted", "envelope_sender": "",
            "daily_limit_user": "100", "daily_limit_org": "1000"}
    data.update(overrides)
    return data


def test_admin_edits_the_relay_and_each_change_is_audited(app, client, org, admin_user,
                                                           login_as):
    login_as(admin_user)
    assert client.get(URL).status_code == 200
    response = post_form(client, URL, _fields(password="relay-secret"))
    assert response.status_code == 302
    relay = db.session.scalar(select(OrgRelay).where(OrgRelay.org_id == org.id))
    assert relay.host == "smtp.relay.example" and relay.daily_limit_user == 100
    assert "relay-secret" not in relay.password_encrypted
    assert "relay-secret" not in client.get(URL).get_data(as_text=True)
    (event,) = db.session.scalars(select(AuditEvent).where(AuditEvent.action == "relay.changed"))
    detail = json.loads(event.detail)
    assert detail["daily_limit_user"] == {"from": 500, "to": 100}
    assert detail["password"] == "changed" and "relay-secret" not in event.detail
    assert event.actor_id == admin_user.id and event.org_id == org.id


def test_bad_values_are_refused_with_nothing_saved(app, client, org, admin_user, login_as):
    login_as(admin_user)
    response = post_form(client, URL, _fields(envelope_policy="fixed",
                                               envelope_sender="bounces@x\r\nBcc: y@z.example"))
    assert response.status_code == 400
    assert db.session.scalar(select(OrgRelay)) is None
    assert post_form(client, URL, _fields(port="70000")).status_code == 400


def test_stored_password_never_follows_the_relay_to_another_server(app, client, org,
                                                                   admin_user, login_as):
    """Review finding: a blank password kept the stored one even when the host changed, so
    "Test" would log in to whatever server the form named with the organization's secret."""
    login_as(admin_user)
    assert post_form(client, URL, _fields(username="relay-user",
                                          password="relay-secret")).status_code == 302
    stored = db.session.scalar(select(OrgRelay)).password_encrypted
    for change in ({"host": "attacker.example"}, {"port": "2525"}, {"security": "ssl"},
                   {"username": "someone-else"}):
        response = post_form(client, URL, _fields(**{"username": "relay-user", **change}))
        assert response.status_code == 400, change
        assert b"Enter the password again" in response.data
        db.session.expire_all()
        relay = db.session.scalar(select(OrgRelay))
        assert relay.host == "smtp.relay.example" and relay.password_encrypted == stored
    assert post_form(client, URL, _fields(username="relay-user", daily_limit_user="7")
                     ).status_code == 302  # same server and login: blank keeps the password
    db.session.expire_all()
    assert db.session.scalar(select(OrgRelay)).password_encrypted == stored
    assert post_form(client, URL, _fields(host="new.relay.example", username="")
                     ).status_code == 302  # no login any more: the password is forgotten
    db.session.expire_all()
    assert db.session.scalar(select(OrgRelay)).password_encrypted == ""


def test_test_button_reports_in_words(app, client, org, admin_user, login_as, smtp_server):
    server = smtp_server(auth=("relay", "right"))
    login_as(admin_user)
    post_form(client, URL, _fields(server, username="relay", password="wrong"))
    page = post_form(client, f"{URL}/test", {}, page=URL, follow_redirects=True)
    assert "rejected the username or password" in page.get_data(as_text=True)
    post_form(client, URL, _fields(server, username="relay", password="right"))
    page = post_form(client, f"{URL}/test", {}, page=URL, follow_redirects=True)
    assert "It works." in page.get_data(as_text=True)


def test_each_admin_sees_only_their_own_organizations_relay(app, client, org, admin_user,
                                                            login_as):
    login_as(admin_user)
    post_form(client, URL, _fields(host="mine.relay.example"))
    other_org = make_org()
    other_admin = db.session.scalar(select(User).where(User.org_id == other_org.id))
    login_as(other_admin)
    page = client.get(URL).get_data(as_text=True)
    assert "mine.relay.example" not in page


def test_non_admins_get_404(app, client, user, login_as):
    login_as(user)
    assert client.get(URL).status_code == 404
