"""Authenticated submission from hosted users' mail clients (issue 3 item 6)."""
from __future__ import annotations

import smtplib
import socket
import ssl

import pytest
from sqlalchemy import select

from tests.factories import PASSWORD
from webapp.extensions import db
from webapp.models import AuditEvent, Folder, IpRule, Message
from webapp.models.sending import OrgRelay, OutgoingMessage, SendIdentity
from webapp.services import blobs
from worker.inbound import start_listener, stop_listener

RAW = (b"From: Me <{sender}>\r\nTo: Friend <friend@elsewhere.example>\r\n"
       b"Subject: sent from Thunderbird\r\nMessage-ID: <tb-1@acme.example>\r\n"
       b"Date: Mon, 23 Nov 2026 10:00:00 +0000\r\n\r\nHello from a mail client.\r\n"
       b"..dot-stuffed line\r\n")


def raw_from(sender: str) -> bytes:
    return RAW.replace(b"{sender}", sender.encode())


def auth_plain(smtp: smtplib.SMTP, login: str, password: str) -> tuple[int, bytes]:
    """One AUTH PLAIN attempt (smtplib's login() would try every mechanism in turn)."""
    smtp.user, smtp.password = login, password
    try:
        return smtp.auth("PLAIN", smtp.auth_plain)
    except smtplib.SMTPAuthenticationError as error:
        return error.smtp_code, error.smtp_error


def connect(server) -> smtplib.SMTP:
    smtp = smtplib.SMTP(server.host, server.port, timeout=30)
    smtp.ehlo()
    return smtp


def test_auth_over_loopback_queues_the_exact_bytes_in_the_outbox(app, user, listener):
    server = listener("submission")
    raw = raw_from(user.email)
    with connect(server) as smtp:
        assert "auth" in smtp.esmtp_features  # loopback: offered without TLS
        assert auth_plain(smtp, user.email.upper(), PASSWORD)[0] == 235
        recipients = ["friend@elsewhere.example", "bcc@else.example"]
        assert smtp.sendmail(user.email, recipients, raw) == {}
    db.session.expire_all()
    [outgoing] = db.session.scalars(select(OutgoingMessage)
                                    .where(OutgoingMessage.user_id == user.id)).all()
    assert outgoing.kind == "submission" and outgoing.state == "queued" and outgoing.file_in_sent
    assert blobs.get_store(app.config["BLOB_DIR"]).get(outgoing.blob_sha256) == raw
    assert sorted(r.address for r in outgoing.recipients) == ["bcc@else.example",
                                                              "friend@elsewhere.example"]


def test_mail_before_auth_is_refused(app, user, listener):
    server = listener("submission")
    with connect(server) as smtp:
        assert smtp.mail(user.email)[0] == 530


def test_wrong_password_is_535_and_the_throttle_then_blocks_even_the_right_one(app, user, listener):
    server = listener("submission")
    limit = app.config["LOGIN_THROTTLE_PER_ACCOUNT_IP"]
    with connect(server) as smtp:
        for _attempt in range(limit):
            assert auth_plain(smtp, user.email, "wrong password!") == \
                (535, b"5.7.8 authentication credentials invalid")
        code, text = auth_plain(smtp, user.email, PASSWORD)
    assert code == 454 and b"too many failed logins" in text


@pytest.mark.parametrize("login", ["nobody@acme.example", "disabled"])
def test_unknown_or_disabled_users_cannot_authenticate(app, user, listener, login):
    if login == "disabled":
        user.is_disabled = True
        db.session.commit()
        login = user.email
    server = listener("submission")
    with connect(server) as smtp:
        assert auth_plain(smtp, login, PASSWORD)[0] == 535


