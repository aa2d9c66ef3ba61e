"""The base UI: navigation, error pages in the app's look, security headers, offline assets."""
from __future__ import annotations

import re

import pytest


def test_nav_links_all_work(client, user, login_as):
    login_as(user)
    page = client.get("/settings/").data.decode()
    for path in ("/mail/", "/crm/", "/recruit/", "/contacts/", "/settings/"):
        assert f'href="{path}"' in page
        assert client.get(path).status_code == 200, path


def test_404_page_in_app_look(client):
    response = client.get("/no/such/page")
    assert response.status_code == 404
    assert b"Not found" in response.data and b"app.css" in response.data


def test_security_headers(client):
    response = client.get("/login")
    csp = response.headers["Content-Security-Policy"]
    assert "default-src 'self'" in csp and "object-src 'none'" in csp
    assert response.headers["X-Content-Type-Options"] == "nosniff"


def test_no_external_assets(client, user, login_as):
    login_as(user)
    html = client.get("/settings/").data.decode()
    for src in re.findall(r'(?:src|href)="([^"]+)"', html):
        assert not src.startswith(("http:", "https:", "//")), src
    with client.get("/static/app.css") as response:  # file responses must be closed
        assert response.status_code == 200


def test_every_form_carries_a_csrf_token(client, user, login_as):
    login_as(user)
    for path in ("/settings/password", "/settings/"):
        html = client.get(path).data.decode()
        for form in re.findall(r"<form[^>]*method=\"post\".*?</form>", html, re.S):
            assert 'name="csrf_token"' in form
