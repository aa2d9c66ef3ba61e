"""Admin » Users: add (invitation or one-time password), edit, disable, delete, resets (issue 8)."""
from __future__ import annotations

import pytest
from sqlalchemy import func, select

from tests.admin.helpers import audit_actions, link_token, login, one_time_password
from tests.conftest import post_form
from tests.factories import PASSWORD, make_org, make_user
from webapp.extensions import db
from webapp.models import Folder, MailAccount, User
from webapp.models.security import CredentialToken, RecoveryAddress


def _session_of(app, user, password=PASSWORD, ip="10.9.9.9"):
    """A second client logged in through the real form."""
    other = app.test_client()
    assert login(other, user.email, password, ip=ip).status_code == 302
    assert other.get("/settings/").status_code == 200
    return other


def test_list_search_and_paging(client, org, admin_user, login_as):
    # Rows straight in, sharing one hash: the list needs no mailboxes, and argon2 is slow.
    db.session.add_all([User(org_id=org.id, email=f"person{n:02d}@acme.example",
                             display_name=f"Person {n}", password_hash=admin_user.password_hash)
                        for n in range(55)])
    db.session.add(User(org_id=org.id, email="zed@acme.example", display_name="Zed Quux",
                        password_hash=admin_user.password_hash))
    db.session.commit()
    login_as(admin_user)
    first = client.get("/admin/users")
    assert first.status_code == 200 and b"Page 1 of 2" in first.data
    assert b"admin@acme.example" in first.data and b"zed@acme.example" not in first.data
    assert b"zed@acme.example" in client.get("/admin/users?page=2").data
    found = client.get("/admin/users?q=quux")
    assert b"zed@acme.example" in found.data and b"person01@" not in found.data
    assert b"No user matches" in client.get("/admin/users?q=%25").data


def test_add_with_one_time_password_forces_a_change(app, client, org, admin_user, login_as):
    login_as(admin_user)
    response = post_form(client, "/admin/users/new", {
        "email": "New.Person@acme.example", "display_name": "New Person",
        "credential": "password", "quota_gb": "2"})
    assert response.status_code == 200 and response.headers["Cache-Control"] == "no-store"
    password = one_time_password(response)
    user = db.session.scalar(select(User).where(User.email == "new.person@acme.example"))
    assert user.must_change_password and user.quota_bytes == 2 * 1024**3
    assert db.session.scalar(select(MailAccount).where(MailAccount.user_id == user.id)).kind \
        == "hosted"
    assert db.session.scalar(select(func.count()).select_from(Folder)
                             .where(Folder.user_id == user.id)) == 5
    newcomer = app.test_client()
    assert login(newcomer, user.email, password).status_code == 302
    forced = newcomer.get("/mail/")
    assert forced.status_code == 302 and forced.headers["Location"] == "/settings/password"
    post_form(newcomer, "/settings/password", {"current_password": password,
                                               "new_password": "my very own phrase 7",
                                               "confirm": "my very own phrase 7"})
    assert newcomer.get("/mail/").status_code == 200
    assert "user.created" in audit_actions(org.id)


def test_add_with_invitation_link(app, client, org, admin_user, login_as):
    login_as(admin_user)
    response = post_form(client, "/admin/users/new", {
        "email": "invited@acme.example", "credential": "invite",
        "recovery_email": "invited.home@example.net"})
    token = link_token(response)
    user = db.session.scalar(select(User).where(User.email == "invited@acme.example"))
    assert not user.must_change_password
    assert db.session.get(RecoveryAddress, user.id).email == "invited.home@example.net"
    stored = db.session.scalar(select(CredentialToken).where(CredentialToken.user_id == user.id))
    assert stored.purpose == "invite" and token not in stored.token_hash
    guest = app.test_client()
    page = guest.get(f"/reset/{token}")
    assert page.status_code == 200 and b"Welcome" in page.data
    done = post_form(guest, f"/reset/{token}", {"new_password": "glad to be aboard 9",
                                                "confirm": "glad to be aboard 9"})
    assert done.status_code == 302 and done.headers["Location"] == "/login"
    assert login(guest, user.email, "glad to be aboard 9").status_code == 302
    assert guest.get(f"/reset/{token}").status_code == 404
    assert audit_actions(org.id)[-2:] == ["invite.accepted", "login"]


