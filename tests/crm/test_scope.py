"""Owners see their records, organization admins see all, other organizations see nothing:
a walk over every crm.* endpoint with another organization's ids answers 404 (issue 7)."""
from __future__ import annotations

import re

import pytest
from sqlalchemy import func, select

from tests import factories
from tests.conftest import csrf_from, post_form
from tests.crm.helpers import deliver_raw, hosted, make_raw
from webapp.extensions import db
from webapp.models import User
from webapp.models.crm import Activity, Contact, Lead, Potential
from webapp.services import crm

KIND_OF_PATH = {"contacts": "contact", "leads": "lead", "potentials": "potential",
                "contact": "contact", "lead": "lead", "potential": "potential"}


def _records(owner):
    """One of each record (with an activity each) owned by `owner`."""
    viewer = crm.Viewer.of(owner)
    contact = crm.create_contact(db.session, owner.org_id, owner.id, name="Secret contact",
                                 emails=["secret@x.example"])
    lead = crm.create_lead(db.session, owner.org_id, owner.id, name="Secret lead",
                           email="secret-lead@x.example")
    potential = crm.create_potential(db.session, viewer, owner.id, name="Secret deal",
                                     contact_id=contact.id)
    activity = crm.add_activity(db.session, contact, owner.id, kind="event", title="Secret meeting",
                                starts_at=contact.created_at)
    for record in (lead, potential):
        crm.add_activity(db.session, record, owner.id, kind="note", title="Secret note")
    db.session.commit()
    return {"contact": contact.id, "lead": lead.id, "potential": potential.id,
            "activity": activity.id}


def _crm_urls_with_ids(app, ids):
    """Every crm.* rule that takes an id, filled with the given ids."""
    urls = []
    for rule in app.url_map.iter_rules():
        if not rule.endpoint.startswith("crm.") or not rule.arguments & {"record_id",
                                                                         "activity_id"}:
            continue
        path = rule.rule
        kinds = ["contact", "lead", "potential"] if "<kind>" in path else [None]
        for kind in kinds:
            url = path.replace("<kind>", kind or "")
            match = re.match(r"/crm/(\w+)/", url)
            record_kind = kind or KIND_OF_PATH.get(match.group(1)) if match else kind
            url = url.replace("<int:record_id>", str(ids.get(record_kind, 0)))
            url = url.replace("<int:activity_id>", str(ids["activity"]))
            urls.append((rule.endpoint, url, sorted(rule.methods - {"HEAD", "OPTIONS"})))
    return urls


def _counts():
    return [db.session.scalar(select(func.count()).select_from(m))
            for m in (Contact, Lead, Potential, Activity)]


@pytest.mark.parametrize("intruder", ["other_org_admin", "other_org_user", "colleague"])
def test_url_walk_with_foreign_ids_answers_404(app, client, login_as, org, user, intruder):
    ids = _records(user)
    other_org = factories.make_org()
    if intruder == "other_org_admin":
        person = db.session.scalar(select(User).where(User.org_id == other_org.id,
                                                      User.is_admin.is_(True)))
    elif intruder == "other_org_user":
        person = factories.make_user(other_org)
    else:
        person = factories.make_user(org)  # same organization, not an admin, not the owner
    login_as(person)
    before = _counts()
    token = csrf_from(client.get("/crm/contacts/new"))
    urls = _crm_urls_with_ids(app, ids)
    assert len(urls) >= 12
    for endpoint, url, methods in urls:
        for method in methods:
            data = {"csrf_token": token, "name": "Hijack", "title": "Hijack", "kind": "note",
                    "emails": "hijack@x.example"} if method == "POST" else None
            response = client.open(url, method=method, data=data)
            assert response.status_code == 404, (endpoint, method, url, response.status_code)
    assert _counts() == before


def test_lists_exports_and_search_hide_foreign_records(client, login_as, org, user):
    _records(user)
    other_org = factories.make_org()
    for person in (factories.make_user(other_org), factories.make_user(org)):
        login_as(person)
        for url in ("/crm/contacts", "/crm/leads", "/crm/potentials", "/crm/contacts?q=secret",
                    "/crm/contacts/export.csv", "/crm/leads/export.csv",
                    "/crm/potentials/export.csv", "/crm/autocomplete?q=secret", "/crm/",
                    "/crm/events.ics"):
            body = client.get(url).get_data(as_text=True)
            assert "Secret" not in body and "secret@" not in body, url


def test_gadget_target_of_another_user_is_404(client, login_as, org, user):
    ids = _records(user)
    colleague = factories.make_user(org)
    message = deliver_raw(hosted(colleague), make_raw(sender="secret@x.example",
                                                      to=colleague.email))
    login_as(colleague)
    response = post_form(client, "/crm/gadget/activity",
                         {"target": f"contact:{ids['contact']}", "message_id": str(message.id),
                          "kind": "note", "title": "Hijack"}, page="/crm/contacts/new")
    assert response.status_code == 404


def test_admin_sees_every_record_of_the_organization(client, login_as, admin_user, user):
    ids = _records(user)
    login_as(admin_user)
    for kind, plural in (("contact", "contacts"), ("lead", "leads"), ("potential", "potentials")):
        assert client.get(f"/crm/{plural}/{ids[kind]}").status_code == 200
        assert b"Secret" in client.get(f"/crm/{plural}").data
    assert client.get(f"/crm/activities/{ids['activity']}/event.ics").status_code == 200


def test_owner_sees_own_records(client, login_as, user):
    ids = _records(user)
    login_as(user)
    for kind, plural in (("contact", "contacts"), ("lead", "leads"), ("potential", "potentials")):
        assert client.get(f"/crm/{plural}/{ids[kind]}").status_code == 200
