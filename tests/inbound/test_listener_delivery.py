"""The listener as the MX of hosted domains, driven by smtplib (issue 3 item 6)."""
from __future__ import annotations

import base64
import hashlib
import smtplib
from pathlib import Path

import pytest
from sqlalchemy import func, select, update

from tests.corpus.messages import make_message, many_encoded_words_subject, nested_multipart
from tests.factories import make_org, make_user
from tests.inbound.conftest import hosted_account
from webapp.extensions import db
from webapp.models import Blob, Folder, Message, User
from webapp.services import blobs


def crlf(raw: bytes) -> bytes:
    """The message with CRLF line ends, as it travels in SMTP (smtplib leaves bytes alone)."""
    return raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def simple(subject: str = "Hello", message_id: str | None = "<m1@sender.example>",
           body: bytes = b"Hi there.\r\n") -> bytes:
    head = b"From: Sender <sender@sender.example>\r\nTo: someone@acme.example\r\n"
    head += b"Subject: " + subject.encode() + b"\r\nDate: Mon, 23 Nov 2026 10:00:00 +0000\r\n"
    if message_id:
        head += b"Message-ID: " + message_id.encode() + b"\r\n"
    return head + b"\r\n" + body


def messages_of(user) -> list[Message]:
    db.session.expire_all()
    return db.session.scalars(select(Message).where(Message.user_id == user.id)
                              .order_by(Message.id)).all()


def count(model) -> int:
    return db.session.scalar(select(func.count()).select_from(model))


def used_bytes(user) -> int:
    return db.session.scalar(select(User.used_bytes).where(User.id == user.id))


def send(server, raw: bytes, to: list[str], sender: str = "sender@sender.example") -> dict:
    with smtplib.SMTP(server.host, server.port, timeout=30) as smtp:
        return smtp.sendmail(sender, to, raw)


def send_without_size(server, raw: bytes, to: list[str]) -> tuple[int, bytes]:
    """MAIL without SIZE=, so the listener only learns the size at the end of DATA."""
    with smtplib.SMTP(server.host, server.port, timeout=30) as smtp:
        smtp.ehlo()
        assert smtp.mail("sender@sender.example")[0] == 250
        for address in to:
            assert smtp.rcpt(address)[0] == 250
        return smtp.data(raw)


def test_round_trip_is_byte_exact_listed_and_downloadable(app, user, listener, login_as):
    server = listener()
    raw = crlf(make_message(7, size=30_000)) + b"..a line that starts with a dot\r\n" \
        b"8-bit \xe9\xff bytes stay as they are\r\n"
    assert send(server, raw, [user.email]) == {}
    [message] = messages_of(user)
    inbox = db.session.scalar(select(Folder).where(Folder.user_id == user.id,
                                                   Folder.role == "inbox"))
    assert message.folder_id == inbox.id
    assert message.blob_sha256 == hashlib.sha256(raw).hexdigest()
    assert blobs.get_store(app.config["BLOB_DIR"]).get(message.blob_sha256) == raw
    assert message.subject.endswith("#7") and message.from_email == "sender7@example.org"
    assert message.account_id == hosted_account(user).id
    assert message.source_key.startswith("inbound:")
    assert used_bytes(user) == len(raw)
    client = login_as(user)
    listing = client.get(f"/mail/folder/{inbox.id}")
    assert listing.status_code == 200
    assert f'href="/mail/message/{message.id}"'.encode() in listing.data
    assert message.subject.encode() in listing.data
    assert client.get(f"/mail/message/{message.id}").status_code == 200
    download = client.get(f"/mail/message/{message.id}/raw")
    assert download.status_code == 200 and download.data == raw
    download.close()


REFUSED = {  # recipient: (code, text the reply must hold)
    "nobody@acme.example": (550, b"5.1.1 mailbox unavailable"),
    "someone@gmail.example": (550, b"5.7.1 relaying denied"),
    "someone@acme.example.evil.example": (550, b"5.7.1 relaying denied"),
    "user@[127.0.0.1]": (550, b"5.7.1 relaying denied"),
    "no-domain": (553, b"5.1.3"),
}


