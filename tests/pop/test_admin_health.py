"""Admin » POP accounts: the organization's accounts, disabled first, re-enable with audit."""
from __future__ import annotations

from sqlalchemy import select

from tests.conftest import post_form
from tests.factories import make_org, make_user
from webapp.extensions import db
from webapp.models import AuditEvent, User
from webapp.models.pop import PopAccount
from webapp.queue import get_queue

LIST = "/admin/pop-accounts"


def test_the_list_shows_the_orgs_accounts_disabled_first(pop_app, client, login_as, admin_user,
                                                         user, make_pop, pop_user):
    healthy = make_pop(pop_user, email="healthy@pop.example")
    broken = make_pop(pop_user, email="broken@pop.example")
    row = db.session.get(PopAccount, broken.id)
    row.state, row.state_reason, row.auth_failures = "disabled", "auth_failures", 10
    row.last_error = "The server rejected the username or password."
    other_org = make_org()
    stranger = make_user(other_org)
    make_pop(pop_user, email="stranger@pop.example", owner=stranger)
    db.session.commit()
    login_as(admin_user)

    page = client.get(LIST).get_data(as_text=True)

    assert page.index("broken@pop.example") < page.index("healthy@pop.example")
    assert "disabled after 10 failed logins in a row" in page
    assert "rejected the username or password" in page and user.email in page
    assert "stranger@pop.example" not in page
    assert "POP accounts" in client.get("/admin/").get_data(as_text=True)
    assert healthy.id


def test_reenable_resets_audits_and_fetches(pop_app, client, login_as, admin_user, make_pop,
                                            pop_user):
    account = make_pop(pop_user)
    row = db.session.get(PopAccount, account.id)
    row.state, row.state_reason, row.connection_failures = "disabled", "connection_failures", 50
    db.session.commit()
    get_queue("fetch").empty()
    login_as(admin_user)

    post_form(client, f"/admin/pop-accounts/{account.id}/reenable", {}, page=LIST)

    db.session.expire_all()
    row = db.session.get(PopAccount, account.id)
    assert (row.state, row.connection_failures, row.state_reason) == ("active", 0, "")
    event = db.session.scalar(select(AuditEvent).where(AuditEvent.action == "pop.reenabled"))
    assert event.actor_id == admin_user.id and event.target == account.email
    assert [j.args for j in get_queue("fetch").jobs] == [(account.id,)]


def test_other_orgs_admin_and_ordinary_users_get_404(pop_app, client, login_as, user, make_pop,
                                                     pop_user):
    account = make_pop(pop_user)
    db.session.get(PopAccount, account.id).state = "disabled"
    db.session.commit()
    other_admin = db.session.scalar(select(User).where(User.org_id == make_org().id,
                                                       User.is_admin.is_(True)))
    login_as(other_admin)
    assert client.post(f"/admin/pop-accounts/{account.id}/reenable").status_code in (400, 404)
    token_page = client.get(LIST)
    assert account.email not in token_page.get_data(as_text=True)
    from tests.conftest import csrf_from
    response = client.post(f"/admin/pop-accounts/{account.id}/reenable",
                           data={"csrf_token": csrf_from(token_page)})
    assert response.status_code == 404
    login_as(user)
    assert client.get(LIST).status_code == 404
    db.session.expire_all()
    assert db.session.get(PopAccount, account.id).state == "disabled"
