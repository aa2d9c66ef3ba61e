"""Compose: send, reply, reply all, forward, drafts with autosave, header injection, 404s."""
from __future__ import annotations

import io
from email import message_from_bytes, policy

import pytest
from sqlalchemy import func, select

from tests.conftest import csrf_from, post_form
from tests.factories import make_user
from tests.mail.helpers import folder, hosted
from webapp.extensions import db
from webapp.models import Blob, Message, User
from webapp.models.sending import OutgoingMessage
from webapp.services import blobs, compose, sendas
from webapp.services.delivery import deliver

URL = "/mail/compose"


def _identity_id(user) -> int:
    identity = sendas.ensure_hosted_identity(db.session, user)
    db.session.commit()
    return identity.id


def _stored(user, raw: bytes, key: str = "k1", role: str = "inbox") -> Message:
    message = deliver(db.session, hosted(user), raw, key, folder_role=role).message
    db.session.commit()
    return message


def _original(user, attachments=()) -> bytes:
    return compose.as_bytes(compose.build_message(
        from_addr=("Jane Doe", "jane@customer.example"),
        to=[("", user.email), ("Tom", "tom@customer.example")],
        cc=[("", "cc@customer.example")], subject="Pipeline review",
        text="Line one\nLine two\n", attachments=list(attachments),
        message_id="<orig-1@customer.example>", references=["<older@customer.example>"]))


def _outgoing_raw(app) -> tuple[OutgoingMessage, bytes]:
    outgoing = db.session.scalars(select(OutgoingMessage)).one()
    return outgoing, blobs.get_store(app.config["BLOB_DIR"]).get(outgoing.blob_sha256)


def _form(user, **fields) -> dict:
    data = {"from_identity": str(_identity_id(user)), "to": "", "cc": "", "bcc": "",
            "subject": "", "body": "", "send": "Send"}
    data.update(fields)
    return data


def test_send_queues_the_message_and_goes_to_the_outbox(app, client, user, login_as):
    login_as(user)
    response = post_form(client, URL, _form(user, to="Bob <bob@remote.example>",
                                            bcc="hidden@remote.example", subject="Hi there",
                                            body="Hello Bob"))
    assert response.status_code == 302 and response.location.endswith("/mail/outbox")
    outgoing, raw = _outgoing_raw(app)
    parsed = message_from_bytes(raw, policy=policy.default)
    assert parsed["Subject"] == "Hi there" and "Bcc" not in parsed
    assert [r.address for r in outgoing.recipients] == ["bob@remote.example",
                                                         "hidden@remote.example"]
    assert client.get("/mail/outbox").status_code == 200


@pytest.mark.parametrize("field,payload", [
    *[(field, payload) for field in ("to", "cc", "bcc", "subject")
      for payload in ("x\r\nBcc: victim@evil.example", "x\nX-Injected: 1")],
    ("subject", "x\rSubject: y"), ("to", "x\x00y")])
def test_line_breaks_in_any_header_field_are_refused_and_nothing_is_lost(
        app, client, user, login_as, field, payload):
    login_as(user)
    data = _form(user, to="bob@remote.example", subject="Fine", body="Keep me")
    data[field] = payload if field == "subject" else f"bob@remote.example, {payload}"
    response = post_form(client, URL, data)
    assert response.status_code == 400
    page = response.get_data(as_text=True)
    assert "line breaks" in page or "not a valid email address" in page
    assert "Keep me" in page  # the text typed is still in the form
    assert db.session.scalar(select(func.count()).select_from(OutgoingMessage)) == 0


@pytest.mark.parametrize("field,value", [("in_reply_to", "<a@b>\r\nBcc: x@evil.example"),
                                         ("references", "<a@b>\nX-Evil: 1")])
def test_line_breaks_in_hidden_thread_fields_are_refused(app, client, user, login_as, field,
                                                         value):
    login_as(user)
    response = post_form(client, URL, _form(user, to="bob@remote.example", **{field: value}))
    assert response.status_code == 400
    assert db.session.scalar(select(func.count()).select_from(OutgoingMessage)) == 0


