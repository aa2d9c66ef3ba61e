"""Admin » Quotas: default, validated overrides, and the server-drawn SVG chart (issue 8)."""
from __future__ import annotations

import re

import pytest

from tests.admin.helpers import audit_actions
from tests.conftest import post_form
from tests.factories import make_user
from webapp.extensions import db

GIB = 1024**3


def test_chart_is_inline_svg_without_style_attributes(client, org, admin_user, user, login_as):
    user.used_bytes = GIB  # a fifth of the 5 GB default
    db.session.commit()
    login_as(admin_user)
    page = client.get("/admin/quotas")
    assert page.status_code == 200
    svg = re.search(rb"<svg class=\"usage-chart\".*?</svg>", page.data, re.S)
    assert svg, "the chart must be drawn server-side as inline SVG"
    chart = svg.group(0)
    assert b"style=" not in chart and b"<script" not in chart
    assert b'role="img"' in chart
    assert f"<title>{user.email}: 1.0 GB of 5.0 GB (20%)</title>".encode() in chart
    bar = int(re.search(rb'<rect x="240" y="\d+" width="(\d+)"[^>]*fill="#2e5bda"', chart).group(1))
    assert bar == 84  # 20% of the 420-unit bar
    assert b"5.0 GB" in page.data


def test_nearly_full_mailbox_is_drawn_in_red(client, org, admin_user, user, login_as):
    user.used_bytes = int(4.8 * GIB)
    db.session.commit()
    login_as(admin_user)
    assert b'fill="#c0392b"' in client.get("/admin/quotas").data


def test_override_and_back_to_default(app, client, org, admin_user, user, login_as):
    login_as(admin_user)
    post_form(client, f"/admin/quotas/{user.id}", {"quota_gb": "12.5"}, page="/admin/quotas")
    db.session.refresh(user)
    assert user.quota_bytes == int(12.5 * GIB)
    post_form(client, f"/admin/quotas/{user.id}", {"quota_gb": ""}, page="/admin/quotas")
    db.session.refresh(user)
    assert user.quota_bytes == app.config["MAIL_DEFAULT_QUOTA_BYTES"] == 5 * GIB
    assert audit_actions(org.id)[-2:] == ["quota.set", "quota.set"]


def test_below_current_use_needs_confirmation(client, org, admin_user, user, login_as):
    user.used_bytes = 2 * GIB
    db.session.commit()
    login_as(admin_user)
    response = post_form(client, f"/admin/quotas/{user.id}", {"quota_gb": "1"},
                         page="/admin/quotas", follow_redirects=True)
    assert b"below what the user already stores" in response.data
    db.session.refresh(user)
    assert user.quota_bytes == 5 * GIB
    post_form(client, f"/admin/quotas/{user.id}", {"quota_gb": "1", "allow_below_use": "y"},
              page="/admin/quotas")
    db.session.refresh(user)
    assert user.quota_bytes == GIB


@pytest.mark.parametrize("typed", ["0", "-3", "lots", "200000"])
def test_nonsense_quotas_are_refused(client, org, admin_user, user, login_as, typed):
    login_as(admin_user)
    post_form(client, f"/admin/quotas/{user.id}", {"quota_gb": typed}, page="/admin/quotas")
    db.session.refresh(user)
    assert user.quota_bytes == 5 * GIB

