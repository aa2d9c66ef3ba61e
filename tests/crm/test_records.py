"""Lead conversion, CSV import/export, iCalendar export, add-on settings, record transfer."""
from __future__ import annotations

import csv
import io
from datetime import datetime, timezone

import icalendar
import pytest
from sqlalchemy import func, select

from tests import factories
from tests.conftest import csrf_from, post_form
from tests.crm.helpers import deliver_raw, hosted, make_raw, pop_account
from webapp.extensions import db
from webapp.models.crm import Activity, Contact, Lead, Potential, TrackingExclusion
from webapp.services import crm
from webapp.services.addon import get_addon_account
from webapp.services.correspondence import correspondence_for
from webapp.services.crm_records import RecordsTransferError, neutralize_cell, reassign_or_delete


def _count(model):
    return db.session.scalar(select(func.count()).select_from(model))


def test_lead_conversion_keeps_activities_and_mail(client, login_as, user):
    lead = crm.create_lead(db.session, user.org_id, user.id, name="Lena", email="lena@lead.example",
                           company="Lena Ltd", phone="123")
    note = crm.add_activity(db.session, lead, user.id, kind="note", title="Met at the fair")
    db.session.commit()
    deliver_raw(hosted(user), make_raw(sender="lena@lead.example", to=user.email,
                                       subject="Nice to meet you"))
    login_as(user)
    response = post_form(client, f"/crm/leads/{lead.id}/convert",
                         {"potential_name": "Lena pilot", "amount": "5000"})
    assert response.status_code == 302
    contact = db.session.scalar(select(Contact))
    potential = db.session.scalar(select(Potential))
    db.session.expire_all()
    assert (contact.name, contact.addresses, contact.company, contact.phone) == \
        ("Lena", ["lena@lead.example"], "Lena Ltd", "123")
    assert potential.contact_id == contact.id and str(potential.amount) == "5000.00"
    moved = db.session.get(Activity, note.id)
    assert moved.contact_id == contact.id and moved.lead_id is None
    converted = db.session.get(Lead, lead.id)
    assert converted.converted_contact_id == contact.id and converted.status == "converted"
    page = client.get(f"/crm/contacts/{contact.id}").get_data(as_text=True)
    assert "Met at the fair" in page and "Nice to meet you" in page
    assert "also on" not in page  # the converted lead defers to its contact
    again = post_form(client, f"/crm/leads/{lead.id}/convert", {}, page=f"/crm/leads/{lead.id}")
    assert again.status_code == 302 and _count(Contact) == 1


@pytest.mark.parametrize("value, expected", [
    ("=HYPERLINK(\"http://evil\")", "'=HYPERLINK(\"http://evil\")"),
    ("+1 555 0100", "'+1 555 0100"), ("-2+3", "'-2+3"), ("@SUM(A1)", "'@SUM(A1)"),
    ("\tTAB", "'\tTAB"), ("plain", "plain"), ("", ""), ("a=b", "a=b"),
])
def test_formula_cells_are_neutralized(value, expected):
    assert neutralize_cell(value) == expected


def test_csv_export_import_round_trip(client, login_as, org, user):
    crm.create_contact(db.session, user.org_id, user.id, name="=cmd|' /C calc'!A0",
                       emails=["a@x.example", "b@x.example"], phone="+1 555", company="Acme, Inc.")
    crm.create_contact(db.session, user.org_id, user.id, name="Zoë \"Z\" Ünicode",
                       emails=["zoe@x.example"])
    db.session.commit()
    login_as(user)
    exported = client.get("/crm/contacts/export.csv")
    assert exported.mimetype == "text/csv"
    rows = list(csv.reader(io.StringIO(exported.get_data(as_text=True))))
    assert rows[0] == ["name", "emails", "phone", "company"]
    assert rows[1] == ["'=cmd|' /C calc'!A0", "a@x.example b@x.example", "'+1 555", "Acme, Inc."]
    # Another user imports the file: same records, formula guard undone, nothing else changed.
    other = factories.make_user(org)
    login_as(other)
    preview = post_form(client, "/crm/contacts/import",
                        {"file": (io.BytesIO(exported.data), "contacts.csv")},
                        content_type="multipart/form-data")
    assert preview.status_code == 200 and b"Preview: 2 rows" in preview.data
    assert _count(Contact) == 2  # a preview saves nothing
    content = exported.get_data(as_text=True)
    response = client.post("/crm/contacts/import/confirm",
                           data={"csrf_token": csrf_from(preview), "content": content})
    assert response.status_code == 302
    mine = db.session.scalars(select(Contact).where(Contact.owner_id == other.id)
                              .order_by(Contact.name)).all()
    assert [(c.name, c.addresses, c.phone, c.company) for c in mine] == [
        ("=cmd|' /C calc'!A0", ["a@x.example", "b@x.example"], "+1 555", "Acme, Inc."),
        ("Zoë \"Z\" Ünicode", ["zoe@x.example"], "", "")]