def test_forwarded_attachment_name_with_encoded_line_break_cannot_inject(app, client, user,
                                                                         login_as):
    """RFC 2231 lets a received filename carry %0D%0A; forwarding folds it, never injects."""
    raw = (b"From: jane@customer.example\r\nTo: " + user.email.encode() + b"\r\n"
           b"Subject: trap\r\nMessage-ID: <trap@customer.example>\r\nMIME-Version: 1.0\r\n"
           b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\n'
           b"Content-Type: text/plain\r\n\r\nhello\r\n--b\r\n"
           b"Content-Type: application/octet-stream\r\n"
           b"Content-Disposition: attachment; filename*=utf-8''evil%0D%0AX-Injected%3A%201.txt"
           b"\r\n\r\ndata\r\n--b--\r\n")
    message = _stored(user, raw)
    login_as(user)
    page = client.get(f"{URL}?forward={message.id}")
    part_id = page.get_data(as_text=True).split('name="keep_part" value="', 1)[1].split('"')[0]
    response = client.post(URL, data={**_form(user, to="boss@remote.example", subject="Fwd"),
                                       "attachment_source": str(message.id),
                                       "keep_part": part_id, "csrf_token": csrf_from(page)})
    assert response.status_code == 302
    _outgoing, sent = _outgoing_raw(app)
    parsed = message_from_bytes(sent, policy=policy.default)
    assert "X-Injected" not in parsed
    (attachment,) = list(parsed.iter_attachments())
    assert attachment.get_filename() == "evil X-Injected: 1.txt"


def test_invalid_address_error_is_shown_on_its_field(app, client, user, login_as):
    login_as(user)
    response = post_form(client, URL, _form(user, to="bob@", subject="Subject kept"))
    assert response.status_code == 400
    page = response.get_data(as_text=True)
    assert "not a valid email address" in page and "Subject kept" in page


def test_no_recipient_is_refused(app, client, user, login_as):
    login_as(user)
    response = post_form(client, URL, _form(user, subject="Nobody"))
    assert response.status_code == 400
    assert "at least one recipient" in response.get_data(as_text=True)


def test_uploaded_attachments_are_sent(app, client, user, login_as):
    login_as(user)
    data = _form(user, to="bob@remote.example", subject="Files")
    data["attachments"] = [(io.BytesIO(b"%PDF-1.4 one"), "one.pdf"),
                           (io.BytesIO(b"\x00\x01binary"), "two.bin")]
    response = post_form(client, URL, data, content_type="multipart/form-data")
    assert response.status_code == 302
    _outgoing, raw = _outgoing_raw(app)
    parsed = message_from_bytes(raw, policy=policy.default)
    got = {p.get_filename(): p.get_content() for p in parsed.iter_attachments()}
    assert got == {"one.pdf": b"%PDF-1.4 one", "two.bin": b"\x00\x01binary"}


def test_reply_prefills_thread_headers_and_quotes(app, client, user, login_as):
    message = _stored(user, _original(user))
    login_as(user)
    page = client.get(f"{URL}?reply={message.id}").get_data(as_text=True)
    assert "Re: Pipeline review" in page
    assert "&gt; Line one" in page
    assert 'value="&lt;orig-1@customer.example&gt;"' in page
    assert "&lt;older@customer.example&gt; &lt;orig-1@customer.example&gt;" in page
    assert "jane@customer.example" in page and "tom@customer.example" not in page


def test_reply_all_includes_everyone_but_me(app, client, user, login_as):
    message = _stored(user, _original(user))
    login_as(user)
    page = client.get(f"{URL}?reply_all={message.id}").get_data(as_text=True)
    assert "tom@customer.example" in page and "cc@customer.example" in page
    to_value = page.split('id="to"', 1)[1].split("value=", 1)[1].split('"')[1]
    assert user.email not in to_value


