"""Small factories with keyword overrides; they go through the same services as the app."""
from __future__ import annotations

import itertools

from sqlalchemy import select

from webapp.extensions import db
from webapp.models import Domain
from webapp.services.directory import create_organization, create_user

PASSWORD = "correct horse battery"
_seq = itertools.count(1)


def make_org(name: str | None = None, domain: str | None = None,
             admin_email: str | None = None, admin_password: str = PASSWORD):
    """An organization with one domain and its admin, committed."""
    n = next(_seq)
    if domain is None:
        taken = db.session.scalar(select(Domain).where(Domain.name == "acme.example"))
        domain = f"org{n}.example" if taken else "acme.example"
    org, _admin = create_organization(db.session, name=name or f"Org {n}", domain=domain,
                                      admin_email=admin_email or f"admin@{domain}",
                                      admin_password=admin_password)
    db.session.commit()
    return org


def make_user(org, email: str | None = None, password: str = PASSWORD, **kwargs):
    """A user of the organization (hosted account and folders included), committed."""
    domain = org.primary_domain.name
    user = create_user(db.session, org, email=email or f"user{next(_seq)}@{domain}",
                       password=password, **kwargs)
    db.session.commit()
    return user
