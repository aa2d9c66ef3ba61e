"""Settings » Send Mail As: proving an address, transports, the Test button, ownership."""
from __future__ import annotations

import re
from email import message_from_bytes, policy
from types import SimpleNamespace

import pytest

from sqlalchemy import select

from tests.conftest import csrf_from, post_form
from tests.factories import make_user
from webapp.extensions import db
from webapp.models.sending import OutgoingMessage, SendIdentity
from worker.jobs.send import send_message


@pytest.fixture
def relay_configured(use_relay):
    """A relay is set (confirmation codes can be queued); nothing is sent in these tests."""
    use_relay(SimpleNamespace(host="127.0.0.1", port=25))


def _identity(user, email):
    db.session.expire_all()
    return db.session.scalar(select(SendIdentity).where(SendIdentity.user_id == user.id,
                                                        SendIdentity.email == email))


def _add(client, email="me@gmail.example", name="Me at Gmail"):
    return post_form(client, "/settings/sendas/add", {"email": email, "display_name": name},
                     page="/settings/sendas")


def _from_choices(client) -> str:
    page = client.get("/mail/compose").get_data(as_text=True)
    return page.split('id="from_identity"', 1)[1].split("</select>", 1)[0]


def _mailed_code(server) -> tuple[str, str]:
    body = message_from_bytes(server.messages[-1].data, policy=policy.default) \
        .get_body(("plain",)).get_content()
    code = re.search(r"enter this code in Settings » Send Mail As: (\w+)", body).group(1)
    link = re.search(r"(http://\S+/confirm/\w+)", body).group(1)
    return code, link


def test_verification_flow_by_code(app, client, user, login_as, smtp_server, use_relay):
    server = smtp_server()
    use_relay(server)
    login_as(user)
    page = client.get("/settings/sendas").get_data(as_text=True)
    assert user.email in page and "(your address)" in page

    response = _add(client)
    assert response.status_code == 302
    identity = _identity(user, "me@gmail.example")
    assert not identity.is_verified
    # The confirmation goes out through the relay, to the address being proven.
    (outgoing,) = db.session.scalars(select(OutgoingMessage)).all()
    assert send_message(outgoing.id) == "sent"
    assert server.messages[-1].rcpt_tos == ["me@gmail.example"]
    code, _link = _mailed_code(server)
    assert code not in identity.verify_token_hash  # only a hash is stored

    # Unconfirmed: not offered in compose.
    assert "me@gmail.example" not in _from_choices(client)
    edit = f"/settings/sendas/{identity.id}"
    post_form(client, f"{edit}/confirm", {"code": "WRONGCODE1"}, page=edit)
    assert not _identity(user, "me@gmail.example").is_verified
    assert _identity(user, "me@gmail.example").verify_attempts == 1
    post_form(client, f"{edit}/confirm", {"code": code.lower()}, page=edit)
    assert _identity(user, "me@gmail.example").is_verified
    assert "me@gmail.example" in _from_choices(client)


def test_verification_by_link_shows_a_button_and_a_get_changes_nothing(
        app, client, user, login_as, smtp_server, use_relay):
    server = smtp_server()
    use_relay(server)
    login_as(user)
    _add(client)
    send_message(db.session.scalar(select(OutgoingMessage.id)))
    code, link = _mailed_code(server)
    path = link.split("localhost", 1)[1]
    page = client.get(path)
    assert page.status_code == 200 and not _identity(user, "me@gmail.example").is_verified
    identity = _identity(user, "me@gmail.example")
    client.post(f"/settings/sendas/{identity.id}/confirm",
                data={"code": code, "csrf_token": csrf_from(page)})
    assert _identity(user, "me@gmail.example").is_verified


def test_too_many_wrong_codes_need_a_new_code(app, client, user, login_as, relay_configured):
    login_as(user)
    _add(client)
    identity = _identity(user, "me@gmail.example")
    edit = f"/settings/sendas/{identity.id}"
    token = csrf_from(client.get(edit))
    for _ in range(6):
        client.post(f"{edit}/confirm", data={"code": "NOPE", "csrf_token": token})
    page = client.get(edit).get_data(as_text=True)
    assert "Too many wrong codes" in page
    assert not _identity(user, "me@gmail.example").is_verified


def test_adding_twice_or_a_bad_address_is_refused(app, client, user, login_as, relay_configured):
    login_as(user)
    assert _add(client).status_code == 302
    again = _add(client)
    assert again.status_code == 400 and "already one of your addresses" in again.get_data(as_text=True)
    assert _add(client, email="not an address").status_code == 400
    assert _add(client, email=user.email).status_code == 400


