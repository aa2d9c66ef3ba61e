"""Every admin.* endpoint refuses anonymous users, ordinary users and other orgs' admins."""
from __future__ import annotations

import re

import pytest

from tests.factories import make_org, make_user


def admin_urls(app):
    """Every admin URL with each argument filled by a plausible id."""
    urls = []
    for rule in app.url_map.iter_rules():
        if not rule.endpoint.startswith("admin."):
            continue
        url = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", "1", rule.rule)
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            urls.append((method, url))
    assert urls, "no admin endpoints found"
    return urls


def _check_refused(app, client):
    app.config["WTF_CSRF_ENABLED"] = False  # reach the guard even for POST routes
    for method, url in admin_urls(app):
        response = client.open(url, method=method)
        assert response.status_code == 404, (method, url, response.status_code)


def test_anonymous_gets_404(app, client, org):
    _check_refused(app, client)


def test_ordinary_user_gets_404(app, client, org, login_as):
    login_as(make_user(org))
    _check_refused(app, client)


def test_admin_reaches_the_panel(client, admin_user, login_as):
    login_as(admin_user)
    response = client.get("/admin/")
    assert response.status_code == 200 and b"control panel" in response.data


def test_admin_link_only_for_admins(client, org, admin_user, login_as):
    login_as(make_user(org))
    assert b'href="/admin/"' not in client.get("/settings/").data
    login_as(admin_user)
    assert b'href="/admin/"' in client.get("/settings/").data
