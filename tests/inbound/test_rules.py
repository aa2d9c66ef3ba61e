"""The listener's plain rules: source keys, combined replies, loopback, recipient lookup."""
from __future__ import annotations

import pytest

from tests.factories import make_org, make_user
from webapp.extensions import db
from webapp.services import inbound as rules


def test_source_key_is_stable_per_bytes_and_mailbox():
    key = rules.delivery_source_key("ab" * 32, "User@Acme.example")
    assert key == rules.delivery_source_key("ab" * 32, "user@acme.example")
    assert key != rules.delivery_source_key("cd" * 32, "user@acme.example")
    assert key != rules.delivery_source_key("ab" * 32, "other@acme.example")
    assert len(key) <= 255


@pytest.mark.parametrize("replies, expected", [
    (["250 2.0.0 delivered"], "250 2.0.0 delivered"),
    (["250 2.0.0 delivered", "250 2.0.0 delivered"], "250 2.0.0 delivered"),
    (["452 4.2.2 mailbox full"], "452 4.2.2 mailbox full"),
    (["250 2.0.0 delivered", "452 4.2.2 mailbox full"], "452 4.2.2 mailbox full"),
    (["250 2.0.0 delivered", "451 4.3.0 x"], rules.REPLY_TEMPORARY),
    (["452 4.2.2 mailbox full", "451 4.3.0 x"], rules.REPLY_TEMPORARY),
    # A mailbox disabled between RCPT and DATA: retry, and the retry's RCPT refuses it.
    (["250 2.0.0 delivered", rules.REPLY_UNKNOWN_MAILBOX], rules.REPLY_TEMPORARY),
    ([rules.REPLY_TOO_BIG, rules.REPLY_TOO_BIG], rules.REPLY_TOO_BIG),
])
def test_one_smtp_reply_for_several_recipients(replies, expected):
    assert rules.combine_smtp_replies(replies) == expected


@pytest.mark.parametrize("ip, loopback", [
    ("127.0.0.1", True), ("127.8.9.10", True), ("::1", True), ("::ffff:127.0.0.1", True),
    ("192.0.2.2", False), ("::ffff:10.1.2.3", False), ("fe80::1%eth0", False), ("", False),
    ("not an ip", False),
])
def test_loopback_detection(ip, loopback):
    assert rules.is_loopback(ip) is loopback


def test_recipient_must_belong_to_the_domains_own_organization(app, org):
    other = make_org(domain="other.example")
    make_user(other, email="pat@other.example")
    check = rules.check_recipient(db.session, "pat@acme.example")
    assert check.reply == rules.REPLY_UNKNOWN_MAILBOX
    check = rules.check_recipient(db.session, "PAT@Other.Example.")
    assert check.accepted and check.address == "pat@other.example"


def test_postmaster_reaches_the_first_admin_unless_someone_has_the_address(app, org, admin_user):
    check = rules.check_recipient(db.session, "PostMaster@acme.example")
    assert check.accepted and check.address == admin_user.email
    postmaster = make_user(org, email="postmaster@acme.example")
    check = rules.check_recipient(db.session, "postmaster@acme.example")
    assert check.accepted and check.address == postmaster.email


def test_reply_text_is_one_ascii_line():
    assert rules.reply_text("Grüße\r\n550 injected\tline") == "Gr??e 550 injected line"


@pytest.mark.parametrize("networks, ip, accepted", [
    ([], "203.0.113.9", True),
    (["10.0.0.0/8"], "203.0.113.9", False),
    (["10.0.0.0/8"], "10.1.2.3", True),
    (["10.0.0.0/8"], "::ffff:10.1.2.3", True),
    (["10.0.0.0/8"], "127.0.0.1", False),
])
def test_submission_login_obeys_the_org_ip_allowlist(app, org, networks, ip, accepted):
    """Defect: authenticate_submitter ignored the organization's IP restriction."""
    from tests.factories import PASSWORD
    from webapp.models import IpRule
    from webapp.queue import get_redis

    user = make_user(org, "ip@acme.example")
    db.session.add_all([IpRule(org_id=org.id, network=n) for n in networks])
    db.session.commit()
    check = rules.authenticate_submitter(db.session, get_redis(app),
                                         rules.throttle_limits(app.config),
                                         user.email, PASSWORD, ip)
    assert check.accepted is accepted
    assert check.reply == (rules.REPLY_AUTH_OK if accepted else rules.REPLY_AUTH_FAILED)
