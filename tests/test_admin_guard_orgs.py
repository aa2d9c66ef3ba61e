"""Every admin.* endpoint with an id answers 404 to another organization's admin (issue 8).

The walk builds each URL with real ids of organization A, calls it with every method as
organization B's admin, and then checks that A's rows are untouched; A's own admin reaching
the same GET pages proves the ids are real. An endpoint whose argument has no maker below
fails the walk: add one when you add such an endpoint.
"""
from __future__ import annotations

from typing import Callable

import pytest
from sqlalchemy import select

from tests.factories import make_org, make_user
from webapp.extensions import db
from webapp.models import Domain, IpRule, User


def _make_user(org, state):
    user = make_user(org)
    state["user"] = user.id
    return user.id


def _make_domain(org, state):
    domain = Domain(org_id=org.id, name=f"extra{org.id}.example", is_primary=False)
    db.session.add(domain)
    db.session.commit()
    state["domain"] = domain.id
    return domain.id


def _make_rule(org, state):
    rule = IpRule(org_id=org.id, network="0.0.0.0/0", note="everyone")
    db.session.add(rule)
    db.session.commit()
    state["rule"] = rule.id
    return rule.id


def _make_failed_job(org, state):
    from rq import SimpleWorker

    from webapp.queue import get_queue, get_redis

    queue = get_queue("default")
    job = queue.enqueue("math.sqrt", -1, meta={"org_id": org.id})
    SimpleWorker([queue], connection=get_redis()).work(burst=True)
    state["job"] = job.id
    return job.id


def _make_pop_account(org, state):
    from flask import current_app

    from webapp.services.pop_accounts import create_pop_account

    owner = make_user(org)
    account = create_pop_account(db.session, owner, email=f"pop{org.id}@mail.example",
                                 host="pop.mail.example", port=995, security="ssl",
                                 username="someone", password="secret password",
                                 secret_keys=current_app.config["MAIL_SECRET_KEYS"])
    db.session.commit()
    state["pop"] = account.id
    return account.id


ID_MAKERS: dict[str, Callable] = {
    "user_id": _make_user,
    "domain_id": _make_domain,
    "rule_id": _make_rule,
    "job_id": _make_failed_job,
    "pop_id": _make_pop_account,
}


def _a_rows_untouched(org, state):
    """Nothing B did reached A's rows."""
    from webapp.queue import get_queue

    db.session.expire_all()
    if "user" in state:
        user = db.session.get(User, state["user"])
        assert user is not None and not user.is_disabled and not user.is_admin
    if "domain" in state:
        assert db.session.get(Domain, state["domain"]) is not None
    if "rule" in state:
        assert db.session.get(IpRule, state["rule"]) is not None
    if "job" in state:
        assert state["job"] in get_queue("default").failed_job_registry
    if "pop" in state:
        from webapp.models.pop import PopAccount

        assert db.session.get(PopAccount, state["pop"]) is not None


def _rules_with_ids(app):
    rules = [r for r in app.url_map.iter_rules()
             if r.endpoint.startswith("admin.") and r.arguments]
    assert rules, "no admin endpoint takes an id"
    missing = sorted({arg for r in rules for arg in r.arguments} - set(ID_MAKERS))
    if missing:
        pytest.fail(f"no id maker for {missing}: add one to ID_MAKERS in {__name__}")
    return rules


def test_another_organizations_admin_gets_404_for_every_id(app, org, admin_user, login_as,
                                                           client):
    org_b = make_org()
    admin_b = db.session.scalar(select(User).where(User.org_id == org_b.id, User.is_admin))
    rules = _rules_with_ids(app)
    state: dict = {}
    ids = {arg: maker(org, state) for arg, maker in ID_MAKERS.items()
           if any(arg in r.arguments for r in rules)}
    adapter = app.url_map.bind("localhost")
    urls = [(method, adapter.build(r.endpoint, {a: ids[a] for a in r.arguments}))
            for r in rules for method in sorted(r.methods - {"HEAD", "OPTIONS"})]

    app.config["WTF_CSRF_ENABLED"] = False  # reach the views themselves, not the CSRF check
    login_as(admin_b)
    for method, url in urls:
        response = client.open(url, method=method, data={
            "confirm_email": "x", "crm_records": "delete", "method": "password",
            "quota_gb": "1", "display_name": "taken over", "is_admin": "y"})
        assert response.status_code == 404, (method, url, response.status_code)
    _a_rows_untouched(org, state)

    login_as(admin_user)
    reached = [url for method, url in urls if method == "GET"]
    for url in reached:
        assert client.get(url).status_code in (200, 302), url
