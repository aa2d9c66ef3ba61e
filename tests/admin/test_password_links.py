"""Reset links and invitations: hashed, single use, expiring; forgot-password reveals nothing (issue 8)."""
from __future__ import annotations

import re
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from tests.admin.helpers import login
from tests.conftest import post_form
from tests.factories import PASSWORD, make_user
from webapp.extensions import db
from webapp.models import AuditEvent
from webapp.models._types import utcnow
from webapp.models.security import CredentialToken
from webapp.services import accounts_admin

NEW = "a fresh passphrase 77"


def _redeem(client, token, password=NEW):
    # The token comes from /forgot: a spent link shows no form, yet a replayed POST must fail.
    return post_form(client, f"/reset/{token}", {"new_password": password, "confirm": password},
                     page="/forgot")


def test_token_is_stored_only_as_its_sha256(app, user):
    raw = accounts_admin.issue_token(db.session, user, "reset")
    db.session.commit()
    stored = db.session.scalar(select(CredentialToken.token_hash))
    assert stored == accounts_admin.hash_token(raw) and raw not in stored and len(stored) == 64


def test_link_works_once_and_bumps_the_session_version(app, client, user):
    raw = accounts_admin.issue_token(db.session, user, "reset")
    db.session.commit()
    version = user.session_version
    assert _redeem(client, raw).status_code == 302
    db.session.refresh(user)
    assert user.session_version == version + 1
    assert login(app.test_client(), user.email, NEW).status_code == 302
    again = client.get(f"/reset/{raw}")
    assert again.status_code == 404 and b"not valid any more" in again.data
    assert _redeem(app.test_client(), raw, "yet another phrase 88").status_code == 404
    assert login(app.test_client(), user.email, "yet another phrase 88").status_code == 200


def test_expired_link_is_refused(client, user):
    raw = accounts_admin.issue_token(db.session, user, "reset")
    db.session.commit()
    token = db.session.scalar(select(CredentialToken))
    token.expires_at = utcnow() - timedelta(seconds=1)
    db.session.commit()
    assert client.get(f"/reset/{raw}").status_code == 404
    assert login(client, user.email, PASSWORD).status_code == 302


def test_reset_link_lasts_one_hour_and_invitation_seven_days(user):
    now = utcnow()
    accounts_admin.issue_token(db.session, user, "reset")
    reset = db.session.scalar(select(CredentialToken))
    assert timedelta(minutes=59) < reset.expires_at - now <= timedelta(hours=1, seconds=5)
    accounts_admin.issue_token(db.session, user, "invite")
    invite = db.session.scalar(select(CredentialToken).where(CredentialToken.purpose == "invite"))
    assert timedelta(days=6, hours=23) < invite.expires_at - now <= timedelta(days=7, seconds=5)


def test_a_newer_link_replaces_the_older(client, user):
    first = accounts_admin.issue_token(db.session, user, "reset")
    second = accounts_admin.issue_token(db.session, user, "reset")
    db.session.commit()
    assert client.get(f"/reset/{first}").status_code == 404
    assert client.get(f"/reset/{second}").status_code == 200


def test_a_weak_password_does_not_spend_the_link(client, user):
    raw = accounts_admin.issue_token(db.session, user, "reset")
    db.session.commit()
    response = _redeem(client, raw, "short")
    assert response.status_code == 200 and b"at least 10" in response.data
    assert _redeem(client, raw).status_code == 302


def test_disabled_user_cannot_use_a_link(client, user):
    raw = accounts_admin.issue_token(db.session, user, "reset")
    user.is_disabled = True
    db.session.commit()
    assert client.get(f"/reset/{raw}").status_code == 404


@pytest.mark.parametrize("token", ["nonsense", "x" * 300, "%00"])
def test_unknown_links_look_the_same(client, token):
    response = client.get(f"/reset/{token}")
    assert response.status_code == 404 and b"not valid any more" in response.data


def _forgot(client, email):
    return post_form(client, "/forgot", {"email": email})