def test_recipients_that_are_not_ours_are_refused(app, user, listener):
    server = listener()
    with smtplib.SMTP(server.host, server.port, timeout=30) as smtp:
        smtp.ehlo()
        for recipient, (code, text) in REFUSED.items():
            assert smtp.mail("sender@sender.example")[0] == 250
            got_code, got_text = smtp.rcpt(recipient)
            assert got_code == code and text in got_text, recipient
            smtp.rset()
    with pytest.raises(smtplib.SMTPRecipientsRefused):
        send(server, simple(), list(REFUSED))
    assert count(Message) == 0


def test_another_organizations_domain_is_delivered_there_not_relayed(app, user, listener):
    other_org = make_org(domain="other.example")
    other_user = make_user(other_org, email="pat@other.example")
    server = listener()
    assert send(server, simple(), ["pat@other.example"]) == {}
    assert len(messages_of(other_user)) == 1 and messages_of(user) == []


def test_addresses_are_case_insensitive_and_plus_tags_reach_the_user(app, user, listener):
    server = listener()
    local, domain = user.email.split("@")
    assert send(server, simple(), [f"{local.upper()}@{domain.upper()}"]) == {}
    assert send(server, simple(message_id="<m2@x>"), [f"{local}+newsletters@{domain}"]) == {}
    assert len(messages_of(user)) == 2


def test_disabled_user_is_refused_like_an_unknown_one(app, user, listener):
    user.is_disabled = True
    db.session.commit()
    server = listener()
    with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
        send(server, simple(), [user.email])
    assert refused.value.recipients[user.email] == (550, b"5.1.1 mailbox unavailable")


def test_null_sender_bounces_are_accepted(app, user, listener):
    server = listener()
    assert send(server, simple(subject="Delivery Status Notification"), [user.email],
                sender="") == {}
    assert len(messages_of(user)) == 1


def test_size_limit_is_advertised_and_enforced(app, user, listener):
    app.config["MAIL_MAX_MESSAGE_BYTES"] = 10_000
    server = listener()
    with smtplib.SMTP(server.host, server.port, timeout=30) as smtp:
        smtp.ehlo()
        assert smtp.esmtp_features["size"] == "10000"
        assert "auth" not in smtp.esmtp_features  # delivery only: no relaying for anyone
    big = simple(body=b"x" * 76 + b"\r\n") * 200
    # Declared with SIZE= (smtplib does so when the server advertises SIZE): refused at MAIL.
    with pytest.raises(smtplib.SMTPSenderRefused) as refused:
        send(server, big, [user.email])
    assert refused.value.smtp_code == 552
    # Not declared: refused at the end of DATA.
    code, _text = send_without_size(server, big, [user.email])
    assert code == 552
    assert count(Message) == 0 and used_bytes(user) == 0


def test_over_quota_is_temporary_and_stores_nothing(app, user, listener):
    user.quota_bytes = 500
    db.session.commit()
    server = listener()
    raw = simple(body=b"y" * 70 + b"\r\n") * 10
    # With SIZE= the recipient is refused at RCPT: the data is never sent.
    with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
        send(server, raw, [user.email])
    assert refused.value.recipients[user.email] == (452, b"4.2.2 mailbox full")
    # Without SIZE= the quota check of deliver() answers after DATA.
    code, text = send_without_size(server, raw, [user.email])
    assert (code, text) == (452, b"4.2.2 mailbox full")
    assert count(Message) == 0 and count(Blob) == 0 and used_bytes(user) == 0


def test_full_mailbox_refused_at_rcpt_even_without_size(app, user, listener):
    user.quota_bytes = 100
    user.used_bytes = 100
    db.session.commit()
    server = listener()
    with smtplib.SMTP(server.host, server.port, timeout=30) as smtp:
        smtp.ehlo()
        smtp.mail("sender@sender.example")
        assert smtp.rcpt(user.email) == (452, b"4.2.2 mailbox full")


def _break_blob_dir(app, tmp_path: Path) -> str:
    """A BLOB_DIR whose parent is a regular file: every mkdir fails, even as root."""
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the blob folder's parent should be")
    good = app.config["BLOB_DIR"]
    app.config["BLOB_DIR"] = str(blocker / "blobs")
    return good


