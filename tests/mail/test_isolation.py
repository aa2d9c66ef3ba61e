"""Every mail route answers 404 for another user's message, folder, attachment or image id."""
from __future__ import annotations

from sqlalchemy import select

from tests import factories
from tests.conftest import csrf_from
from tests.mail.helpers import deliver_raw, folder, html_mail
from tests.mail.test_views import PNG
from webapp.extensions import db
from webapp.models import Folder, Message
from webapp.services import mailbox
from webapp.services.mime import parse_message

# The route arguments this walk knows how to fill with someone's ids.
KNOWN_ARGUMENTS = {"message_id", "folder_id", "part_id", "content_id"}
MY_MODULES = {"webapp.mail.index", "webapp.mail.folders", "webapp.mail.messages",
              "webapp.mail.search"}


def mailbox_of(user) -> dict:
    """A user's custom folder and an HTML message with a cid: image and an attachment."""
    custom = mailbox.create_folder(db.session, user.id, "Deals")
    db.session.commit()
    raw = html_mail('<p><img src="cid:logo@x"> hello</p>', text="hello",
                    inline_images={"logo@x": PNG},
                    attachments=[("offer.pdf", "application/pdf", b"%PDF-1.4")])
    message = deliver_raw(user, raw)
    return {"message_id": message.id, "folder_id": custom.id,
            "part_id": parse_message(raw).attachments[0].part_id, "content_id": "logo@x"}


def build(app, rule, ids: dict) -> str:
    """The URL of a rule with these ids."""
    return app.url_map.bind("localhost").build(rule.endpoint, {n: ids[n] for n in rule.arguments})


def walkable_rules(app):
    """Every mail.* rule whose arguments the walk can fill (and the ones it cannot)."""
    rules, unknown = [], []
    for rule in app.url_map.iter_rules():
        if not rule.endpoint.startswith("mail.") or not rule.arguments:
            continue
        (rules if rule.arguments <= KNOWN_ARGUMENTS else unknown).append(rule)
    return rules, unknown


def test_every_mail_route_404s_for_another_users_ids(app, client, org, user, login_as):
    other = factories.make_user(org)
    theirs = mailbox_of(other)
    mine = mailbox_of(user)
    login_as(user)
    token = csrf_from(client.get("/mail/"))
    rules, unknown = walkable_rules(app)
    covered = {app.view_functions[r.endpoint].__module__ for r in rules}
    assert MY_MODULES - {"webapp.mail.index", "webapp.mail.search"} <= covered
    assert not [r for r in unknown if app.view_functions[r.endpoint].__module__ in MY_MODULES]
    tried = []
    for rule in rules:
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            url = build(app, rule, theirs)
            data = {"csrf_token": token, "action": "delete", "ids": [str(mine["message_id"])],
                    "target_folder": str(theirs["folder_id"]), "name": "Mine now"}
            response = client.open(url, method=method, data=data if method == "POST" else None)
            assert response.status_code == 404, (method, url, response.status_code)
            response.close()
            tried.append((method, rule.endpoint))
            # The same route with the user's own ids answers (the walk can fail).
            if method == "GET":
                own = build(app, rule, mine)
                with client.get(own) as response:
                    assert response.status_code in (200, 302), (own, response.status_code)
    assert len(tried) >= 9
    # Moving my message into their folder is refused as well (the target is checked too).
    response = client.post(f"/mail/folder/{folder(user, 'inbox').id}/bulk",
                           data={"csrf_token": token, "action": "move",
                                 "ids": [str(mine["message_id"])],
                                 "target_folder": str(theirs["folder_id"])})
    assert response.status_code == 404
    assert client.get(f"/mail/search?q=hello&folder={theirs['folder_id']}").status_code == 404
    db.session.expire_all()
    message = db.session.get(Message, theirs["message_id"])
    assert message is not None and message.folder_id == folder(other, "inbox").id
    assert message.is_read is False and message.is_flagged is False
    assert db.session.get(Folder, theirs["folder_id"]).name == "Deals"
    assert db.session.scalar(select(Message.folder_id).where(Message.id == mine["message_id"])) \
        == folder(user, "inbox").id


def test_anonymous_is_sent_to_login_everywhere(app, client, user):
    ids = mailbox_of(user)
    rules, _unknown = walkable_rules(app)
    for rule in rules + [r for r in app.url_map.iter_rules()
                         if r.endpoint.startswith("mail.") and not r.arguments]:
        if "GET" not in rule.methods or rule.arguments - KNOWN_ARGUMENTS:
            continue
        url = build(app, rule, ids)
        response = client.get(url)
        assert response.status_code == 302 and "/login" in response.headers["Location"], url
