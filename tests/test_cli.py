"""Operator commands: happy paths print the new id last; bad input exits non-zero, writes nothing."""
from __future__ import annotations

import pytest
from sqlalchemy import func, select

from tests.factories import PASSWORD
from webapp.extensions import db
from webapp.models import Domain, Folder, MailAccount, Organization, User


def counts():
    return tuple(db.session.scalar(select(func.count()).select_from(m))
                 for m in (Organization, Domain, User, MailAccount, Folder))


def test_org_create_prints_id_last(runner):
    result = runner.invoke(args=["org", "create", "--name", "Acme", "--domain", "Acme.Example",
                                 "--admin-email", "Boss@acme.example", "--admin-password", PASSWORD])
    assert result.exit_code == 0, result.output
    org_id = int(result.output.strip().splitlines()[-1])
    org = db.session.get(Organization, org_id)
    assert org.domains[0].name == "acme.example"
    admin = db.session.scalar(select(User).where(User.org_id == org_id))
    assert admin.is_admin and admin.email == "boss@acme.example"
    account = db.session.scalar(select(MailAccount).where(MailAccount.user_id == admin.id))
    assert account.kind == "hosted" and account.email == "boss@acme.example"
    roles = set(db.session.scalars(select(Folder.role).where(Folder.user_id == admin.id)))
    assert roles == {"inbox", "drafts", "sent", "spam", "trash"}


def test_user_create_prints_id_last(runner, org):
    result = runner.invoke(args=["user", "create", "--org", "acme.example", "--email",
                                 "sam@acme.example", "--password", PASSWORD, "--admin"])
    assert result.exit_code == 0, result.output
    user = db.session.get(User, int(result.output.strip().splitlines()[-1]))
    assert user.email == "sam@acme.example" and user.is_admin and user.org_id == org.id


@pytest.mark.parametrize("args, message", [
    (["--org", "acme.example", "--email", "admin@acme.example", "--password", PASSWORD],
     "already exists"),
    (["--org", "nowhere.example", "--email", "x@nowhere.example", "--password", PASSWORD],
     "No organization hosts"),
    (["--org", "acme.example", "--email", "not-an-address", "--password", PASSWORD],
     "not a valid email"),
    (["--org", "acme.example", "--email", "x@other.example", "--password", PASSWORD],
     "not on a domain"),
    (["--org", "acme.example", "--email", "x@acme.example", "--password", "short"],
     "at least 10"),
    (["--org", "acme.example", "--email", "x@acme.example", "--password", "password123"],
     "too common"),
    (["--org", "bad domain", "--email", "x@acme.example", "--password", PASSWORD],
     "not a valid domain"),
])
def test_user_create_bad_input(runner, org, args, message):
    before = counts()
    result = runner.invoke(args=["user", "create", *args])
    assert result.exit_code != 0
    assert message in result.output
    db.session.rollback()
    assert counts() == before


@pytest.mark.parametrize("args, message", [
    (["--name", "X", "--domain", "acme.example", "--admin-email", "a@acme.example"],
     "already hosted"),
    (["--name", "X", "--domain", "no_tld", "--admin-email", "a@no_tld"], "not a valid domain"),
    (["--name", "X", "--domain", "x.example", "--admin-email", "a@elsewhere.example"],
     "not on a domain"),
    (["--name", " ", "--domain", "x.example", "--admin-email", "a@x.example"], "needs a name"),
])
def test_org_create_bad_input(runner, org, args, message):
    before = counts()
    result = runner.invoke(args=["org", "create", *args, "--admin-password", PASSWORD])
    assert result.exit_code != 0 and message in result.output
    db.session.rollback()
    assert counts() == before


def test_org_create_weak_password_writes_nothing(runner, app):
    before = counts()
    result = runner.invoke(args=["org", "create", "--name", "X", "--domain", "x.example",
                                 "--admin-email", "a@x.example", "--admin-password", "aaaaaaaaaaaa"])
    assert result.exit_code != 0 and "different characters" in result.output
    db.session.rollback()
    assert counts() == before


def test_missing_option_is_an_error(runner, app):
    result = runner.invoke(args=["org", "create", "--name", "X"])
    assert result.exit_code != 0 and "Missing option" in result.output