def test_import_with_a_bad_row_imports_nothing_and_names_the_line(client, login_as, user):
    login_as(user)
    text = ("name,email,status\nGood,good@x.example,new\n,missing@x.example,new\n"
            "Bad,not-an-address,new\n")
    preview = post_form(client, "/crm/leads/import",
                        {"file": (io.BytesIO(text.encode()), "leads.csv")},
                        content_type="multipart/form-data")
    body = preview.get_data(as_text=True)
    assert "name is empty" in body and "not a valid email address" in body
    assert 'action="/crm/leads/import/confirm"' not in body
    # Even posting the confirmation directly cannot import part of it.
    response = client.post("/crm/leads/import/confirm",
                           data={"csrf_token": csrf_from(preview), "content": text})
    assert response.status_code == 200 and b"Nothing was imported" in response.data
    assert _count(Lead) == 0


UNREADABLE = [(b"\xff\xfe\x00bad", "not UTF-8"),
              (b"email\nx@y.example\n", "include &#39;name&#39;"),
              (b"name\n", "no data rows")]


def test_import_refuses_unreadable_files(client, login_as, user):
    login_as(user)
    for data, message in UNREADABLE:
        response = post_form(client, "/crm/contacts/import",
                             {"file": (io.BytesIO(data), "c.csv")},
                             content_type="multipart/form-data")
        assert message in response.get_data(as_text=True), data
    assert _count(Contact) == 0


def test_potential_import_links_contacts_by_address(client, login_as, user):
    contact = crm.create_contact(db.session, user.org_id, user.id, name="C",
                                 emails=["c@x.example"])
    db.session.commit()
    login_as(user)
    text = ("name,amount,stage,closing_date,contact_email\n"
            "Deal,1200.5,proposal,2027-05-01,C@X.example\n")
    page = client.get("/crm/potentials/import")
    response = client.post("/crm/potentials/import/confirm",
                           data={"csrf_token": csrf_from(page), "content": text})
    assert response.status_code == 302
    potential = db.session.scalar(select(Potential))
    assert potential.contact_id == contact.id and str(potential.amount) == "1200.50"


def test_icalendar_export_parses_with_escaping(client, login_as, user):
    contact = crm.create_contact(db.session, user.org_id, user.id, name="C", emails=[])
    event = crm.add_activity(db.session, contact, user.id, kind="event",
                             title="Demo; with, special\\chars and a long title " + "x" * 80,
                             notes="Line one\nLine two",
                             starts_at=datetime(2027, 2, 3, 14, 0, tzinfo=timezone.utc),
                             ends_at=datetime(2027, 2, 3, 15, 0, tzinfo=timezone.utc))
    db.session.commit()
    login_as(user)
    response = client.get(f"/crm/activities/{event.id}/event.ics")
    assert response.mimetype == "text/calendar"
    raw = response.data
    assert all(len(line) <= 75 for line in raw.split(b"\r\n")), "lines must be folded at 75 octets"
    assert b"\r\n" in raw and b"\n" not in raw.replace(b"\r\n", b"")
    calendar = icalendar.Calendar.from_ical(raw)
    [parsed] = calendar.walk("VEVENT")
    assert str(parsed["SUMMARY"]) == event.title
    assert str(parsed["DESCRIPTION"]) == "Line one\nLine two"
    assert parsed.decoded("DTSTART") == event.starts_at
    all_events = icalendar.Calendar.from_ical(client.get("/crm/events.ics").data)
    assert len(all_events.walk("VEVENT")) == 1