def test_custom_smtp_password_is_encrypted_and_never_shown(app, client, user, login_as,
                                                           relay_configured):
    login_as(user)
    _add(client)
    identity = _identity(user, "me@gmail.example")
    edit = f"/settings/sendas/{identity.id}"
    response = post_form(client, edit, {
        "display_name": "Me", "reply_to": "", "transport": "smtp", "smtp_host": "smtp.gmail.example",
        "smtp_port": "587", "smtp_security": "starttls", "smtp_username": "me@gmail.example",
        "smtp_password": "app-password-123"})
    assert response.status_code == 302
    identity = _identity(user, "me@gmail.example")
    assert identity.transport == "smtp" and identity.smtp_password_encrypted
    assert "app-password-123" not in identity.smtp_password_encrypted
    page = client.get(edit).get_data(as_text=True)
    assert "app-password-123" not in page and "A password is stored" in page
    # Saving again with an empty password keeps the stored one.
    stored = identity.smtp_password_encrypted
    post_form(client, edit, {"display_name": "Me 2", "reply_to": "", "transport": "smtp",
                             "smtp_host": "smtp.gmail.example", "smtp_port": "587",
                             "smtp_security": "starttls", "smtp_username": "me@gmail.example",
                             "smtp_password": ""})
    assert _identity(user, "me@gmail.example").smtp_password_encrypted == stored


def test_reply_to_with_line_break_is_refused(app, client, user, login_as, relay_configured):
    login_as(user)
    _add(client)
    identity = _identity(user, "me@gmail.example")
    edit = f"/settings/sendas/{identity.id}"
    response = post_form(client, edit, {"display_name": "Me", "transport": "relay",
                                        "reply_to": "a@b.example\r\nBcc: x@evil.example"})
    assert response.status_code == 400 and "line breaks" in response.get_data(as_text=True)
    assert _identity(user, "me@gmail.example").reply_to == ""


def test_test_button_says_what_is_wrong_in_words(app, client, user, login_as, relay_configured,
                                                 smtp_server):
    server = smtp_server(auth=("me@gmail.example", "right"))
    login_as(user)
    _add(client)
    identity = _identity(user, "me@gmail.example")
    edit = f"/settings/sendas/{identity.id}"
    fields = {"display_name": "", "reply_to": "", "transport": "smtp", "smtp_host": server.host,
              "smtp_port": str(server.port), "smtp_security": "none",
              "smtp_username": "me@gmail.example"}
    post_form(client, edit, {**fields, "smtp_password": "wrong"})
    page = post_form(client, f"{edit}/test", {}, page=edit, follow_redirects=True)
    assert "rejected the username or password" in page.get_data(as_text=True)
    post_form(client, edit, {**fields, "smtp_password": "right"})
    page = post_form(client, f"{edit}/test", {}, page=edit, follow_redirects=True)
    assert "It works." in page.get_data(as_text=True)


def test_hosted_address_cannot_be_removed_but_others_can(app, client, user, login_as,
                                                         relay_configured):
    login_as(user)
    client.get("/settings/sendas")
    hosted = _identity(user, user.email)
    edit = f"/settings/sendas/{hosted.id}"
    post_form(client, f"{edit}/delete", {}, page=edit)
    assert _identity(user, user.email) is not None
    _add(client)
    extra = _identity(user, "me@gmail.example")
    post_form(client, f"/settings/sendas/{extra.id}/delete", {},
              page=f"/settings/sendas/{extra.id}")
    assert _identity(user, "me@gmail.example") is None


def test_another_users_address_is_404(app, client, user, login_as, relay_configured):
    other = make_user(user.organization)
    login_as(other)
    _add(client, email="theirs@gmail.example")
    theirs = _identity(other, "theirs@gmail.example")
    login_as(user)
    token = csrf_from(client.get("/settings/sendas"))
    base = f"/settings/sendas/{theirs.id}"
    assert client.get(base).status_code == 404
    assert client.get(f"{base}/confirm/ABC").status_code == 404
    for action in ("confirm", "resend", "test", "delete"):
        assert client.post(f"{base}/{action}", data={"csrf_token": token,
                                                     "code": "X"}).status_code == 404
    assert client.post(base, data={"csrf_token": token, "transport": "relay"}).status_code == 404


def test_adding_an_address_without_a_relay_says_so_and_keeps_nothing(app, client, user,
                                                                      login_as):
    login_as(user)
    response = _add(client)
    assert response.status_code == 400
    assert "relay is not set up" in response.get_data(as_text=True)
    assert _identity(user, "me@gmail.example") is None


PASSWORD_AGAIN = "Enter the password again: the server or login changed."


def _smtp_fields(server, **changes) -> dict:
    fields = {"display_name": "Me", "reply_to": "", "transport": "smtp", "smtp_host": server.host,
              "smtp_port": str(server.port), "smtp_security": "none",
              "smtp_username": "me@gmail.example", "smtp_password": ""}
    fields.update(changes)
    return fields


