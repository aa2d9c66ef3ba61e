"""The webmail pages through the test client: lists, bulk actions, folders, message view, downloads."""
from __future__ import annotations

import re

import pytest
from sqlalchemy import select

from tests.conftest import csrf_from, post_form
from tests.mail.helpers import bulk_messages, deliver_raw, folder, html_mail, plain_mail
from webapp.extensions import db
from webapp.models import Folder, Message, User
from webapp.services import blobs, mailbox
from worker.jobs.index import index_pending

PNG = (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00\x00\x00"
       b"\x1f\x15\xc4\x89\x00\x00\x00\rIDATx\x9cc\xf8\x0f\x00\x00\x01\x01\x00\x05\x18\xd8N\x00\x00"
       b"\x00\x00IEND\xaeB`\x82")


@pytest.fixture
def reader(client, user, login_as):
    """The client, signed in as the user."""
    login_as(user)
    return client


def fresh(model, ident):
    db.session.expire_all()
    return db.session.get(model, ident)


def test_mail_index_is_the_inbox_with_sidebar_and_storage(reader, user):
    deliver_raw(user, plain_mail(subject="Renewal <draft>", body="Numbers attached\n"))
    index_pending(user.id)  # the snippet comes from the full parse of the index job
    db.session.commit()
    html = reader.get("/mail/").data.decode()
    assert "<h1>Inbox</h1>" in html
    assert "Renewal &lt;draft&gt;" in html and "Numbers attached" in html
    assert "Jane Doe" in html
    assert re.search(r'<span class="unread-count"[^>]*>1<', html)
    for name in ("Drafts", "Sent", "Spam", "Trash"):
        assert f'<span class="folder-name">{name}</span>' in html
    used = db.session.scalar(select(User.used_bytes).where(User.id == user.id))
    assert f'<meter id="storage-meter" min="0" max="{5 * 1024**3}" value="{used}"' in html
    assert "of 5.0 GB" in html
    assert 'name="q"' in html  # the search box is on every mail page


def test_list_pages_with_older_and_newer_links(reader, user):
    inbox = folder(user, "inbox")
    bulk_messages(user, 60, inbox.id)
    first = reader.get(f"/mail/folder/{inbox.id}").data.decode()
    assert first.count('class="message-row') == 50
    assert "Message 59" in first and "Message 10" in first and "Message 9<" not in first
    assert 'rel="prev"' not in first
    older = re.search(r'rel="next" href="([^"]+)"', first).group(1).replace("&amp;", "&")
    second = reader.get(older).data.decode()
    assert second.count('class="message-row') == 10
    assert "Message 9<" in second and "Message 0<" in second and 'rel="next"' not in second
    newer = re.search(r'rel="prev" href="([^"]+)"', second).group(1).replace("&amp;", "&")
    back = reader.get(newer).data.decode()
    assert back.count('class="message-row') == 50 and "Message 59" in back


def test_list_shows_marks(reader, user):
    message = deliver_raw(user, html_mail("<p>see file</p>", attachments=[("q.pdf", "application/pdf", b"%PDF")]))
    mailbox.set_flags(db.session, user.id, [message.id], "flag")
    db.session.commit()
    html = reader.get("/mail/").data.decode()
    assert 'class="message-row unread flagged"' in html
    assert 'class="mark-attachment"' in html and 'class="mark-flag"' in html


def bulk(reader, folder_id, ids, action, follow_redirects=False, **extra):
    data = {"ids": [str(i) for i in ids], "action": action, **extra}
    return post_form(reader, f"/mail/folder/{folder_id}/bulk", data, page=f"/mail/folder/{folder_id}",
                     follow_redirects=follow_redirects)


