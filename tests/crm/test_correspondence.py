"""Correspondence is a query over indexed addresses (issue 7): the linking matrix and its
consequences — moving to Sent flips, later contacts see earlier mail, edits re-link."""
from __future__ import annotations

import itertools

import pytest

from tests import factories
from tests.crm.helpers import custom_folder, deliver_raw, hosted, make_raw, move, pop_account
from webapp.extensions import db
from webapp.services import crm
from webapp.services.addon import set_addon_account
from webapp.services.correspondence import correspondence_for
from webapp.services.delivery import folder_for_role

# How the customer's address may be written in a header; the contact stores j.doe@x.com.
ADDRESS_FORMS = {
    "bare-upper": "J.DOE@X.COM",
    "display-comma": '"Doe, J" <J.DOE@X.COM>',
    "display-plain": "John Doe <j.doe@x.com>",
    "encoded-word": "=?utf-8?q?J=C3=B6rg_Doe?= <J.Doe@X.Com>",
}


def _viewer(user):
    return crm.Viewer.of(user)


def _contact(user, emails, name="John Doe"):
    contact = crm.create_contact(db.session, user.org_id, user.id, name=name,
                                 emails=[crm.parse_typed_address(e) for e in emails])
    db.session.commit()
    return contact


def _timeline(user, record, viewer=None):
    page = correspondence_for(db.session, viewer or _viewer(user), record)
    return [(item.subject, item.direction) for item in page.items]


@pytest.mark.parametrize("folder", ["inbox", "sent", "custom"])
def test_linking_matrix(user, folder):
    """Every folder × header × written form × either of the contact's two addresses links.

    One message per header, written form and address (distinct subjects), so each
    combination is checked on its own while the app and users are built once per folder.
    """
    contact = _contact(user, ["J.Doe@x.com", "john@Second.Example"])
    target = custom_folder(user) if folder == "custom" else None
    me = user.email
    expected = set()
    for header, form, which_address in itertools.product(("from", "to", "cc"),
                                                         sorted(ADDRESS_FORMS), (0, 1)):
        written = ADDRESS_FORMS[form] if which_address == 0 else form_for_second(form)
        headers = {"from": dict(sender=written, to=me), "to": dict(sender=me, to=written),
                   "cc": dict(sender=me, to="someone@else.example", cc=written)}[header]
        subject = f"{header}/{form}/{which_address}"
        message = deliver_raw(hosted(user), make_raw(subject=subject, **headers),
                              folder_role="sent" if folder == "sent" else "inbox")
        if target is not None:
            move(message, target)
        expected.add((subject, "sent" if folder == "sent" else "received"))
    # Unrelated mail in the same folders never links.
    deliver_raw(hosted(user), make_raw(sender="j.doe@x.co", to=me, subject="near miss"))
    timeline = _timeline(user, contact)
    assert set(timeline) == expected and len(timeline) == len(expected)


def form_for_second(form: str) -> str:
    """The same written form for the contact's second address."""
    return ADDRESS_FORMS[form].replace("J.DOE@X.COM", "JOHN@SECOND.EXAMPLE") \
        .replace("j.doe@x.com", "john@second.example").replace("J.Doe@X.Com", "John@Second.Example")


def test_moving_into_sent_flips_direction_at_once(user):
    contact = _contact(user, ["j.doe@x.com"])
    message = deliver_raw(hosted(user), make_raw(sender=user.email, to="j.doe@x.com",
                                                 subject="Proposal"))
    assert _timeline(user, contact) == [("Proposal", "received")]
    move(message, folder_for_role(db.session, user.id, "sent"))
    assert _timeline(user, contact) == [("Proposal", "sent")]
    move(message, folder_for_role(db.session, user.id, "inbox"))
    assert _timeline(user, contact) == [("Proposal", "received")]


def test_trash_spam_and_drafts_are_not_correspondence(user):
    contact = _contact(user, ["j.doe@x.com"])
    for role in ("trash", "spam", "drafts"):
        message = deliver_raw(hosted(user), make_raw(sender="j.doe@x.com", to=user.email))
        move(message, folder_for_role(db.session, user.id, role))
    assert _timeline(user, contact) == []


def test_contact_created_later_shows_earlier_mail(user):
    for n in range(3):
        deliver_raw(hosted(user), make_raw(sender="Ann <ann@client.example>", to=user.email,
                                           subject=f"Old {n}",
                                           date=f"Mon, 0{n + 1} Jun 2026 10:00:00 +0000"))
    contact = _contact(user, ["ANN@client.example"], name="Ann")
    assert _timeline(user, contact) == [("Old 2", "received"), ("Old 1", "received"),
                                        ("Old 0", "received")]


def test_lead_and_potential_show_their_mail(user):
    deliver_raw(hosted(user), make_raw(sender="Bo <bo@lead.example>", to=user.email,
                                       subject="Interested"))
    lead = crm.create_lead(db.session, user.org_id, user.id, name="Bo",
                           email=crm.parse_typed_address("Bo@Lead.Example"))
    contact = _contact(user, ["carl@deal.example"], name="Carl")
    potential = crm.create_potential(db.session, _viewer(user), user.id, name="Deal",
                                     contact_id=contact.id)
    db.session.commit()
    deliver_raw(hosted(user), make_raw(sender=user.email, to="carl@deal.example",
                                       subject="Quote"), folder_role="sent")
    assert _timeline(user, lead) == [("Interested", "received")]
    assert _timeline(user, potential) == [("Quote", "sent")]


