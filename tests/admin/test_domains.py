"""Admin » Domains: add (validated, unique everywhere), primary, delete rules, DNS records (issue 8)."""
from __future__ import annotations

import pytest
from sqlalchemy import select

from tests.admin.helpers import audit_actions
from tests.conftest import post_form
from tests.factories import make_org, make_user
from webapp.extensions import db
from webapp.models import Domain


def _names(org):
    db.session.expire_all()
    return sorted(d.name for d in db.session.scalars(select(Domain).where(Domain.org_id == org.id)))


def test_add_a_domain_and_see_its_dns_records(client, org, admin_user, login_as):
    login_as(admin_user)
    response = post_form(client, "/admin/domains", {"name": " Example.NET. "})
    assert response.status_code == 302
    assert _names(org) == ["acme.example", "example.net"]
    page = client.get("/admin/domains").data
    assert b"10 mail.acme.example." in page          # MX host from the primary domain
    assert b"v=spf1 mx -all" in page
    assert b"DKIM: signing is not configured" in page
    assert audit_actions(org.id)[-1] == "domain.added"


def test_mx_host_and_spf_include_come_from_config(app, client, org, admin_user, login_as):
    app.config.update(MAIL_MX_HOST="mx.hosting.example", MAIL_SPF_INCLUDE="spf.relay.example")
    login_as(admin_user)
    page = client.get("/admin/domains").data
    assert b"10 mx.hosting.example." in page and b"v=spf1 mx include:spf.relay.example -all" in page


@pytest.mark.parametrize("name, message", [
    ("not a domain", b"not a valid domain"),
    ("localhost", b"not a valid domain"),
    ("acme.example", b"already hosted here"),
    ("someone@acme.example", b"not a valid domain"),
])
def test_bad_or_taken_domains_are_refused(client, org, admin_user, login_as, name, message):
    login_as(admin_user)
    response = post_form(client, "/admin/domains", {"name": name})
    assert response.status_code == 200 and message in response.data
    assert _names(org) == ["acme.example"]


def test_a_domain_of_another_organization_is_refused(client, org, admin_user, login_as):
    make_org(domain="taken.example")
    login_as(admin_user)
    response = post_form(client, "/admin/domains", {"name": "taken.example"})
    assert b"already hosted here" in response.data and _names(org) == ["acme.example"]


def test_set_primary_then_delete_the_unused_one(client, org, admin_user, login_as):
    login_as(admin_user)
    post_form(client, "/admin/domains", {"name": "second.example"})
    second = db.session.scalar(select(Domain).where(Domain.name == "second.example"))
    first = db.session.scalar(select(Domain).where(Domain.name == "acme.example"))
    post_form(client, f"/admin/domains/{second.id}/primary", {}, page="/admin/domains")
    db.session.expire_all()
    assert second.is_primary and not first.is_primary
    # acme.example still carries the admin's address: it stays.
    response = post_form(client, f"/admin/domains/{first.id}/delete", {}, page="/admin/domains",
                         follow_redirects=True)
    assert b"still carries" in response.data and "acme.example" in _names(org)
    # The primary domain cannot go either.
    response = post_form(client, f"/admin/domains/{second.id}/delete", {},
                         page="/admin/domains", follow_redirects=True)
    assert b"Make another domain primary" in response.data
    post_form(client, f"/admin/domains/{first.id}/primary", {}, page="/admin/domains")
    post_form(client, f"/admin/domains/{second.id}/delete", {}, page="/admin/domains")
    assert _names(org) == ["acme.example"]
    assert audit_actions(org.id)[-3:] == ["domain.primary", "domain.primary", "domain.deleted"]


def test_a_domain_with_user_addresses_cannot_be_deleted(client, org, admin_user, login_as):
    login_as(admin_user)
    post_form(client, "/admin/domains", {"name": "second.example"})
    make_user(org, email="someone@second.example")
    second = db.session.scalar(select(Domain).where(Domain.name == "second.example"))
    post_form(client, f"/admin/domains/{second.id}/delete", {}, page="/admin/domains")
    assert "second.example" in _names(org)
