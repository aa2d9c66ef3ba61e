"""The CRM panel in the message view and its quick forms (issue 7); compose autocomplete."""
from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest
from sqlalchemy import select

from tests import factories
from tests.conftest import post_form
from tests.crm.helpers import deliver_raw, hosted, make_raw, pop_account
from webapp.extensions import db
from webapp.models.crm import Activity, Contact, Lead, Potential
from webapp.services import crm


@pytest.fixture
def known(user):
    """A contact with an open potential, and a lead, both owned by the user."""
    contact = crm.create_contact(db.session, user.org_id, user.id, name="Carla Customer",
                                 emails=["carla@customer.example"], company="Customer Co")
    potential = crm.create_potential(db.session, crm.Viewer.of(user), user.id,
                                     name="Renewal 2027", contact_id=contact.id)
    lead = crm.create_lead(db.session, user.org_id, user.id, name="Leo Lead",
                           email="leo@lead.example")
    db.session.commit()
    return contact, potential, lead


def _message(user, **headers):
    return deliver_raw(hosted(user), make_raw(**headers))


def test_panel_shows_cards_for_known_and_buttons_for_unknown(client, login_as, user, known):
    contact, potential, lead = known
    message = _message(user, sender='"Customer, Carla" <Carla@Customer.EXAMPLE>', to=user.email,
                       cc="Leo <leo@lead.example>, New Person <new.person@prospect.example>")
    login_as(user)
    page = client.get(f"/mail/message/{message.id}").get_data(as_text=True)
    assert f'href="/crm/contacts/{contact.id}"' in page
    assert f'href="/crm/potentials/{potential.id}"' in page  # the contact's open potential
    assert f'href="/crm/leads/{lead.id}"' in page
    assert "Add as lead" in page and "new.person@prospect.example" in page
    # The user's own address is never a party of the panel.
    assert "Add as lead</a>" in page and page.count("Add as lead") == 1


def test_unknown_address_prefills_the_new_record(client, login_as, user):
    message = _message(user, sender="New Person <New.Person@Prospect.example>", to=user.email)
    login_as(user)
    page = client.get(f"/mail/message/{message.id}").get_data(as_text=True)
    start = page.index("/crm/leads/new?")
    link = page[start:page.index('"', start)].replace("&amp;", "&")
    query = parse_qs(urlsplit(link).query)
    assert query["name"] == ["New Person"] and query["email"] == ["new.person@prospect.example"]
    form = client.get(link).get_data(as_text=True)
    assert 'value="New Person"' in form and 'value="new.person@prospect.example"' in form
    response = post_form(client, link, {"name": "New Person", "status": "new",
                                        "email": "new.person@prospect.example"})
    assert response.headers["Location"].endswith(f"/mail/message/{message.id}")
    assert db.session.scalar(select(Lead)).email == "new.person@prospect.example"


def test_add_as_potential_creates_contact_then_potential(client, login_as, user):
    message = _message(user, sender="Pat <pat@prospect.example>", to=user.email)
    login_as(user)
    page = client.get(f"/mail/message/{message.id}").get_data(as_text=True)
    start = page.index("/crm/contacts/new?", page.index("Add as contact") + 1)
    link = page[start:page.index('"', start)].replace("&amp;", "&")
    assert "then=potential" in link
    response = post_form(client, link, {"name": "Pat", "emails": "pat@prospect.example"})
    contact = db.session.scalar(select(Contact))
    assert f"contact_id={contact.id}" in response.headers["Location"]
    next_page = response.headers["Location"]
    response = post_form(client, next_page, {"name": "Pat — deal", "stage": "prospecting",
                                             "contact_id": str(contact.id)})
    potential = db.session.scalar(select(Potential))
    assert potential.contact_id == contact.id
    assert response.headers["Location"].endswith(f"/mail/message/{message.id}")