def test_reply_sends_in_reply_to_and_references(app, client, user, login_as):
    message = _stored(user, _original(user))
    login_as(user)
    form_page = client.get(f"{URL}?reply={message.id}")
    response = client.post(URL, data={
        **_form(user, to="jane@customer.example", subject="Re: Pipeline review", body="Yes"),
        "in_reply_to": "<orig-1@customer.example>",
        "references": "<older@customer.example> <orig-1@customer.example>",
        "csrf_token": csrf_from(form_page)})
    assert response.status_code == 302
    _outgoing, raw = _outgoing_raw(app)
    parsed = message_from_bytes(raw, policy=policy.default)
    assert parsed["In-Reply-To"] == "<orig-1@customer.example>"
    assert parsed["References"] == "<older@customer.example> <orig-1@customer.example>"


def test_forward_keeps_the_original_attachments(app, client, user, login_as):
    message = _stored(user, _original(user, [("plan.pdf", "application/pdf", b"%PDF plan")]))
    login_as(user)
    page = client.get(f"{URL}?forward={message.id}")
    text = page.get_data(as_text=True)
    assert "Fwd: Pipeline review" in text and "plan.pdf" in text
    part_id = text.split('name="keep_part" value="', 1)[1].split('"', 1)[0]
    response = client.post(URL, data={
        **_form(user, to="boss@remote.example", subject="Fwd: Pipeline review", body="FYI"),
        "attachment_source": str(message.id), "keep_part": part_id,
        "csrf_token": csrf_from(page)})
    assert response.status_code == 302
    _outgoing, raw = _outgoing_raw(app)
    (attachment,) = list(message_from_bytes(raw, policy=policy.default).iter_attachments())
    assert attachment.get_filename() == "plan.pdf" and attachment.get_content() == b"%PDF plan"


@pytest.mark.parametrize("param", ["reply", "reply_all", "forward", "draft"])
def test_another_users_message_is_404(app, client, user, login_as, param):
    other = make_user(user.organization)
    theirs = _stored(other, _original(other), role="drafts" if param == "draft" else "inbox")
    login_as(user)
    assert client.get(f"{URL}?{param}={theirs.id}").status_code == 404
    assert client.get(f"{URL}?{param}=999999").status_code == 404


def test_draft_param_must_name_a_draft(app, client, user, login_as):
    message = _stored(user, _original(user))
    login_as(user)
    assert client.get(f"{URL}?draft={message.id}").status_code == 404


def test_posting_another_users_attachment_source_is_404(app, client, user, login_as):
    other = make_user(user.organization)
    theirs = _stored(other, _original(other, [("secret.pdf", "application/pdf", b"secret")]))
    login_as(user)
    response = post_form(client, URL, {**_form(user, to="me@remote.example"),
                                       "attachment_source": str(theirs.id), "keep_part": "2"})
    assert response.status_code == 404
    assert db.session.scalar(select(func.count()).select_from(OutgoingMessage)) == 0


def _drafts(user) -> list[Message]:
    db.session.expire_all()
    return db.session.scalars(select(Message).where(Message.folder_id ==
                                                    folder(user, "drafts").id)).all()


