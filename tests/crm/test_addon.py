"""Add-on accounts: the hosted account by default, only one's own accounts may be chosen."""
from __future__ import annotations

import pytest

from tests import factories
from webapp.extensions import db
from webapp.models import MailAccount
from webapp.services.addon import AddonError, get_addon_account, set_addon_account


def _pop_account(user, email="me@pop.example"):
    account = MailAccount(org_id=user.org_id, user_id=user.id, kind="pop", email=email)
    db.session.add(account)
    db.session.commit()
    return account


def test_default_is_the_hosted_account(user):
    account = get_addon_account(db.session, user.id, "crm")
    assert account.kind == "hosted" and account.email == user.email


def test_choice_is_per_service(user):
    pop = _pop_account(user)
    set_addon_account(db.session, user.id, "crm", pop.id)
    db.session.commit()
    assert get_addon_account(db.session, user.id, "crm").id == pop.id
    assert get_addon_account(db.session, user.id, "recruit").kind == "hosted"
    hosted = get_addon_account(db.session, user.id, "recruit")
    set_addon_account(db.session, user.id, "crm", hosted.id)  # changing it again updates the row
    db.session.commit()
    assert get_addon_account(db.session, user.id, "crm").id == hosted.id


def test_deleting_the_chosen_account_falls_back_to_hosted(user):
    pop = _pop_account(user)
    set_addon_account(db.session, user.id, "crm", pop.id)
    db.session.commit()
    db.session.delete(pop)
    db.session.commit()
    assert get_addon_account(db.session, user.id, "crm").kind == "hosted"


def test_another_users_account_is_refused(org, user):
    other = factories.make_user(org)
    for service in ("crm", "recruit"):
        theirs = get_addon_account(db.session, other.id, service)
        with pytest.raises(AddonError):
            set_addon_account(db.session, user.id, service, theirs.id)
    assert get_addon_account(db.session, user.id, "crm").user_id == user.id


def test_unknown_service_is_refused(user):
    with pytest.raises(AddonError):
        get_addon_account(db.session, user.id, "billing")
