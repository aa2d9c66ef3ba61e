"""IP restriction: strict networks, login and every request, proxies, IPv4-mapped, lock-out (issue 8)."""
from __future__ import annotations

import pytest
from sqlalchemy import select

from tests.admin.helpers import audit_actions, login
from tests.conftest import FreshContextClient, csrf_from, post_form
from tests.factories import PASSWORD, make_org, make_user
from webapp.auth.views import LOGIN_FAILED
from webapp.extensions import db
from webapp.models import AuditEvent, IpRule
from webapp.services import ipfilter

OFFICE = "203.0.113.0/24"


def _allow(org, *networks):
    for network in networks:
        db.session.add(IpRule(org_id=org.id, network=network))
    db.session.commit()


@pytest.mark.parametrize("typed, expected", [
    ("192.0.2.0/24", "192.0.2.0/24"),
    (" 10.0.0.0/8 ", "10.0.0.0/8"),
    ("203.0.113.7", "203.0.113.7/32"),
    ("2001:DB8::/32", "2001:db8::/32"),
    ("2001:db8::1", "2001:db8::1/128"),
])
def test_valid_networks(typed, expected):
    assert str(ipfilter.parse_network(typed)) == expected


@pytest.mark.parametrize("typed, message", [
    ("192.0.2.1/24", "the network containing it is 192.0.2.0/24"),
    ("2001:db8::1/32", "the network containing it is 2001:db8::/32"),
    ("10.0.0.0/33", "is not an IPv4 or IPv6 network"),
    ("300.1.1.1", "is not an IPv4 or IPv6 network"),
    ("example.com", "is not an IPv4 or IPv6 network"),
    ("::ffff:10.0.0.0/104", "enter 10.0.0.0/8 instead"),
    ("", "Enter a network"),
])
def test_invalid_networks_say_what_to_type(typed, message):
    with pytest.raises(ipfilter.IpRuleError, match=message.replace(".", r"\.")):
        ipfilter.parse_network(typed)


def test_parse_rules_reports_every_bad_line_and_keeps_notes():
    with pytest.raises(ipfilter.IpRuleError) as caught:
        ipfilter.parse_rules("192.0.2.0/24\nbad\n10.1.1.1/8")
    assert "Line 2" in str(caught.value) and "Line 3" in str(caught.value)
    rules = ipfilter.parse_rules("192.0.2.0/24 # office\n\n192.0.2.0/24\n2001:db8::/32")
    assert rules == [ipfilter.RuleLine("192.0.2.0/24", "office"),
                     ipfilter.RuleLine("2001:db8::/32", "")]


@pytest.mark.parametrize("address, allowed", [
    ("203.0.113.9", True),
    ("::ffff:203.0.113.9", True),     # IPv4-mapped: what a dual-stack socket reports
    ("::ffff:198.51.100.1", False),
    ("2001:db8:5::1", True),
    ("2001:db9::1", False),
    ("198.51.100.1", False),
    ("", False),
    ("garbage", False),
])
def test_address_matching(address, allowed):
    assert ipfilter.address_allowed(address, [OFFICE, "2001:db8::/32"]) is allowed


def test_empty_list_allows_everyone():
    assert ipfilter.address_allowed("198.51.100.1", [])


# --- login -------------------------------------------------------------------------------------

def test_login_from_outside_is_refused_before_the_password_is_checked(app, client, org, user):
    _allow(org, OFFICE)
    refused = login(client, user.email, PASSWORD, ip="198.51.100.1")
    assert refused.status_code == 200 and LOGIN_FAILED.encode() in refused.data
    assert client.get("/settings/").status_code == 302
    wrong = login(app.test_client(), user.email, "a wrong password", ip="198.51.100.1")
    assert wrong.data.count(LOGIN_FAILED.encode()) == refused.data.count(LOGIN_FAILED.encode())
    events = db.session.scalars(select(AuditEvent).where(
        AuditEvent.action == "ip.refused_login")).all()
    assert [(e.target, e.ip) for e in events] == [(user.email, "198.51.100.1")]
    # No "login.failed" row: the password was never looked at.
    assert "login.failed" not in audit_actions(org.id)
    assert login(app.test_client(), user.email, PASSWORD, ip="203.0.113.20").status_code == 302


def test_other_organizations_are_not_restricted(app, org):
    _allow(org, OFFICE)
    other = make_org()
    stranger = make_user(other)
    assert login(app.test_client(), stranger.email, PASSWORD, ip="198.51.100.1").status_code == 302


@pytest.mark.parametrize("remote, allowed", [
    ("::ffff:203.0.113.9", True),
    ("::ffff:198.51.100.1", False),
    ("2001:db8::77", True),
    ("2001:db9::77", False),
])
def test_login_matches_mapped_and_ipv6_client_addresses(app, org, user, remote, allowed):
    _allow(org, OFFICE, "2001:db8::/48")
    response = login(app.test_client(), user.email, PASSWORD, ip=remote)
    assert (response.status_code == 302) is allowed


# --- every request -----------------------------------------------------------------------------

def test_every_request_from_outside_gets_403_and_ends_the_session(app, org, user):
    browser = app.test_client()
    assert login(browser, user.email, PASSWORD, ip="203.0.113.5").status_code == 302
    _allow(org, OFFICE)
    inside = {"REMOTE_ADDR": "203.0.113.5"}
    outside = {"REMOTE_ADDR": "198.51.100.1"}
    assert browser.get("/settings/", environ_base=inside).status_code == 200
    response = browser.get("/settings/", environ_base=outside,
                           headers={"Accept": "application/json", "X-Requested-With": "fetch"})
    assert response.status_code == 403 and b"certain networks" in response.data
    # The session is over, even back inside the allowed network.
    assert browser.get("/settings/", environ_base=inside).status_code == 302
    assert "ip.refused_request" in audit_actions(org.id)