def test_addon_settings_choose_account_and_manage_exclusions(client, login_as, user):
    pop = pop_account(user, "me@isp.example")
    login_as(user)
    page = client.get("/settings/addon").get_data(as_text=True)
    assert "me@isp.example" in page
    hosted_id = hosted(user).id
    response = post_form(client, "/settings/addon",
                         {"crm_account": str(pop.id), "recruit_account": str(hosted_id)})
    assert response.status_code == 302
    assert get_addon_account(db.session, user.id, "crm").id == pop.id
    assert get_addon_account(db.session, user.id, "recruit").id == hosted_id
    post_form(client, "/settings/addon/exclusions", {"value": "@Bank.Example"},
              page="/settings/addon")
    row = db.session.scalar(select(TrackingExclusion))
    assert row.value == "bank.example" and row.user_id == user.id
    bad = post_form(client, "/settings/addon/exclusions", {"value": "nonsense"},
                    page="/settings/addon", follow_redirects=True)
    assert b"neither an address nor a domain" in bad.data
    post_form(client, f"/settings/addon/exclusions/{row.id}/delete", {}, page="/settings/addon")
    assert _count(TrackingExclusion) == 0


def test_addon_settings_refuse_another_users_account(client, login_as, org, user):
    colleague = factories.make_user(org)
    login_as(user)
    response = post_form(client, "/settings/addon",
                         {"crm_account": str(hosted(colleague).id),
                          "recruit_account": str(hosted(user).id)})
    assert response.status_code == 200  # not a valid choice: the form shows the error
    assert get_addon_account(db.session, user.id, "crm").id == hosted(user).id


def test_exclusion_of_another_user_cannot_be_removed(client, login_as, org, user):
    colleague = factories.make_user(org)
    row = crm.add_exclusion(db.session, colleague, "x.example")
    db.session.commit()
    login_as(user)
    response = post_form(client, f"/settings/addon/exclusions/{row.id}/delete", {},
                         page="/settings/addon")
    assert response.status_code == 404 and _count(TrackingExclusion) == 1


def _owned_set(owner):
    contact = crm.create_contact(db.session, owner.org_id, owner.id, name="C",
                                 emails=["c@x.example"])
    lead = crm.create_lead(db.session, owner.org_id, owner.id, name="L")
    crm.create_potential(db.session, crm.Viewer.of(owner), owner.id, name="P",
                         contact_id=contact.id)
    crm.add_activity(db.session, lead, owner.id, kind="note", title="N")
    db.session.commit()


def test_reassign_moves_every_record_and_mail_follows_the_new_owner(org, user):
    _owned_set(user)
    heir = factories.make_user(org)
    counts = reassign_or_delete(db.session, org.id, user.id, heir.id)
    db.session.commit()
    assert counts == {"crm_contact": 1, "crm_lead": 1, "crm_potential": 1, "crm_activity": 1}
    for model in (Contact, Lead, Potential, Activity):
        assert {row.owner_id for row in db.session.scalars(select(model))} == {heir.id}
    deliver_raw(hosted(heir), make_raw(sender="c@x.example", to=heir.email, subject="Heir's"))
    contact = db.session.scalar(select(Contact))
    assert [i.subject for i in correspondence_for(db.session, crm.Viewer.of(heir),
                                                  contact).items] == ["Heir's"]


def test_delete_removes_records_and_activities(org, user):
    _owned_set(user)
    keeper = factories.make_user(org)
    _owned_set(keeper)
    reassign_or_delete(db.session, org.id, user.id, None)
    db.session.commit()
    for model in (Contact, Lead, Potential, Activity):
        assert {row.owner_id for row in db.session.scalars(select(model))} == {keeper.id}


def test_reassign_refuses_a_user_of_another_organization(org, user):
    other = factories.make_user(factories.make_org())
    with pytest.raises(RecordsTransferError):
        reassign_or_delete(db.session, org.id, user.id, other.id)
    with pytest.raises(RecordsTransferError):
        reassign_or_delete(db.session, org.id, user.id, user.id)