@pytest.mark.parametrize("data, message", [
    ({"email": "someone@elsewhere.example"}, b"is not on a domain of"),
    ({"email": "admin@acme.example"}, b"already exists"),
    ({"email": "not an address"}, b"not a valid email address"),
    ({"email": "ok@acme.example", "recovery_email": "ok@acme.example"}, b"outside the hosted"),
    ({"email": "ok@acme.example", "quota_gb": "-1"}, b"Number must be at least"),
])
def test_add_refuses_bad_input_and_writes_nothing(client, org, admin_user, login_as, data,
                                                   message):
    login_as(admin_user)
    before = db.session.scalar(select(func.count()).select_from(User))
    response = post_form(client, "/admin/users/new", {"credential": "invite", **data})
    assert response.status_code == 200 and message in response.data
    assert db.session.scalar(select(func.count()).select_from(User)) == before


def test_edit_name_role_and_quota(client, org, admin_user, user, login_as):
    login_as(admin_user)
    response = post_form(client, f"/admin/users/{user.id}", {
        "display_name": "Renamed", "quota_gb": "1.5", "is_admin": "y", "recovery_email": ""})
    assert response.status_code == 302
    db.session.refresh(user)
    assert (user.display_name, user.is_admin, user.quota_bytes) == ("Renamed", True,
                                                                    int(1.5 * 1024**3))
    assert audit_actions(org.id)[-1] == "user.updated"


def test_admin_cannot_demote_the_last_admin(client, org, admin_user, login_as):
    login_as(admin_user)
    response = post_form(client, f"/admin/users/{admin_user.id}", {"display_name": "Me",
                                                                    "quota_gb": "5"})
    assert response.status_code == 200 and b"last admin" in response.data
    db.session.refresh(admin_user)
    assert admin_user.is_admin and admin_user.display_name == ""


def test_disable_ends_sessions_and_enable_restores_login(app, client, org, admin_user, user,
                                                        login_as):
    victim_session = _session_of(app, user)
    login_as(admin_user)
    post_form(client, f"/admin/users/{user.id}/disable", {}, page=f"/admin/users/{user.id}")
    assert victim_session.get("/settings/").status_code == 302
    assert login(app.test_client(), user.email, PASSWORD).status_code == 200
    post_form(client, f"/admin/users/{user.id}/enable", {}, page=f"/admin/users/{user.id}")
    assert login(app.test_client(), user.email, PASSWORD).status_code == 302
    assert [a for a in audit_actions(org.id) if a.startswith("user.")][-2:] == [
        "user.disabled", "user.enabled"]


def test_admin_cannot_disable_or_delete_themselves(client, org, admin_user, login_as):
    make_user(org, is_admin=True)
    login_as(admin_user)
    page = f"/admin/users/{admin_user.id}/delete"
    response = post_form(client, f"/admin/users/{admin_user.id}/disable", {},
                         page="/admin/users", follow_redirects=True)
    assert b"cannot disable your own" in response.data
    response = post_form(client, page, {"crm_records": "delete",
                                        "confirm_email": admin_user.email},
                         follow_redirects=True)
    assert b"cannot delete your own" in response.data
    db.session.refresh(admin_user)
    assert not admin_user.is_disabled


def test_delete_needs_confirmation_then_ends_sessions(app, client, org, admin_user, user,
                                                     login_as):
    victim_session = _session_of(app, user)
    user_id, email = user.id, user.email
    login_as(admin_user)
    page = client.get(f"/admin/users/{user_id}/delete")
    assert page.status_code == 200 and b"Type the user" in page.data
    wrong = post_form(client, f"/admin/users/{user_id}/delete",
                      {"crm_records": "delete", "confirm_email": "someone@else"})
    assert wrong.status_code == 200 and b"exactly to confirm" in wrong.data
    assert db.session.get(User, user_id) is not None
    done = post_form(client, f"/admin/users/{user_id}/delete",
                     {"crm_records": "reassign", "reassign_to": str(admin_user.id),
                      "confirm_email": email.upper()})
    assert done.status_code == 302
    db.session.expire_all()
    assert db.session.get(User, user_id) is None
    assert db.session.scalar(select(func.count()).select_from(Folder)
                             .where(Folder.user_id == user_id)) == 0
    assert victim_session.get("/settings/").status_code == 302
    assert audit_actions(org.id)[-1] == "user.deleted"