def test_bulk_actions(reader, user):
    inbox, spam, trash = folder(user, "inbox"), folder(user, "spam"), folder(user, "trash")
    ids = [deliver_raw(user, plain_mail()).id for _ in range(3)]
    assert bulk(reader, inbox.id, ids[:2], "read").status_code == 302
    assert [fresh(Message, i).is_read for i in ids] == [True, True, False]
    bulk(reader, inbox.id, ids[:1], "unread")
    assert fresh(Message, ids[0]).is_read is False
    bulk(reader, inbox.id, ids, "flag")
    assert all(fresh(Message, i).is_flagged for i in ids)
    bulk(reader, inbox.id, ids[2:], "unflag")
    assert fresh(Message, ids[2]).is_flagged is False
    bulk(reader, inbox.id, ids[:1], "move", target_folder=str(spam.id))
    assert fresh(Message, ids[0]).folder_id == spam.id
    response = bulk(reader, inbox.id, ids[1:], "delete", follow_redirects=True)
    assert "Moved 2 messages to Trash." in response.data.decode()
    assert {fresh(Message, i).folder_id for i in ids[1:]} == {trash.id}
    response = bulk(reader, trash.id, ids[1:], "delete", follow_redirects=True)
    assert "Deleted 2 messages for good." in response.data.decode()
    assert fresh(Message, ids[1]) is None and fresh(Message, ids[2]) is None


@pytest.mark.parametrize("data,error", [
    ({"action": "read"}, "Select at least one message."),
    ({"ids": ["1"], "action": "move", "target_folder": "0"}, "Choose the folder to move to."),
    ({"ids": ["1"], "action": "explode"}, "Invalid value"),
    ({"ids": ["x"], "action": "read"}, "could not be coerced"),
])
def test_bulk_refusals_are_explained(reader, user, data, error):
    inbox = folder(user, "inbox")
    message = deliver_raw(user, plain_mail())
    data = {**data, "ids": [str(message.id) if i == "1" else i for i in data.get("ids", [])]}
    response = post_form(reader, f"/mail/folder/{inbox.id}/bulk", data,
                         page=f"/mail/folder/{inbox.id}", follow_redirects=True)
    assert error in response.data.decode()
    assert fresh(Message, message.id).folder_id == inbox.id


def test_bulk_without_csrf_token_is_refused(reader, user):
    inbox = folder(user, "inbox")
    message = deliver_raw(user, plain_mail())
    response = reader.post(f"/mail/folder/{inbox.id}/bulk", data={"ids": [str(message.id)], "action": "delete"})
    assert response.status_code == 400
    assert fresh(Message, message.id).folder_id == inbox.id


def test_folder_pages_create_rename_delete(reader, user):
    response = post_form(reader, "/mail/folders", {"name": "Deals"}, follow_redirects=True)
    assert "Folder “Deals” created." in response.data.decode()
    deals = db.session.scalar(select(Folder).where(Folder.user_id == user.id, Folder.name == "Deals"))
    response = post_form(reader, "/mail/folders", {"name": "deals"})
    assert response.status_code == 400 and "already have a folder" in response.data.decode()
    assert reader.get(f"/mail/folder/{deals.id}/rename").data.decode().count('value="Deals"') == 1
    post_form(reader, f"/mail/folder/{deals.id}/rename", {"name": "Won"})
    assert fresh(Folder, deals.id).name == "Won"
    response = post_form(reader, f"/mail/folder/{deals.id}/rename", {"name": "Inbox"})
    assert response.status_code == 400 and fresh(Folder, deals.id).name == "Won"
    message = deliver_raw(user, plain_mail())
    mailbox.move(db.session, user.id, [message.id], deals.id)
    db.session.commit()
    confirm = reader.get(f"/mail/folder/{deals.id}/delete").data.decode()
    assert "Its 1 message will be moved to Trash." in confirm
    response = post_form(reader, f"/mail/folder/{deals.id}/delete", {}, follow_redirects=True)
    assert "moved to Trash" in response.data.decode()
    assert fresh(Folder, deals.id) is None
    assert fresh(Message, message.id).folder_id == folder(user, "trash").id


def test_system_folder_pages_refuse_rename_and_delete(reader, user):
    inbox = folder(user, "inbox")
    for action in ("rename", "delete"):
        response = reader.get(f"/mail/folder/{inbox.id}/{action}", follow_redirects=True)
        assert "is a system folder" in response.data.decode()
        response = post_form(reader, f"/mail/folder/{inbox.id}/{action}", {"name": "X"},
                             page="/mail/folders", follow_redirects=True)
        assert "is a system folder" in response.data.decode()
    assert fresh(Folder, inbox.id).name == "Inbox"


