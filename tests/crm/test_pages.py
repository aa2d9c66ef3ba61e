"""CRM pages: lists, create/edit/delete through the real forms, the record timeline."""
from __future__ import annotations

from sqlalchemy import select

from tests import factories
from tests.conftest import post_form
from tests.crm.helpers import deliver_raw, hosted, make_raw
from webapp.extensions import db
from webapp.models.crm import Activity, Contact, Lead, Potential
from webapp.services import crm


def _contact(user, emails=("ann@client.example",), name="Ann Client", company=""):
    contact = crm.create_contact(db.session, user.org_id, user.id, name=name, emails=list(emails),
                                 company=company)
    db.session.commit()
    return contact


PAGES = ["/crm/", "/crm/contacts", "/crm/leads", "/crm/potentials", "/crm/contacts/new",
         "/crm/leads/new", "/crm/potentials/new", "/crm/contacts/import", "/crm/leads/import",
         "/crm/potentials/import", "/settings/addon", "/settings/"]


def test_pages_render(client, login_as, user):
    login_as(user)
    for url in PAGES:
        response = client.get(url)
        assert response.status_code == 200, (url, response.data[:500])


def test_create_contact_through_the_form_normalizes_addresses(client, login_as, user):
    login_as(user)
    response = post_form(client, "/crm/contacts/new",
                         {"name": "Jane Doe",
                          "emails": "Jane.Doe@Customer.EXAMPLE\nj@other.example",
                          "phone": "+1 555", "company": "Customer Inc"})
    assert response.status_code == 302
    contact = db.session.scalar(select(Contact))
    assert contact.addresses == ["jane.doe@customer.example", "j@other.example"]
    assert contact.owner_id == user.id and contact.org_id == user.org_id
    page = client.get(response.headers["Location"]).get_data(as_text=True)
    assert "Jane Doe" in page and "jane.doe@customer.example" in page


BAD_ADDRESSES = ["not-an-address", "a@b.example\nbroken@", "two@@x.example", "a b@x.example"]


def test_bad_address_is_refused_and_nothing_is_saved(client, login_as, user):
    login_as(user)
    for emails in BAD_ADDRESSES:
        response = post_form(client, "/crm/contacts/new", {"name": "X", "emails": emails})
        assert response.status_code == 200, emails
        assert "not a valid email address" in response.get_data(as_text=True), emails
    assert db.session.scalar(select(Contact)) is None


def test_record_page_shows_sent_and_received_mail_with_links(client, login_as, user):
    contact = _contact(user)
    inbound = deliver_raw(hosted(user), make_raw(sender="Ann <Ann@Client.example>", to=user.email,
                                                 subject="Question about pricing"))
    outbound = deliver_raw(hosted(user), make_raw(sender=user.email, to="ann@client.example",
                                                  subject="Re: Question about pricing"),
                           folder_role="sent")
    login_as(user)
    page = client.get(f"/crm/contacts/{contact.id}").get_data(as_text=True)
    assert "Question about pricing" in page
    assert f'href="/mail/message/{inbound.id}"' in page
    assert f'href="/mail/message/{outbound.id}"' in page
    assert ">sent<" in page and ">received<" in page


def test_search_sort_and_paging(client, login_as, user):
    for n in range(55):
        crm.create_contact(db.session, user.org_id, user.id, name=f"Person {n:02d}",
                           emails=[f"p{n}@x.example"], company="Zeta" if n == 7 else "Acme")
    db.session.commit()
    login_as(user)
    first = client.get("/crm/contacts").get_data(as_text=True)
    assert "Person 00" in first and "Person 54" not in first and "Page 1 of 2" in first
    second = client.get("/crm/contacts?page=2").get_data(as_text=True)
    assert "Person 54" in second
    found = client.get("/crm/contacts?q=zeta").get_data(as_text=True)
    assert "Person 07" in found and "Person 08" not in found
    by_email = client.get("/crm/contacts?q=p13@").get_data(as_text=True)
    assert "Person 13" in by_email and "Person 12" not in by_email


def test_edit_and_delete_with_confirmation(client, login_as, user):
    contact = _contact(user)
    contact_id = contact.id
    login_as(user)
    response = post_form(client, f"/crm/contacts/{contact.id}/edit",
                         {"name": "Ann C.", "emails": "ann@new.example"})
    assert response.status_code == 302
    db.session.expire_all()
    assert db.session.get(Contact, contact.id).addresses == ["ann@new.example"]
    confirm = client.get(f"/crm/contacts/{contact.id}/delete")
    assert b"Delete contact" in confirm.data and db.session.get(Contact, contact.id) is not None
    response = post_form(client, f"/crm/contacts/{contact.id}/delete", {})
    assert response.status_code == 302
    db.session.expire_all()
    assert db.session.get(Contact, contact_id) is None


def test_lead_and_potential_forms(client, login_as, user):
    contact = _contact(user)
    login_as(user)
    post_form(client, "/crm/leads/new", {"name": "Bo", "email": "BO@Lead.example",
                                         "status": "new", "source": "fair"})
    lead = db.session.scalar(select(Lead))
    assert lead.email == "bo@lead.example"
    response = post_form(client, "/crm/potentials/new",
                         {"name": "Big deal", "amount": "1234.50", "stage": "proposal",
                          "closing_date": "2027-01-31", "contact_id": str(contact.id)})
    assert response.status_code == 302
    potential = db.session.scalar(select(Potential))
    assert str(potential.amount) == "1234.50" and potential.contact_id == contact.id


def test_potential_cannot_use_another_users_contact(client, login_as, org, user):
    colleague = factories.make_user(org)
    theirs = _contact(colleague)
    login_as(user)
    response = post_form(client, "/crm/potentials/new",
                         {"name": "Steal", "stage": "proposal", "contact_id": str(theirs.id)})
    assert response.status_code == 200
    assert db.session.scalar(select(Potential)) is None


def test_activities_from_the_record_page(client, login_as, user):
    contact = _contact(user)
    login_as(user)
    url = f"/crm/contact/{contact.id}/activities/new"
    page = f"/crm/contacts/{contact.id}"
    assert post_form(client, url, {"kind": "task", "title": "Call back",
                                   "due_date": "2027-02-01", "status": "open"},
                     page=page).status_code == 302
    assert post_form(client, url, {"kind": "event", "title": "Demo",
                                   "starts_at": "2027-02-03T14:00", "ends_at": "2027-02-03T15:00"},
                     page=page).status_code == 302
    bad = post_form(client, url, {"kind": "event", "title": "No start"}, page=page)
    assert bad.status_code == 200 and b"An event needs a start" in bad.data
    kinds = sorted(a.kind for a in db.session.scalars(select(Activity)))
    assert kinds == ["event", "task"]
    text = client.get(page).get_data(as_text=True)
    assert "Call back" in text and "Demo" in text
    task = db.session.scalar(select(Activity).where(Activity.kind == "task"))
    post_form(client, f"/crm/activities/{task.id}/done", {}, page=page)
    db.session.expire_all()
    assert db.session.get(Activity, task.id).status == "done"


def test_mail_button_links_to_compose(app, client, login_as, user):
    contact = _contact(user)
    login_as(user)
    page = client.get(f"/crm/contacts/{contact.id}").get_data(as_text=True)
    assert 'href="/mail/compose?to=ann@client.example"' in page
