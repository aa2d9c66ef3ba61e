"""Every route needs a login, except the few that must work without one (listed here)."""
from __future__ import annotations

import re

# Reachable anonymously on purpose: logging in, password links, liveness, static files, and
# inline images inside the sandboxed mail frame (which sends no cookie; a signed token
# names the owner and the message).
PUBLIC = {"auth.login", "auth.forgot_password", "auth.reset_password", "main.healthz",
          "static", "mail.message_cid"}


def test_every_other_route_sends_anonymous_visitors_to_login(app, client):
    app.config["WTF_CSRF_ENABLED"] = False  # reach the login check on POST routes too
    checked = 0
    for rule in app.url_map.iter_rules():
        if rule.endpoint in PUBLIC or rule.endpoint.startswith("admin."):
            continue  # admin.* is walked by test_admin_guard (404 for everyone else)
        url = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", "1", rule.rule)
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            response = client.open(url, method=method)
            assert response.status_code in (302, 401), (rule.endpoint, method, response.status_code)
            if response.status_code == 302:
                assert response.headers["Location"].startswith("/login"), rule.endpoint
            checked += 1
    assert checked > 40


def test_the_public_list_is_real(app):
    endpoints = {rule.endpoint for rule in app.url_map.iter_rules()}
    assert PUBLIC <= endpoints