def test_transient_failure_answers_451_then_the_retry_stores_once(app, user, listener, tmp_path):
    server = listener()
    raw = crlf(make_message(3))
    good_blob_dir = _break_blob_dir(app, tmp_path)
    code, text = send_without_size(server, raw, [user.email])
    assert (code, text) == (451, b"4.3.0 temporary failure, try again later")
    assert count(Message) == 0 and count(Blob) == 0 and used_bytes(user) == 0

    app.config["BLOB_DIR"] = good_blob_dir
    assert send(server, raw, [user.email]) == {}
    # The MTA may retry again (e.g. our 250 was lost): still one copy, charged once.
    assert send(server, raw, [user.email]) == {}
    [message] = messages_of(user)
    assert blobs.get_store(good_blob_dir).get(message.blob_sha256) == raw
    assert used_bytes(user) == len(raw)


def test_several_recipients_partial_failure_then_retry_stores_only_the_missing(app, org, listener):
    roomy, full = make_user(org), make_user(org)
    full.quota_bytes = 200
    db.session.commit()
    server = listener()
    raw = simple(body=b"z" * 70 + b"\r\n") * 5
    code, text = send_without_size(server, raw, [roomy.email, full.email])
    assert code in (451, 452)  # SMTP has one reply: not 250 unless both have it
    assert len(messages_of(roomy)) == 1 and messages_of(full) == []

    db.session.execute(update(User).where(User.id == full.id).values(quota_bytes=10**6))
    db.session.commit()
    assert send(server, raw, [roomy.email, full.email]) == {}
    assert len(messages_of(roomy)) == 1 and len(messages_of(full)) == 1
    assert used_bytes(roomy) == len(raw)


def test_distinct_messages_with_the_same_message_id_are_both_kept(app, user, listener):
    server = listener()
    assert send(server, simple(subject="first copy", message_id="<same@x>"), [user.email]) == {}
    assert send(server, simple(subject="list copy", message_id="<same@x>"), [user.email]) == {}
    assert [m.subject for m in messages_of(user)] == ["first copy", "list copy"]


def test_two_recipients_in_one_transaction_each_get_a_copy(app, org, listener):
    first, second = make_user(org), make_user(org)
    server = listener()
    assert send(server, simple(), [first.email, second.email, first.email.upper()]) == {}
    assert len(messages_of(first)) == 1 and len(messages_of(second)) == 1


def _missing_boundary() -> bytes:
    return (b"From: a@example.org\r\nSubject: no boundary\r\nMessage-ID: <nb@x>\r\n"
            b"Content-Type: multipart/mixed\r\n\r\n--XX\r\nContent-Type: text/plain\r\n\r\n"
            b"text without its boundary declared\r\n--XX--\r\n")


def _eight_bit_headers() -> bytes:
    return ("From: Jörg Müller <jorg@example.org>\r\nSubject: Grüße aus Zürich\r\n"
            "To: user@acme.example\r\nMessage-ID: <8bit@x>\r\n\r\nbody\r\n").encode("utf-8") \
        + b"Subject-ish latin-1 \xe9\r\n"


def _broken_base64() -> bytes:
    return (b"From: a@example.org\r\nSubject: broken base64\r\nMessage-ID: <b64@x>\r\n"
            b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=B\r\n\r\n"
            b"--B\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: base64\r\n\r\n"
            b"SGVsbG8gd29ybGQ!!!***not base64 at all===\r\n"
            b"--B\r\nContent-Type: application/pdf; name=x.pdf\r\n"
            b"Content-Transfer-Encoding: base64\r\n\r\n"
            + base64.b64encode(b"%PDF-1.4 truncated")[:-3] + b"\r\n--B--\r\n")


@pytest.mark.parametrize("raw", [
    pytest.param(nested_multipart(1000), id="1000-deep nesting"),
    pytest.param(many_encoded_words_subject(20_000), id="20000 encoded words in one line"),
    pytest.param(_missing_boundary(), id="missing boundary"),
    pytest.param(_eight_bit_headers(), id="8-bit headers"),
    pytest.param(simple(message_id=None), id="no Message-ID"),
    pytest.param(_broken_base64(), id="broken base64"),
    pytest.param(b"From: a@example.org\r\nSubject: only headers\r\n", id="no body"),
    pytest.param(b"From: a@example.org\nSubject: bare LF\n\nbody\n\r\n", id="bare LF"),
])
def test_pathological_messages_are_stored_byte_exact(app, user, listener, raw):
    server = listener()
    assert send(server, raw, [user.email]) == {}
    [message] = messages_of(user)
    assert blobs.get_store(app.config["BLOB_DIR"]).get(message.blob_sha256) == raw
