"""The Outbox page: states and errors in words, retry and cancel (POST + CSRF), owner only."""
from __future__ import annotations

from sqlalchemy import select

from tests.conftest import csrf_from
from tests.factories import make_user
from tests.fixtures.smtpserver import DROP_CONNECTION
from tests.sending.conftest import _no_cached_sessions, use_relay  # noqa: F401 (fixtures)
from webapp.extensions import db
from webapp.models.sending import OutgoingMessage
from webapp.services import outbox, sendas
from worker.jobs.send import send_message


def _queue(user, to="bob@remote.example", subject="Quarterly numbers", identity_id=None):
    outgoing = outbox.queue_message(db.session, user, identity_id, to, "", "", subject, "Body",
                                    None, [], None, None)
    db.session.commit()
    return outgoing.id


def _state(outgoing_id):
    db.session.expire_all()
    return db.session.get(OutgoingMessage, outgoing_id).state


def test_outbox_lists_states_errors_and_recipients(app, client, user, login_as, smtp_server,
                                                   use_relay):
    server = smtp_server(rcpt_replies={"gone@": "550 5.1.1 No such user here"})
    use_relay(server)
    sent = _queue(user, to="ok@remote.example, gone@remote.example", subject="Half delivered")
    send_message(sent)
    waiting = _queue(user, subject="Still queued")
    login_as(user)
    page = client.get("/mail/outbox").get_data(as_text=True)
    assert "Half delivered" in page and "Still queued" in page
    assert "Waiting to be sent" in page and "Sent" in page
    assert "No such user here" in page and "accepted by the server" in page
    assert f'/mail/outbox/{waiting}/cancel' in page
    assert f'/mail/outbox/{sent}/cancel' not in page


def test_cancel_then_nothing_is_sent(app, client, user, login_as, smtp_server, use_relay):
    server = smtp_server()
    use_relay(server)
    outgoing_id = _queue(user)
    login_as(user)
    token = csrf_from(client.get("/mail/outbox"))
    response = client.post(f"/mail/outbox/{outgoing_id}/cancel", data={"csrf_token": token})
    assert response.status_code == 302 and _state(outgoing_id) == "cancelled"
    assert send_message(outgoing_id) == "not due" and server.messages == []
    # Cancelled is final: a second cancel or a retry says so and changes nothing.
    client.post(f"/mail/outbox/{outgoing_id}/cancel", data={"csrf_token": token})
    client.post(f"/mail/outbox/{outgoing_id}/retry", data={"csrf_token": token})
    assert _state(outgoing_id) == "cancelled"


def test_retry_of_an_uncertain_message_sends_it_again(app, client, user, login_as, smtp_server,
                                                      use_relay):
    server = smtp_server(data_replies=[DROP_CONNECTION])
    use_relay(server)
    outgoing_id = _queue(user)
    assert send_message(outgoing_id) == "uncertain"
    login_as(user)
    page = client.get("/mail/outbox")
    text = page.get_data(as_text=True)
    assert "May have been sent" in text and "Send again" in text
    response = client.post(f"/mail/outbox/{outgoing_id}/retry",
                           data={"csrf_token": csrf_from(page)})
    assert response.status_code == 302 and _state(outgoing_id) == "queued"
    assert send_message(outgoing_id) == "sent"
    assert len(server.messages) == 2


def test_retry_and_cancel_need_the_csrf_token(app, client, user, login_as):
    outgoing_id = _queue(user)
    login_as(user)
    assert client.post(f"/mail/outbox/{outgoing_id}/cancel").status_code == 400
    assert _state(outgoing_id) == "queued"


def test_another_users_outgoing_message_is_404(app, client, user, login_as):
    other = make_user(user.organization)
    theirs = _queue(other, subject="Their secret")
    login_as(user)
    page = client.get("/mail/outbox")
    assert "Their secret" not in page.get_data(as_text=True)
    token = csrf_from(page)
    for action in ("cancel", "retry"):
        assert client.post(f"/mail/outbox/{theirs}/{action}",
                           data={"csrf_token": token}).status_code == 404
    assert _state(theirs) == "queued"


def test_wrong_password_notice_links_to_that_address_settings(app, client, user, login_as,
                                                              smtp_server):
    server = smtp_server(auth=("me@gmail.example", "right"))
    identity = sendas.add_identity(db.session, user, "me@gmail.example")
    identity.is_verified = True
    sendas.update_identity(db.session, identity, display_name="", reply_to="", transport="smtp",
                           smtp_host=server.host, smtp_port=server.port, smtp_security="none",
                           smtp_username="me@gmail.example", smtp_password="wrong")
    db.session.commit()
    outgoing_id = _queue(user, identity_id=identity.id)
    assert send_message(outgoing_id) == "failed"
    login_as(user)
    page = client.get("/mail/outbox").get_data(as_text=True)
    assert "rejected the username or password" in page
    assert f'href="/settings/sendas/{identity.id}"' in page
    assert db.session.scalar(select(OutgoingMessage.last_error_code)) == 535
