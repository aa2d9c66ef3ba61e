"""Settings » Recovery address: a user sets, changes and clears their own."""
from __future__ import annotations

import pytest

from tests.conftest import post_form
from webapp.extensions import db
from webapp.services.accounts_admin import recovery_address_of


def test_set_and_clear(client, user, login_as):
    login_as(user)
    response = post_form(client, "/settings/recovery", {"email": "Me@Personal.Example"})
    assert response.status_code == 302
    assert recovery_address_of(db.session, user.id) == "me@personal.example"
    assert b"me@personal.example" in client.get("/settings/recovery").data
    post_form(client, "/settings/recovery", {"email": ""})
    assert recovery_address_of(db.session, user.id) == ""


@pytest.mark.parametrize("value, message", [
    ("not an address", b"not a valid email"),
    (None, b"outside the hosted mailbox"),
])
def test_bad_addresses_are_refused_and_keep_the_old_one(client, user, login_as, value, message):
    login_as(user)
    post_form(client, "/settings/recovery", {"email": "kept@personal.example"})
    response = post_form(client, "/settings/recovery", {"email": value or user.email})
    assert response.status_code == 200 and message in response.data
    db.session.expire_all()
    assert recovery_address_of(db.session, user.id) == "kept@personal.example"