def _smtp_saved(user) -> tuple:
    identity = _identity(user, "me@gmail.example")
    return (identity.display_name, identity.smtp_host, identity.smtp_port,
            identity.smtp_security, identity.smtp_username, identity.smtp_password_encrypted)


@pytest.mark.parametrize("change", [{"smtp_host": "smtp.elsewhere.example"},
                                    {"smtp_port": "2525"}, {"smtp_security": "ssl"},
                                    {"smtp_username": "someone@elsewhere.example"}])
def test_a_new_smtp_server_or_login_needs_the_password_typed_again(
        app, client, user, login_as, relay_configured, smtp_server, change):
    """Defect: a blank password kept the stored one although host, port, security or username
    changed, and the Test button or the next send logged in there with it (a borrowed session
    could harvest the Gmail password). Now nothing is saved until it is typed again."""
    server = smtp_server(auth=("me@gmail.example", "right"))
    login_as(user)
    _add(client)
    edit = f"/settings/sendas/{_identity(user, 'me@gmail.example').id}"
    post_form(client, edit, _smtp_fields(server, smtp_password="right"))
    before = _smtp_saved(user)

    refused = post_form(client, edit, _smtp_fields(server, display_name="Changed", **change))

    page = refused.get_data(as_text=True)
    assert refused.status_code == 400 and PASSWORD_AGAIN in page
    assert _smtp_saved(user) == before
    # The Test button still uses the saved server, which the password belongs to.
    tested = post_form(client, f"{edit}/test", {}, page=edit, follow_redirects=True)
    assert "It works." in tested.get_data(as_text=True)

    retyped = post_form(client, edit, _smtp_fields(server, smtp_password="other", **change))
    assert retyped.status_code == 302
    assert _smtp_saved(user)[5] != before[5]


def test_the_service_keeps_the_stored_password_only_for_its_server(app, user, relay_configured):
    """Defect (every entry point): update_identity kept the stored password for a new server;
    a blank password still keeps it for the same one, and going without a login forgets it."""
    from webapp.services import sendas

    identity = sendas.add_identity(db.session, user, "me@gmail.example")
    settings = {"display_name": "Me", "reply_to": "", "transport": "smtp",
                "smtp_host": "smtp.gmail.example", "smtp_port": 587, "smtp_security": "starttls",
                "smtp_username": "me@gmail.example"}
    sendas.update_identity(db.session, identity, **settings, smtp_password="app-password")
    db.session.commit()
    stored = identity.smtp_password_encrypted

    sendas.update_identity(db.session, identity, **{**settings, "smtp_host": "SMTP.Gmail.example",
                                                    "display_name": "Me 2"}, smtp_password=None)
    assert identity.smtp_password_encrypted == stored and identity.display_name == "Me 2"
    with pytest.raises(sendas.SmtpPasswordError, match=PASSWORD_AGAIN):
        sendas.update_identity(db.session, identity, **{**settings, "smtp_host": "evil.example",
                                                        "display_name": "Me 3"},
                               smtp_password=None)
    assert (identity.smtp_host, identity.display_name) == ("SMTP.Gmail.example", "Me 2")
    assert sendas.smtp_password(identity) == "app-password"

    sendas.update_identity(db.session, identity, **{**settings, "smtp_host": "open.example",
                                                    "smtp_username": ""}, smtp_password=None)
    assert identity.smtp_password_encrypted == ""  # no login there: the password stays behind


@pytest.mark.parametrize(("field", "value"), [("smtp_password", "pw\r\nRSET"),
                                              ("smtp_password", "pw\0"),
                                              ("smtp_username", "me@gmail.example\r\nRSET")])
def test_line_breaks_in_the_smtp_login_are_refused(app, client, user, login_as,
                                                   relay_configured, smtp_server, field, value):
    """Defect: CR/LF in the SMTP username or password was accepted and stored."""
    from webapp.services import sendas

    server = smtp_server()
    login_as(user)
    _add(client)
    identity = _identity(user, "me@gmail.example")
    edit = f"/settings/sendas/{identity.id}"

    response = post_form(client, edit, _smtp_fields(server, **{field: value}))

    assert response.status_code == 400
    what = "password" if field == "smtp_password" else "username"
    assert f"{what} must not contain line breaks" in response.get_data(as_text=True).lower()
    assert _identity(user, "me@gmail.example").transport == "relay"
    with pytest.raises(sendas.SendAsError, match="must not contain line breaks"):
        sendas.update_identity(db.session, identity, display_name="", reply_to="",
                               transport="smtp", smtp_host=server.host, smtp_port=server.port,
                               smtp_security="none", smtp_username="me@gmail.example",
                               smtp_password="pw\r\nRSET")