def test_changing_an_address_relinks_at_once(user):
    contact = _contact(user, ["old@x.example"])
    deliver_raw(hosted(user), make_raw(sender="old@x.example", to=user.email, subject="Old"))
    deliver_raw(hosted(user), make_raw(sender="new@x.example", to=user.email, subject="New"))
    assert _timeline(user, contact) == [("Old", "received")]
    crm.update_contact(db.session, contact, name=contact.name, emails=["new@x.example"])
    db.session.commit()
    assert _timeline(user, contact) == [("New", "received")]


def test_one_message_shows_once_however_many_addresses_match(user):
    contact = _contact(user, ["a@x.example", "b@x.example"])
    deliver_raw(hosted(user), make_raw(sender="a@x.example", to=user.email,
                                       cc="b@x.example, A <A@X.EXAMPLE>", subject="Both"))
    page = correspondence_for(db.session, _viewer(user), contact)
    assert [i.subject for i in page.items] == ["Both"]
    assert sorted(page.items[0].matched) == ["a@x.example", "b@x.example"]


def test_address_on_two_records_shows_on_both_with_also_on(user):
    contact = _contact(user, ["shared@x.example"], name="Sam")
    lead = crm.create_lead(db.session, user.org_id, user.id, name="Sam (lead)",
                           email="shared@x.example")
    db.session.commit()
    deliver_raw(hosted(user), make_raw(sender="shared@x.example", to=user.email))
    on_contact = correspondence_for(db.session, _viewer(user), contact).items
    on_lead = correspondence_for(db.session, _viewer(user), lead).items
    assert [r.name for r in on_contact[0].also_on] == ["Sam (lead)"]
    assert [r.name for r in on_lead[0].also_on] == ["Sam"]


def test_excluded_addresses_and_domains_are_not_tracked(user):
    contact = _contact(user, ["j.doe@x.com", "j@other.example"])
    deliver_raw(hosted(user), make_raw(sender="j.doe@x.com", to=user.email, subject="Hidden"))
    deliver_raw(hosted(user), make_raw(sender="j@other.example", to=user.email, subject="Shown"))
    both = [("Shown", "received"), ("Hidden", "received")]
    assert sorted(_timeline(user, contact)) == sorted(both)
    for excluded in ("j.doe@x.com", "x.com", "@X.COM", "J.Doe@X.com"):
        row = crm.add_exclusion(db.session, user, excluded)
        db.session.commit()
        assert _timeline(user, contact) == [("Shown", "received")], excluded
        crm.remove_exclusion(db.session, user.id, row.id)
        db.session.commit()
        assert sorted(_timeline(user, contact)) == sorted(both), excluded


def test_a_subdomain_of_an_excluded_domain_is_excluded():
    assert crm.is_excluded("a@mail.bank.example", ["bank.example"])
    assert not crm.is_excluded("a@notbank.example", ["bank.example"])


def test_only_the_addon_account_counts(user):
    contact = _contact(user, ["j.doe@x.com"])
    pop = pop_account(user)
    deliver_raw(hosted(user), make_raw(sender="j.doe@x.com", to=user.email, subject="Hosted"))
    deliver_raw(pop, make_raw(sender="j.doe@x.com", to=pop.email, subject="Via POP"))
    assert _timeline(user, contact) == [("Hosted", "received")]
    set_addon_account(db.session, user.id, "crm", pop.id)
    db.session.commit()
    assert _timeline(user, contact) == [("Via POP", "received")]


def test_another_users_mailbox_never_counts(org, user):
    colleague = factories.make_user(org)
    contact = _contact(user, ["j.doe@x.com"])
    deliver_raw(hosted(colleague), make_raw(sender="j.doe@x.com", to=colleague.email))
    assert _timeline(user, contact) == []


def test_admin_sees_the_record_owners_correspondence(admin_user, user):
    contact = _contact(user, ["j.doe@x.com"])
    deliver_raw(hosted(user), make_raw(sender="j.doe@x.com", to=user.email, subject="Owner's"))
    deliver_raw(hosted(admin_user), make_raw(sender="j.doe@x.com", to=admin_user.email,
                                             subject="Admin's"))
    assert _timeline(user, contact, viewer=crm.Viewer.of(admin_user)) == [("Owner's", "received")]


def test_keyset_pages_cover_everything_once_newest_first(user):
    contact = _contact(user, ["j.doe@x.com"])
    for n in range(7):
        # Two messages share each date: the keyset must break ties by id.
        deliver_raw(hosted(user), make_raw(sender="j.doe@x.com", to=user.email, subject=f"M{n}",
                                           date=f"Mon, 0{n // 2 + 1} Jun 2026 10:00:00 +0000"))
    seen, cursor = [], None
    while True:
        page = correspondence_for(db.session, _viewer(user), contact, cursor=cursor, limit=3)
        seen += [item.subject for item in page.items]
        cursor = page.next_cursor
        if cursor is None:
            break
    assert sorted(seen) == [f"M{n}" for n in range(7)] and len(seen) == 7
    assert seen[0] in ("M6",) and seen[-1] in ("M0", "M1")