def test_mail_from_must_be_one_of_the_users_addresses(app, user, admin_user, listener):
    db.session.add_all([
        SendIdentity(org_id=user.org_id, user_id=user.id, email="me@gmail.example",
                     is_verified=True),
        SendIdentity(org_id=user.org_id, user_id=user.id, email="unproven@gmail.example",
                     is_verified=False),
    ])
    db.session.commit()
    server = listener("submission")
    with connect(server) as smtp:
        assert auth_plain(smtp, user.email, PASSWORD)[0] == 235
        for refused in (admin_user.email, "unproven@gmail.example", ""):
            code, text = smtp.mail(refused)
            assert (code, text) == (553, b"5.7.1 sender address is not one of yours"), refused
            smtp.rset()
        for allowed in (user.email.upper(), "me@gmail.example"):
            assert smtp.mail(allowed)[0] == 250, allowed
            smtp.rset()


def _server_tls_context(test_certs) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(test_certs.server.cert, test_certs.server.key)
    return context


def test_starttls_then_auth(app, user, listener, test_certs):
    server = listener("submission", tls_context=_server_tls_context(test_certs))
    client_context = ssl.create_default_context(cafile=str(test_certs.ca_cert))
    with connect(server) as smtp:
        assert "starttls" in smtp.esmtp_features
        smtp.starttls(context=client_context)
        smtp.ehlo()
        assert isinstance(smtp.sock, ssl.SSLSocket)
        assert auth_plain(smtp, user.email, PASSWORD)[0] == 235