def test_reset_by_link_ends_sessions_and_admin_never_sees_the_password(app, client, org,
                                                                      admin_user, user,
                                                                      login_as):
    victim_session = _session_of(app, user)
    login_as(admin_user)
    response = post_form(client, f"/admin/users/{user.id}/reset", {"method": "link"})
    token = link_token(response)
    assert victim_session.get("/settings/").status_code == 200  # nothing changed yet
    post_form(app.test_client(), f"/reset/{token}", {"new_password": "chosen by the user 1",
                                                     "confirm": "chosen by the user 1"})
    assert victim_session.get("/settings/").status_code == 302
    assert b"chosen by the user" not in client.get(f"/admin/users/{user.id}").data
    assert audit_actions(org.id)[-2:] == ["user.password_reset", "password.reset_used"]


def test_reset_by_one_time_password(app, client, org, admin_user, user, login_as):
    victim_session = _session_of(app, user)
    login_as(admin_user)
    password = one_time_password(post_form(client, f"/admin/users/{user.id}/reset",
                                           {"method": "password"}))
    assert victim_session.get("/settings/").status_code == 302
    assert login(app.test_client(), user.email, PASSWORD).status_code == 200
    fresh = app.test_client()
    assert login(fresh, user.email, password).status_code == 302
    assert fresh.get("/mail/").headers["Location"] == "/settings/password"


def test_another_orgs_user_is_not_found(client, org, admin_user, login_as):
    other = make_org()
    stranger = make_user(other)
    login_as(admin_user)
    assert client.get(f"/admin/users/{stranger.id}").status_code == 404
    assert stranger.email.encode() not in client.get("/admin/users").data


def _deliver_one(user):
    from webapp.services.delivery import deliver

    account = db.session.scalar(select(MailAccount).where(MailAccount.user_id == user.id))
    raw = b"From: a@example.org\r\nTo: " + user.email.encode() + \
        b"\r\nSubject: hello\r\nMessage-ID: <m1@example.org>\r\n\r\nbody\r\n"
    deliver(db.session, account, raw, "test-1")
    db.session.commit()


def _delete_and_count_blob_references(client, admin_user, user, login_as) -> None:
    """Delete the user through the admin page; no blob reference may be left."""
    from webapp.models import Blob

    login_as(admin_user)
    post_form(client, f"/admin/users/{user.id}/delete", {"crm_records": "delete",
                                                         "confirm_email": user.email})
    db.session.expire_all()
    assert db.session.scalar(select(Blob.refcount)) == 0


def test_delete_gives_back_blob_references(client, org, admin_user, user, login_as):
    from webapp.models import Blob

    _deliver_one(user)
    assert db.session.scalar(select(Blob.refcount)) == 1
    _delete_and_count_blob_references(client, admin_user, user, login_as)


def test_delete_gives_back_the_outbox_references_too(client, org, admin_user, user, login_as,
                                                    monkeypatch):
    """Review finding: queued outgoing bytes kept their blob reference after the user went."""
    from webapp.models import Blob
    from webapp.services import outbox

    monkeypatch.setitem(client.application.config, "MAIL_RELAY_HOST", "relay.example")
    outbox.queue_message(db.session, user, None, "bob@remote.example", "", "", "queued",
                         "text", None, [], None, [])
    db.session.commit()
    assert db.session.scalar(select(Blob.refcount)) == 1
    _delete_and_count_blob_references(client, admin_user, user, login_as)


@pytest.mark.parametrize("choice", ["reassign", "delete"])
def test_delete_reassigns_or_deletes_crm_records(client, org, admin_user, user, login_as,
                                                 choice):
    from webapp.models.crm import Contact

    db.session.add(Contact(org_id=org.id, owner_id=user.id, name="Customer"))
    db.session.commit()
    login_as(admin_user)
    response = post_form(client, f"/admin/users/{user.id}/delete", {
        "crm_records": choice, "reassign_to": str(admin_user.id), "confirm_email": user.email})
    assert response.status_code == 302
    db.session.expire_all()
    owners = db.session.scalars(select(Contact.owner_id)).all()
    assert owners == ([admin_user.id] if choice == "reassign" else [])


def test_records_cannot_go_to_another_organizations_user(client, org, admin_user, user,
                                                         login_as):
    stranger = make_user(make_org())
    login_as(admin_user)
    response = post_form(client, f"/admin/users/{user.id}/delete", {
        "crm_records": "reassign", "reassign_to": str(stranger.id), "confirm_email": user.email})
    assert response.status_code == 200 and b"Choose who takes the records" in response.data
    assert db.session.get(User, user.id) is not None
