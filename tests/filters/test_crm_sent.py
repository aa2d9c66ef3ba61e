"""A message a filter moves into Sent counts as sent on the contact's page (issue 6 and 7)."""
from __future__ import annotations

from tests.filters.helpers import hosted, make_raw
from webapp.extensions import db
from webapp.services import crm
from webapp.services.correspondence import correspondence_for
from webapp.services.delivery import deliver
from webapp.services.filters import create_sent_mail_filter
from worker.jobs.filters import apply_filter


def timeline(user, contact):
    page = correspondence_for(db.session, crm.Viewer.of(user), contact)
    return sorted((item.subject, item.direction) for item in page.items)


def test_filtered_into_sent_counts_as_sent_at_delivery_and_on_apply(app, user):
    contact = crm.create_contact(db.session, user.org_id, user.id, name="Customer",
                                 emails=[crm.parse_typed_address("buyer@customer.example")])
    db.session.commit()
    account = hosted(user)
    # Before the filter exists: the user's own copy sits in the Inbox, "received".
    deliver(db.session, account, make_raw(subject="Old quote", sender=user.email,
                                          to="buyer@customer.example", cc="", n=1), "k1")
    db.session.commit()
    assert timeline(user, contact) == [("Old quote", "received")]

    filter_ = create_sent_mail_filter(db.session, user.id, user.email)
    db.session.commit()
    deliver(db.session, account, make_raw(subject="New quote", sender=user.email.upper(),
                                          to="buyer@customer.example", cc="", n=2), "k2")
    deliver(db.session, account, make_raw(subject="Their reply",
                                          sender="Buyer <buyer@customer.example>",
                                          to=user.email, cc="", n=3), "k3")
    db.session.commit()
    assert timeline(user, contact) == [("New quote", "sent"), ("Old quote", "received"),
                                       ("Their reply", "received")]

    assert apply_filter(filter_.id) == 2  # the two own messages, one already in Sent
    db.session.expire_all()
    assert timeline(user, contact) == [("New quote", "sent"), ("Old quote", "sent"),
                                       ("Their reply", "received")]