def _non_loopback_address() -> str | None:
    """An address of this machine that is not loopback, to be a 'remote' client of ourselves."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(("192.0.2.1", 9))  # no packet is sent: this only picks a route
            address = probe.getsockname()[0]
    except OSError:
        return None
    return None if address.startswith("127.") else address


def test_remote_clients_get_auth_only_after_starttls(app, user, test_certs):
    address = _non_loopback_address()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address to act as a remote client")
    controller = start_listener(app, address, 0, mode="submission",
                                tls_context=_server_tls_context(test_certs),
                                hostname="mx.test.invalid")
    try:
        client_context = ssl.create_default_context(cafile=str(test_certs.ca_cert))
        client_context.check_hostname = False  # the test certificate names loopback only
        with smtplib.SMTP(address, controller.port, timeout=30) as smtp:
            smtp.ehlo()
            assert "auth" not in smtp.esmtp_features  # never invite a password in the clear
            assert smtp.docmd("AUTH", "PLAIN")[0] == 538
            smtp.starttls(context=client_context)
            smtp.ehlo()
            assert "auth" in smtp.esmtp_features
            assert auth_plain(smtp, user.email, PASSWORD)[0] == 235
    finally:
        stop_listener(controller)


def test_submission_is_relayed_byte_exact_and_filed_in_sent(app, user, listener, smtp_server):
    from worker.runner import run_worker

    relay = smtp_server()
    db.session.add(OrgRelay(org_id=user.org_id, host=relay.host, port=relay.port,
                            security="none"))
    db.session.commit()
    server = listener("submission")
    raw = raw_from(user.email)
    with connect(server) as smtp:
        assert auth_plain(smtp, user.email, PASSWORD)[0] == 235
        assert smtp.sendmail(user.email, ["friend@elsewhere.example"], raw) == {}
    run_worker(app, ["send"], burst=True, with_scheduler=False)
    [received] = relay.messages
    assert received.data == raw and received.rcpt_tos == ["friend@elsewhere.example"]
    db.session.expire_all()
    sent = db.session.scalar(select(Folder).where(Folder.user_id == user.id,
                                                  Folder.role == "sent"))
    [filed] = db.session.scalars(select(Message).where(Message.folder_id == sent.id)).all()
    assert blobs.get_store(app.config["BLOB_DIR"]).get(filed.blob_sha256) == raw


def _assert_nothing_queued(user) -> None:
    db.session.expire_all()
    assert db.session.scalars(select(OutgoingMessage)
                              .where(OutgoingMessage.user_id == user.id)).all() == []


@pytest.mark.parametrize("header_from", [
    "From: Boss <{admin}>",
    "From: Me <{me}>\r\nSender: Boss <{admin}>",
    "From: Me <{me}>, Boss <{admin}>",
    "From: Me <{me}>\r\nFrom: Boss <{admin}>",
    "X-No-From: none",
])
def test_header_from_must_be_one_of_the_users_addresses(app, user, admin_user, listener,
                                                         header_from):
    """Defect: submission checked only MAIL FROM, so a user could send with anyone's From
    header (MAIL FROM:<self> with From: Boss <admin@...>) through the org relay."""
    server = listener("submission")
    head = header_from.format(admin=admin_user.email, me=user.email).encode()
    raw = head + b"\r\nTo: <friend@elsewhere.example>\r\nSubject: pay this\r\n\r\nNow.\r\n"
    with connect(server) as smtp:
        assert auth_plain(smtp, user.email, PASSWORD)[0] == 235
        with pytest.raises(smtplib.SMTPDataError) as refused:
            smtp.sendmail(user.email, ["friend@elsewhere.example"], raw)
    assert refused.value.smtp_code == 550 and refused.value.smtp_error.startswith(b"5.7.1 ")
    _assert_nothing_queued(user)


def test_header_from_may_be_a_confirmed_send_mail_as_address(app, user, listener):
    """Defect guard: the From header check allows the same addresses as MAIL FROM."""
    db.session.add(SendIdentity(org_id=user.org_id, user_id=user.id, email="me@gmail.example",
                                is_verified=True))
    db.session.commit()
    server = listener("submission")
    raw = (b"From: Me <ME@gmail.example>\r\nSender: <" + user.email.encode() + b">\r\n"
           b"To: <friend@elsewhere.example>\r\nSubject: hi\r\n\r\nHi.\r\n")
    with connect(server) as smtp:
        assert auth_plain(smtp, user.email, PASSWORD)[0] == 235
        assert smtp.sendmail(user.email, ["friend@elsewhere.example"], raw) == {}


def _allow_only(user, network: str) -> None:
    db.session.add(IpRule(org_id=user.org_id, network=network))
    db.session.commit()


def test_login_from_outside_the_org_allowlist_is_refused_like_a_wrong_password(
        app, user, listener):
    """Defect: submission AUTH ignored the organization's IP restriction (an allowlist of
    10.0.0.0/8 still let a login from elsewhere in). Loopback is not exempt."""
    _allow_only(user, "10.0.0.0/8")
    server = listener("submission")
    with connect(server) as smtp:
        assert auth_plain(smtp, user.email, PASSWORD) == \
            (535, b"5.7.8 authentication credentials invalid")
        assert auth_plain(smtp, user.email, PASSWORD)[0] == 535
    db.session.expire_all()
    # Audited once per window, however many attempts.
    [event] = db.session.scalars(select(AuditEvent)
                                 .where(AuditEvent.action == "ip.refused_login")).all()
    assert event.actor_id == user.id and event.ip == "127.0.0.1"
    # Each refusal counts against the login throttle like a wrong password.
    limit = app.config["LOGIN_THROTTLE_PER_ACCOUNT_IP"]
    with connect(server) as smtp:
        for _attempt in range(limit):
            auth_plain(smtp, user.email, PASSWORD)
        assert auth_plain(smtp, user.email, PASSWORD)[0] == 454


def test_login_from_inside_the_org_allowlist_is_accepted(app, user, listener):
    """Defect guard: an allowlist that includes the client lets the submission login in."""
    _allow_only(user, "127.0.0.0/8")
    server = listener("submission")
    with connect(server) as smtp:
        assert auth_plain(smtp, user.email, PASSWORD)[0] == 235


def test_login_that_must_change_its_password_is_refused_with_a_pointer_to_the_web(
        app, user, listener):
    """Defect: submission AUTH ignored must_change_password, which the web login enforces."""
    user.must_change_password = True
    db.session.commit()
    server = listener("submission")
    with connect(server) as smtp:
        code, text = auth_plain(smtp, user.email, PASSWORD)
    assert code == 535 and b"log in on the web first" in text
