"""Settings » Recovery address: a user sets, changes and clears their own."""
from __future__ import annotations

import pytest

from tests.conftest import post_form
from tests.factories import PASSWORD
from webapp.extensions import db
from webapp.services.accounts_admin import recovery_address_of


def test_set_and_clear(client, user, login_as):
    login_as(user)
    response = post_form(client, "/settings/recovery", {"email": "Me@Personal.Example",
                                                        "current_password": PASSWORD})
    assert response.status_code == 302
    assert recovery_address_of(db.session, user.id) == "me@personal.example"
    assert b"me@personal.example" in client.get("/settings/recovery").data
    post_form(client, "/settings/recovery", {"email": "", "current_password": PASSWORD})
    assert recovery_address_of(db.session, user.id) == ""


@pytest.mark.parametrize("value, message", [
    ("not an address", b"not a valid email"),
    (None, b"outside the hosted mailbox"),
])
def test_bad_addresses_are_refused_and_keep_the_old_one(client, user, login_as, value, message):
    login_as(user)
    post_form(client, "/settings/recovery", {"email": "kept@personal.example",
                                             "current_password": PASSWORD})
    response = post_form(client, "/settings/recovery", {"email": value or user.email,
                                                        "current_password": PASSWORD})
    assert response.status_code == 200 and message in response.data
    db.session.expire_all()
    assert recovery_address_of(db.session, user.id) == "kept@personal.example"


def test_changing_it_needs_the_password_and_is_audited(client, user, login_as):
    """Review finding: anyone holding a session could point password resets at themselves."""
    from sqlalchemy import select

    from webapp.models import AuditEvent

    login_as(user)
    response = post_form(client, "/settings/recovery", {"email": "thief@evil.example",
                                                        "current_password": "guessing wrong"})
    assert response.status_code == 200 and b"not your current password" in response.data
    assert recovery_address_of(db.session, user.id) == ""
    post_form(client, "/settings/recovery", {"email": "me@personal.example",
                                             "current_password": PASSWORD})
    event = db.session.scalar(select(AuditEvent).where(AuditEvent.action == "recovery.changed"))
    assert event is not None and "me@personal.example" in event.detail