def test_empty_trash_asks_first(reader, user):
    trash = folder(user, "trash")
    ids = [deliver_raw(user, plain_mail(), role="trash").id for _ in range(2)]
    listing = reader.get(f"/mail/folder/{trash.id}").data.decode()
    assert 'href="/mail/trash/empty"' in listing and "Delete forever" in listing
    confirm = reader.get("/mail/trash/empty").data.decode()
    assert "2 messages will be deleted for good" in confirm
    assert all(fresh(Message, i) is not None for i in ids)
    response = post_form(reader, "/mail/trash/empty", {}, follow_redirects=True)
    assert "2 messages deleted for good" in response.data.decode()
    assert all(fresh(Message, i) is None for i in ids)
    assert db.session.scalar(select(User.used_bytes).where(User.id == user.id)) == 0


def test_plain_message_view(reader, user, app):
    raw = plain_mail(subject="Offer", body="Dear <Jane>,\n  see https://deal.example/x.\n",
                     cc='"Bob" <bob@partner.example>')
    message = deliver_raw(user, raw)
    html = reader.get(f"/mail/message/{message.id}").data.decode()
    assert "<h1>Offer</h1>" in html
    assert "Jane Doe &lt;jane@customer.example&gt;" in html
    assert "user@acme.example" in html and "Bob &lt;bob@partner.example&gt;" in html
    assert "Mon, 23 Nov 2026 09:00 UTC" in html
    body = re.search(r'<div class="mail-text">(.*?)</div>', html, re.S).group(1)
    assert "Dear &lt;Jane&gt;," in body
    assert '<a href="https://deal.example/x" target="_blank" rel="noopener noreferrer">' in body
    assert "<iframe" not in html
    assert fresh(Message, message.id).is_read is True
    assert f'href="/mail/message/{message.id}/raw"' in html
    assert f"reply={message.id}" in html
    assert f"reply_all={message.id}" in html
    assert f"forward={message.id}" in html


def test_message_actions_from_the_view(reader, user):
    message = deliver_raw(user, plain_mail())
    page = f"/mail/message/{message.id}"
    post_form(reader, f"/mail/message/{message.id}/action", {"action": "flag"}, page=page)
    assert fresh(Message, message.id).is_flagged
    post_form(reader, f"/mail/message/{message.id}/action", {"action": "unread"}, page=page)
    assert fresh(Message, message.id).is_read is False
    spam = folder(user, "spam")
    post_form(reader, f"/mail/message/{message.id}/action", {"action": "move", "target_folder": str(spam.id)}, page=page)
    assert fresh(Message, message.id).folder_id == spam.id
    response = post_form(reader, f"/mail/message/{message.id}/action", {"action": "delete"}, page=page)
    assert response.headers["Location"] == f"/mail/folder/{spam.id}"
    assert fresh(Message, message.id).folder_id == folder(user, "trash").id
    post_form(reader, f"/mail/message/{message.id}/action", {"action": "delete"}, page=page)
    assert fresh(Message, message.id) is None


def test_html_message_is_framed_sandboxed_and_remote_images_wait(reader, user):
    message = deliver_raw(user, html_mail(
        '<p>Hi<img src="https://tracker.example/p.gif"><img src="http://tracker.example/q.gif">'
        '<img src="cid:logo@x"></p><script>alert(1)</script>', text="Hi",
        inline_images={"logo@x": PNG}))
    html = reader.get(f"/mail/message/{message.id}").data.decode()
    frame = re.search(r"<iframe[^>]*>", html, re.S).group(0)
    assert 'sandbox="allow-popups allow-popups-to-escape-sandbox"' in frame
    assert "allow-scripts" not in frame and "allow-same-origin" not in frame
    assert f'src="/mail/message/{message.id}/body"' in frame
    assert "2 remote images blocked" in html
    assert f'href="/mail/message/{message.id}?remote=1"' in html
    body = reader.get(f"/mail/message/{message.id}/body")
    csp = body.headers["Content-Security-Policy"]
    assert csp.startswith("default-src 'none'; img-src 'self' data:; style-src 'unsafe-inline';")
    assert "frame-ancestors 'self'" in csp and "script-src" not in csp
    text = body.data.decode()
    assert "tracker.example" not in text and "<script" not in text
    assert re.search(rf'src="/mail/message/{message.id}/cid/logo@x\?t=[\w.-]+"', text)
    shown = reader.get(f"/mail/message/{message.id}?remote=1").data.decode()
    assert "remote images blocked" not in shown
    assert f'src="/mail/message/{message.id}/body?remote=1"' in shown
    allowed = reader.get(f"/mail/message/{message.id}/body?remote=1")
    assert "img-src 'self' data: https: http:;" in allowed.headers["Content-Security-Policy"]
    assert 'src="https://tracker.example/p.gif"' in allowed.data.decode()