@pytest.mark.parametrize("target_kind, fields", [
    ("contact", {"kind": "note", "title": "Asked for a discount", "notes": "10% max"}),
    ("potential", {"kind": "task", "title": "Send quote", "due_date": "2027-03-01",
                   "status": "open"}),
    ("lead", {"kind": "event", "title": "Call", "starts_at": "2027-03-02T09:30",
              "ends_at": "2027-03-02T10:00"}),
])
def test_quick_forms_store_on_the_right_record_with_the_message_link(
        client, login_as, user, known, target_kind, fields):
    contact, potential, lead = known
    record = {"contact": contact, "potential": potential, "lead": lead}[target_kind]
    message = _message(user, sender="carla@customer.example", to=user.email,
                       cc="leo@lead.example")
    login_as(user)
    page_url = f"/mail/message/{message.id}"
    assert f'value="{target_kind}:{record.id}"' in client.get(page_url).get_data(as_text=True)
    response = post_form(client, "/crm/gadget/activity",
                         {"target": f"{target_kind}:{record.id}", "message_id": str(message.id),
                          "next": page_url, **fields}, page=page_url)
    assert response.status_code == 302 and response.headers["Location"].endswith(page_url)
    activity = db.session.scalar(select(Activity))
    assert getattr(activity, f"{target_kind}_id") == record.id
    assert activity.message_id == message.id and activity.kind == fields["kind"]
    others = {"contact_id", "lead_id", "potential_id"} - {f"{target_kind}_id"}
    assert all(getattr(activity, name) is None for name in others)
    shown = client.get(f"/crm/{target_kind}s/{record.id}").get_data(as_text=True)
    assert fields["title"] in shown and f'href="/mail/message/{message.id}"' in shown


def test_quick_form_error_keeps_nothing_and_says_why(client, login_as, user, known):
    contact, _potential, _lead = known
    message = _message(user, sender="carla@customer.example", to=user.email)
    login_as(user)
    page_url = f"/mail/message/{message.id}"
    response = post_form(client, "/crm/gadget/activity",
                         {"target": f"contact:{contact.id}", "message_id": str(message.id),
                          "kind": "event", "title": "No start"}, page=page_url)
    assert response.status_code == 302
    assert db.session.scalar(select(Activity)) is None
    assert b"An event needs a start" in client.get(page_url).data


def test_quick_form_refuses_a_message_of_another_mailbox(client, login_as, org, user, known):
    contact, _potential, _lead = known
    colleague = factories.make_user(org)
    theirs = _message(colleague, sender="carla@customer.example", to=colleague.email)
    login_as(user)
    response = post_form(client, "/crm/gadget/activity",
                         {"target": f"contact:{contact.id}", "message_id": str(theirs.id),
                          "kind": "note", "title": "x"}, page="/crm/contacts/new")
    assert response.status_code == 302
    assert db.session.scalar(select(Activity)) is None


def test_deleting_the_message_keeps_the_note(user, known):
    contact, _potential, _lead = known
    message = _message(user, sender="carla@customer.example", to=user.email)
    activity = crm.add_activity(db.session, contact, user.id, kind="note", title="Kept",
                                message_id=message.id)
    db.session.commit()
    activity_id = activity.id
    db.session.delete(message)
    db.session.commit()
    db.session.expire_all()
    assert db.session.get(Activity, activity_id).message_id is None


def test_excluded_addresses_get_no_panel(client, login_as, user):
    crm.add_exclusion(db.session, user, "bank.example")
    db.session.commit()
    message = _message(user, sender="statements@bank.example", to=user.email)
    login_as(user)
    assert b"Add as lead" not in client.get(f"/mail/message/{message.id}").data


def test_autocomplete_returns_scoped_contacts_and_leads(client, login_as, org, user, known):
    colleague = factories.make_user(org)
    crm.create_contact(db.session, org.id, colleague.id, name="Carl Hidden",
                       emails=["carl@hidden.example"])
    db.session.commit()
    login_as(user)
    results = client.get("/crm/autocomplete?q=car").get_json()["results"]
    assert [(r["kind"], r["email"]) for r in results] == [("contact", "carla@customer.example")]
    results = client.get("/crm/autocomplete?q=LEO").get_json()["results"]
    assert [(r["kind"], r["name"], r["email"]) for r in results] == \
        [("lead", "Leo Lead", "leo@lead.example")]
    assert client.get("/crm/autocomplete?q=").get_json() == {"results": []}


def test_own_send_as_and_pop_addresses_are_not_parties(client, login_as, user, known):
    from webapp.models.sending import SendIdentity

    pop_account(user, "me@isp.example")
    db.session.add(SendIdentity(org_id=user.org_id, user_id=user.id, email="Me@Work.example",
                                is_verified=True))
    db.session.commit()
    message = _message(user, sender="Me <me@work.example>", to="carla@customer.example",
                       cc="me@isp.example, stranger@else.example")
    login_as(user)
    page = client.get(f"/mail/message/{message.id}").get_data(as_text=True)
    assert "Carla Customer" in page and "stranger@else.example" in page
    assert "me@work.example" not in page.split('class="crm-panel"')[1]
    assert "me@isp.example" not in page.split('class="crm-panel"')[1]