def test_forgot_password_answers_the_same_for_every_address(app, client, org, user):
    with_recovery = make_user(org)
    accounts_admin.set_recovery_address(db.session, with_recovery, "me@home.example")
    disabled = make_user(org)
    accounts_admin.set_recovery_address(db.session, disabled, "d@home.example")
    disabled.is_disabled = True
    db.session.commit()
    bodies = set()
    for email in (with_recovery.email, user.email, disabled.email, "nobody@acme.example",
                  "NoBody@Elsewhere.example"):
        response = _forgot(app.test_client(), email)
        assert response.status_code == 200
        bodies.add(response.data.replace(email.strip().lower().encode(), b"ADDRESS"))
    assert len(bodies) == 1, "the answer must not depend on whether the account exists"


@pytest.fixture
def relay_host(app):
    """A relay host in the configuration, so the outbox accepts mail (no worker sends it here)."""
    app.config["MAIL_RELAY_HOST"] = "relay.invalid"
    return "relay.invalid"


def test_forgot_password_mails_a_working_link_to_the_recovery_address(app, org, user,
                                                                     relay_host):
    """Only an enabled account with a recovery address gets a link; it arrives and works."""
    with_recovery = make_user(org)
    accounts_admin.set_recovery_address(db.session, with_recovery, "me@home.example")
    db.session.commit()
    for email in (with_recovery.email, user.email, "nobody@acme.example"):
        _forgot(app.test_client(), email)
    tokens = db.session.scalars(select(CredentialToken)).all()
    from webapp.models.sending import OutgoingMessage
    from webapp.services.blobs import get_store

    assert [t.user_id for t in tokens] == [with_recovery.id]
    mail = db.session.scalar(select(OutgoingMessage).where(OutgoingMessage.kind == "system"))
    raw = get_store(app.config["BLOB_DIR"]).get(mail.blob_sha256)
    assert b"To: me@home.example" in raw
    link = re.search(rb"http://localhost/reset/([A-Za-z0-9_-]+)", raw)
    assert link, raw.decode(errors="replace")
    guest = app.test_client()
    assert _redeem(guest, link.group(1).decode()).status_code == 302
    assert login(guest, with_recovery.email, NEW).status_code == 302
    assert db.session.scalar(select(func.count()).select_from(AuditEvent).where(
        AuditEvent.action == "password.reset_requested")) == 1


def test_without_a_relay_no_link_is_issued_and_the_answer_is_the_same(app, org):
    with_recovery = make_user(org)
    accounts_admin.set_recovery_address(db.session, with_recovery, "me@home.example")
    db.session.commit()
    response = _forgot(app.test_client(), with_recovery.email)
    assert response.status_code == 200 and b"Check your recovery mailbox" in response.data
    assert db.session.scalars(select(CredentialToken)).all() == []


def test_forgot_password_mails_one_link_per_interval(app, org, relay_host):
    with_recovery = make_user(org)
    accounts_admin.set_recovery_address(db.session, with_recovery, "me@home.example")
    db.session.commit()
    for _ in range(3):
        _forgot(app.test_client(), with_recovery.email)
    assert db.session.scalar(select(func.count()).select_from(CredentialToken)) <= 1


def test_forgot_password_link_is_on_the_login_page_path(client):
    page = client.get("/forgot")
    assert page.status_code == 200 and b'name="csrf_token"' in page.data
    assert b'href="/forgot"' in client.get("/login").data


def test_admin_reset_link_can_be_mailed_to_the_recovery_address(app, client, org, admin_user,
                                                                 user, login_as, relay_host):
    from webapp.models.sending import OutgoingMessage

    accounts_admin.set_recovery_address(db.session, user, "me@home.example")
    db.session.commit()
    login_as(admin_user)
    response = post_form(client, f"/admin/users/{user.id}/reset",
                         {"method": "link", "mail_link": "y"})
    assert b"also mailed to the user's recovery address" in response.data
    mail = db.session.scalar(select(OutgoingMessage).where(OutgoingMessage.kind == "system"))
    assert mail is not None and mail.subject == "Reset your SkyDesk Mail password"


def test_a_link_cannot_be_used_from_outside_the_allowed_networks(app, org, user):
    from webapp.models import IpRule

    db.session.add(IpRule(org_id=org.id, network="203.0.113.0/24"))
    raw = accounts_admin.issue_token(db.session, user, "reset")
    db.session.commit()
    outside = app.test_client()
    outside.environ_base["REMOTE_ADDR"] = "198.51.100.1"
    response = _redeem(outside, raw)
    assert response.status_code == 403
    inside = app.test_client()
    inside.environ_base["REMOTE_ADDR"] = "203.0.113.8"
    assert _redeem(inside, raw).status_code == 302