@pytest.mark.parametrize("raw", [b"", b"\x00\xff\xfe not a message at all", b"\xff" * 50 + b"\r\n\r\nbody"],
                         ids=["empty", "garbage", "8bit-headers"])
def test_broken_messages_still_open_with_raw_download(reader, user, raw):
    message = deliver_raw(user, raw)
    response = reader.get(f"/mail/message/{message.id}")
    assert response.status_code == 200
    assert f'href="/mail/message/{message.id}/raw"' in response.data.decode()
    with reader.get(f"/mail/message/{message.id}/raw") as download:
        assert download.data == raw


def test_message_with_lost_blob_still_opens(reader, user, app):
    message = deliver_raw(user, plain_mail(subject="Lost bytes"))
    blobs.get_store(app.config["BLOB_DIR"]).delete(message.blob_sha256)
    html = reader.get(f"/mail/message/{message.id}").data.decode()
    assert "Lost bytes" in html and "stored copy of this message is missing" in html
    assert reader.get(f"/mail/message/{message.id}/raw").status_code == 404


def test_raw_source_is_byte_exact_text_plain_download(reader, user):
    raw = plain_mail() + b"\r\ntrailing \xff\xfe bytes kept\r\n\r\n"
    message = deliver_raw(user, raw)
    with reader.get(f"/mail/message/{message.id}/raw") as response:
        assert response.data == raw
        assert response.mimetype == "text/plain"
        assert response.headers["Content-Disposition"].startswith("attachment;")
        assert response.headers["X-Content-Type-Options"] == "nosniff"


@pytest.mark.parametrize("filename,content_type,expected_type", [
    ("report.pdf", "application/pdf", "application/octet-stream"),
    ("page.html", "text/html", "application/octet-stream"),
    ("logo.svg", "image/svg+xml", "application/octet-stream"),
    ("photo.png", "image/png", "image/png"),
    ("../../etc/pass\u202ewd.txt", "text/plain", "application/octet-stream"),
    ("Angebot Müller.docx", "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
     "application/vnd.openxmlformats-officedocument.wordprocessingml.document"),
])
def test_attachment_downloads(reader, user, filename, content_type, expected_type):
    data = b"<script>alert(1)</script>" if "html" in content_type or "svg" in content_type else b"\x00payload\xff"
    message = deliver_raw(user, html_mail("<p>see attached</p>", text="see attached",
                                          attachments=[(filename, content_type, data)]))
    html = reader.get(f"/mail/message/{message.id}").data.decode()
    part_id = re.search(rf'href="/mail/message/{message.id}/part/([^"]+)"', html).group(1)
    with reader.get(f"/mail/message/{message.id}/part/{part_id}") as response:
        assert response.status_code == 200 and response.data == data
        assert response.mimetype == expected_type
        disposition = response.headers["Content-Disposition"]
        assert disposition.startswith("attachment;")
        assert "/" not in disposition.split("filename", 1)[1] and "\u202e" not in disposition
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert "sandbox" in response.headers["Content-Security-Policy"]
    assert reader.get(f"/mail/message/{message.id}/part/9.9").status_code == 404


def test_cid_images_inline_only_as_raster(reader, user):
    message = deliver_raw(user, html_mail('<p><img src="cid:logo@x"></p>', inline_images={"logo@x": PNG}))
    with reader.get(f"/mail/message/{message.id}/cid/logo@x") as response:
        assert response.status_code == 200 and response.data == PNG
        assert response.mimetype == "image/png"
        assert response.headers["Content-Disposition"].startswith("inline")
        assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert reader.get(f"/mail/message/{message.id}/cid/missing@x").status_code == 404