@pytest.mark.parametrize("path", ["/mail/", "/settings/", "/admin/", "/crm/"])
def test_every_kind_of_page_is_covered(app, org, admin_user, login_as, client, path):
    _allow(org, OFFICE)
    login_as(admin_user)
    assert client.get(path, environ_base={"REMOTE_ADDR": "198.51.100.1"}).status_code == 403


def test_refusal_audit_rows_are_rate_limited(app, org, user):
    _allow(org, OFFICE)
    for _ in range(5):
        login(app.test_client(), user.email, PASSWORD, ip="198.51.100.1")
    login(app.test_client(), user.email, PASSWORD, ip="198.51.100.2")
    rows = db.session.scalars(select(AuditEvent.ip).where(
        AuditEvent.action == "ip.refused_login")).all()
    assert sorted(rows) == ["198.51.100.1", "198.51.100.2"]


# --- proxies -----------------------------------------------------------------------------------

def test_spoofed_forwarded_for_without_trusted_proxy_has_no_effect(app, org, user):
    _allow(org, OFFICE)
    spoof = {"X-Forwarded-For": "203.0.113.9"}
    refused = login(app.test_client(), user.email, PASSWORD, ip="198.51.100.1", headers=spoof)
    assert refused.status_code == 200 and LOGIN_FAILED.encode() in refused.data


@pytest.fixture
def proxied_app(app, run_dir, test_environ):
    """The app as deployed behind one reverse proxy (TRUSTED_PROXIES=1)."""
    from webapp import create_app

    proxied = create_app({"INSTANCE_PATH": str(run_dir / "instance")},
                         environ={**test_environ, "TRUSTED_PROXIES": "1"})
    proxied.test_client_class = FreshContextClient
    yield proxied
    with proxied.app_context():
        db.engine.dispose()  # its own engine: close its pooled connections now


@pytest.mark.parametrize("forwarded, allowed", [
    ("203.0.113.9", True),                   # the proxy saw the office
    ("198.51.100.1", False),                 # the proxy saw an outsider
    ("203.0.113.9, 198.51.100.1", False),    # the client prepended a made-up office address
    ("198.51.100.1, 203.0.113.9", True),     # only the hop the proxy added counts
])
def test_one_trusted_proxy(proxied_app, org, user, forwarded, allowed):
    _allow(org, OFFICE)
    client = proxied_app.test_client()
    response = login(client, user.email, PASSWORD, ip="10.0.0.2",
                     headers={"X-Forwarded-For": forwarded})
    assert (response.status_code == 302) is allowed


# --- the admin page ----------------------------------------------------------------------------

def _save(client, text, ip):
    page = client.get("/admin/ip-rules", environ_base={"REMOTE_ADDR": ip})
    return client.post("/admin/ip-rules", data={"rules": text, "csrf_token": csrf_from(page)},
                       environ_base={"REMOTE_ADDR": ip})


def test_admin_saves_a_list_containing_their_address(client, org, admin_user, login_as):
    login_as(admin_user)
    response = _save(client, f"{OFFICE}  # office\n2001:db8::/32", "203.0.113.4")
    assert response.status_code == 302
    assert [(r.network, r.note) for r in db.session.scalars(select(IpRule))] == [
        (OFFICE, "office"), ("2001:db8::/32", "")]
    assert audit_actions(org.id)[-1] == "iprules.saved"


@pytest.mark.parametrize("ip", ["198.51.100.1", "::ffff:198.51.100.1", "2001:db9::1"])
def test_a_list_that_would_lock_out_the_admin_is_refused(client, org, admin_user, login_as, ip):
    login_as(admin_user)
    response = _save(client, f"{OFFICE}\n2001:db8::/32", ip)
    assert response.status_code == 200 and b"would lock you out" in response.data
    assert db.session.scalars(select(IpRule)).all() == []


def test_mapped_address_of_the_admin_counts_as_ipv4(client, org, admin_user, login_as):
    login_as(admin_user)
    assert _save(client, OFFICE, "::ffff:203.0.113.4").status_code == 302


def test_bad_lines_are_refused_with_a_suggestion_and_nothing_saved(client, org, admin_user,
                                                                   login_as):
    _allow(org, "0.0.0.0/0")
    login_as(admin_user)
    response = _save(client, "203.0.113.4/24", "203.0.113.4")
    assert response.status_code == 200 and b"203.0.113.0/24" in response.data
    assert [r.network for r in db.session.scalars(select(IpRule))] == ["0.0.0.0/0"]


def test_removing_the_network_that_lets_the_admin_in_is_refused(client, org, admin_user,
                                                                login_as):
    _allow(org, OFFICE, "198.51.100.0/24")
    login_as(admin_user)
    office = db.session.scalar(select(IpRule).where(IpRule.network == OFFICE))
    other = db.session.scalar(select(IpRule).where(IpRule.network != OFFICE))
    inside = {"REMOTE_ADDR": "203.0.113.4"}
    token = csrf_from(client.get("/admin/ip-rules", environ_base=inside))
    client.post(f"/admin/ip-rules/{office.id}/delete", data={"csrf_token": token},
                environ_base=inside)
    client.post(f"/admin/ip-rules/{other.id}/delete", data={"csrf_token": token},
                environ_base=inside)
    assert [r.network for r in db.session.scalars(select(IpRule))] == [OFFICE]
    assert audit_actions(org.id)[-1] == "iprules.deleted"


def test_emptying_the_list_lifts_the_restriction(client, org, admin_user, login_as):
    _allow(org, OFFICE)
    login_as(admin_user)
    assert _save(client, "", "203.0.113.4").status_code == 302
    assert db.session.scalars(select(IpRule)).all() == []