def test_autosave_round_trip_replaces_the_draft_and_sending_deletes_it(app, client, user,
                                                                       login_as):
    login_as(user)
    page = client.get(URL)
    token = csrf_from(page)
    base = {"from_identity": str(_identity_id(user)), "csrf_token": token, "cc": "",
            "bcc": "Secret <secret@remote.example>", "subject": "Plan", "body": "First words"}
    first = client.post(f"{URL}/autosave", data={**base, "to": "bob@remote.example"})
    assert first.status_code == 200 and first.json["ok"]
    (draft,) = _drafts(user)
    assert draft.id == first.json["draft_id"] and draft.subject == "Plan"
    first_blob, first_size = draft.blob_sha256, draft.size
    used_after_first = db.session.get(User, user.id).used_bytes

    second = client.post(f"{URL}/autosave", data={**base, "to": "bob@remote.example, carl@",
                                                   "body": "Second words, longer than before",
                                                   "draft_id": str(draft.id)})
    assert second.json["ok"] and second.json["problems"]  # the half-typed To is reported
    (replacement,) = _drafts(user)
    assert replacement.id == second.json["draft_id"]
    assert replacement.blob_sha256 != first_blob
    raw = blobs.get_store(app.config["BLOB_DIR"]).get(replacement.blob_sha256)
    assert b"Second words" in raw and b"secret@remote.example" in raw  # drafts keep Bcc
    # The old version's bytes no longer count against the quota, its blob is released.
    assert db.session.get(User, user.id).used_bytes == replacement.size
    assert used_after_first == first_size
    assert db.session.get(Blob, first_blob).refcount == 0

    opened = client.get(f"{URL}?draft={replacement.id}").get_data(as_text=True)
    assert "Second words" in opened and "secret@remote.example" in opened

    response = client.post(URL, data={**_form(user, to="bob@remote.example", subject="Plan",
                                              body="Final"),
                                       "draft_id": str(replacement.id), "csrf_token": token})
    assert response.status_code == 302
    assert _drafts(user) == []
    assert db.session.get(User, user.id).used_bytes == 0


def test_autosave_needs_the_csrf_token(app, client, user, login_as):
    login_as(user)
    response = client.post(f"{URL}/autosave", data={"subject": "x", "to": "a@b.example"})
    assert response.status_code == 400
    assert _drafts(user) == []


def test_autosave_refuses_header_injection(app, client, user, login_as):
    login_as(user)
    token = csrf_from(client.get(URL))
    response = client.post(f"{URL}/autosave", data={"csrf_token": token,
                                                    "subject": "a\r\nBcc: x@evil.example"})
    assert response.status_code == 400 and not response.json["ok"]
    assert _drafts(user) == []


def test_compose_page_wires_autosave_and_autocomplete(app, client, user, login_as):
    login_as(user)
    page = client.get(URL).get_data(as_text=True)
    assert 'data-autosave-url="/mail/compose/autosave"' in page
    assert "compose.js" in page and 'list="address-suggestions"' in page
    assert 'data-autocomplete-url="/crm/autocomplete"' in page


def test_unconfirmed_identity_is_not_offered(app, client, user, login_as):
    pending = sendas.add_identity(db.session, user, "me@gmail.example")
    db.session.commit()
    login_as(user)
    page = client.get(URL).get_data(as_text=True)
    assert "me@gmail.example" not in page.split('id="from_identity"', 1)[1].split("</select>")[0]
    response = post_form(client, URL, {**_form(user, to="bob@remote.example"),
                                       "from_identity": str(pending.id)})
    assert response.status_code == 400


def test_first_visit_then_send_like_a_browser(app, client, user, login_as):
    """The hosted From created on the first visit is still valid when the form comes back."""
    login_as(user)
    page = client.get(URL)
    selected = page.get_data(as_text=True).split('id="from_identity"', 1)[1] \
        .split('selected value="', 1)[1].split('"', 1)[0]
    response = client.post(URL, data={"from_identity": selected, "to": "bob@remote.example",
                                      "subject": "First", "body": "Hi", "send": "Send",
                                      "csrf_token": csrf_from(page)})
    assert response.status_code == 302
    assert db.session.scalar(select(OutgoingMessage.from_email)) == user.email


def test_to_parameter_prefills_the_field_without_line_breaks(app, client, user, login_as):
    login_as(user)
    page = client.get(f"{URL}?to=ann%40client.example%0D%0ABcc:%20x@evil.example")
    text = page.get_data(as_text=True)
    assert 'value="ann@client.example Bcc: x@evil.example"' in text


def _draft_key_from(page) -> str:
    text = page.get_data(as_text=True)
    return text.split('name="draft_key" value="', 1)[1].split('"', 1)[0]