def test_cid_images_load_by_signed_token_without_the_session_cookie(app, client, user, login_as):
    """The sandboxed body frame's image requests carry no session cookie (cross-site for
    SameSite); the cid: URL's token names the owner and the message instead."""
    message = deliver_raw(user, html_mail('<p><img src="cid:logo@x"></p>', inline_images={"logo@x": PNG}))
    other = deliver_raw(user, html_mail('<p><img src="cid:logo@x"></p>', inline_images={"logo@x": PNG}))
    login_as(user)
    body = client.get(f"/mail/message/{message.id}/body").data.decode()
    url = re.search(r'src="([^"]+/cid/[^"]+)"', body).group(1).replace("&amp;", "&")
    anonymous = app.test_client()
    with anonymous.get(url) as response:
        assert response.status_code == 200 and response.data == PNG
    token = url.split("t=", 1)[1]
    assert anonymous.get(f"/mail/message/{other.id}/cid/logo@x?t={token}").status_code == 404
    assert anonymous.get(f"/mail/message/{message.id}/cid/logo@x?t={token}x").status_code == 404
    response = anonymous.get(f"/mail/message/{message.id}/cid/logo@x")
    assert response.status_code == 302 and "/login" in response.headers["Location"]


def test_cid_image_links_end_with_the_session(app, client, user, login_as):
    """Review finding: image links kept working for 12 h after a disable or password change,
    and outside the organization's allowed networks."""
    from webapp.models import IpRule

    message = deliver_raw(user, html_mail('<p><img src="cid:logo@x"></p>', inline_images={"logo@x": PNG}))
    login_as(user)
    body = client.get(f"/mail/message/{message.id}/body").data.decode()
    url = re.search(r'src="([^"]+/cid/[^"]+)"', body).group(1).replace("&amp;", "&")
    anonymous = app.test_client()
    db.session.add(IpRule(org_id=user.org_id, network="10.0.0.0/8"))
    db.session.commit()
    assert anonymous.get(url, environ_base={"REMOTE_ADDR": "203.0.113.5"}).status_code == 403
    with anonymous.get(url, environ_base={"REMOTE_ADDR": "10.1.2.3"}) as response:
        assert response.status_code == 200
    user.session_version += 1
    db.session.commit()
    assert anonymous.get(url, environ_base={"REMOTE_ADDR": "10.1.2.3"}).status_code == 404


def test_search_page(reader, user):
    deliver_raw(user, plain_mail(subject="Quarterly forecast", body="numbers for zeppelin corp"))
    deliver_raw(user, plain_mail(subject="Lunch"))
    index_pending(user.id)
    db.session.commit()
    html = reader.get("/mail/search?q=zeppelin").data.decode()
    assert "Quarterly forecast" in html and "Lunch" not in html
    assert "Recent messages may take a few seconds to appear in search." in html
    assert "No messages match" in reader.get("/mail/search?q=nothinglikethis").data.decode()
    inbox, spam = folder(user, "inbox"), folder(user, "spam")
    assert "Quarterly forecast" in reader.get(f"/mail/search?q=zeppelin&folder={inbox.id}").data.decode()
    assert "Quarterly forecast" not in reader.get(f"/mail/search?q=zeppelin&folder={spam.id}").data.decode()
    assert reader.get("/mail/search").status_code == 200


def test_every_mail_form_carries_a_csrf_token(reader, user):
    message = deliver_raw(user, plain_mail())
    custom = mailbox.create_folder(db.session, user.id, "Custom")
    db.session.commit()
    for path in ("/mail/", f"/mail/message/{message.id}", "/mail/folders",
                 f"/mail/folder/{custom.id}/rename", f"/mail/folder/{custom.id}/delete",
                 "/mail/trash/empty"):
        html = reader.get(path).data.decode()
        forms = re.findall(r'<form[^>]*method="post".*?</form>', html, re.S)
        assert forms, path
        assert all('name="csrf_token"' in form for form in forms), path
    assert csrf_from(reader.get("/mail/"))