def test_a_beacon_autosave_then_send_leaves_no_orphan_draft(app, client, user, login_as):
    """Defect: the leaving beacon replaced draft D1 by D2 without the page learning D2's id,
    so sending with draft_id=D1 (and every later autosave) left orphan drafts."""
    message = _stored(user, _original(user, [("plan.pdf", "application/pdf", b"%PDF plan")]))
    login_as(user)
    page = client.get(f"{URL}?forward={message.id}")
    key = _draft_key_from(page)
    assert len(key) >= 16 and key != _draft_key_from(client.get(URL))
    part_id = page.get_data(as_text=True).split('name="keep_part" value="', 1)[1].split('"', 1)[0]
    base = {"from_identity": str(_identity_id(user)), "csrf_token": csrf_from(page),
            "to": "bob@remote.example", "cc": "", "bcc": "", "subject": "Plan",
            "draft_key": key, "keep_part": part_id, "draft_id": "",
            "attachment_source": str(message.id)}
    # The tab is hidden before the first timed save: the beacon's answer is never read,
    # so the next timed save still carries no draft id.
    assert client.post(f"{URL}/autosave", data={**base, "body": "one"}).status_code == 200
    learned = client.post(f"{URL}/autosave", data={**base, "body": "two"}).json
    assert len(_drafts(user)) == 1
    # Mail arrives meanwhile (so the next draft cannot reuse the learned id), then the
    # tab is hidden again: the beacon replaces the draft the page knows.
    _stored(user, _original(user), key="k2")
    stale = {"draft_id": str(learned["draft_id"]),
             "attachment_source": str(learned["attachment_source"])}
    assert client.post(f"{URL}/autosave", data={**base, **stale, "body": "three"}).status_code == 200
    (draft,) = _drafts(user)
    assert draft.id != learned["draft_id"]

    form = {**_form(user, to="bob@remote.example", subject="Plan", body="final"),
            "draft_key": key, "keep_part": part_id, **stale, "csrf_token": base["csrf_token"]}
    assert client.post(URL, data=form).status_code == 302
    assert _drafts(user) == []
    # The attachment kept from the replaced draft still went out.
    _outgoing, raw = _outgoing_raw(app)
    (attachment,) = list(message_from_bytes(raw, policy=policy.default).iter_attachments())
    assert attachment.get_content() == b"%PDF plan"


def test_opening_a_draft_adopts_its_key_so_saving_replaces_it(app, client, user, login_as):
    """Defect guard: a ?draft= link keeps working with draft keys (its key is adopted)."""
    login_as(user)
    page = client.get(URL)
    base = {"from_identity": str(_identity_id(user)), "csrf_token": csrf_from(page),
            "to": "bob@remote.example", "cc": "", "bcc": "", "subject": "Plan",
            "draft_key": _draft_key_from(page)}
    draft_id = client.post(f"{URL}/autosave", data={**base, "body": "one"}).json["draft_id"]

    reopened = client.get(f"{URL}?draft={draft_id}")
    assert _draft_key_from(reopened) == base["draft_key"]
    client.post(f"{URL}/autosave", data={**base, "body": "two"})  # as a beacon: no id
    (draft,) = _drafts(user)
    assert b"two" in blobs.get_store(app.config["BLOB_DIR"]).get(draft.blob_sha256)


@pytest.mark.parametrize("draft_key", ["", "short", "x" * 65, "bad key with spaces!!"])
def test_a_malformed_draft_key_is_ignored(app, client, user, login_as, draft_key):
    """Defect guard: the posted key becomes a source key, so only the generated shape counts."""
    login_as(user)
    page = client.get(URL)
    response = client.post(f"{URL}/autosave", data={
        "from_identity": str(_identity_id(user)), "csrf_token": csrf_from(page),
        "to": "bob@remote.example", "subject": "x", "body": "x", "draft_key": draft_key})
    assert response.json["ok"]
    (draft,) = _drafts(user)
    assert draft.source_key != f"draft:{draft_key}"
