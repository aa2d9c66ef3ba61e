"""Settings » Filters pages: create, edit, rows, reorder, switch, duplicate, delete, refusals."""
from __future__ import annotations

import pytest
from sqlalchemy import func, select

from tests.conftest import post_form
from tests.factories import make_user
from tests.filters.helpers import folder, make_filter
from webapp.extensions import db
from webapp.models.filters import Filter, FilterCondition
from webapp.services.filters import ActionSpec, user_filters

NEW = "/settings/filters/new"


def form_data(target_id, **overrides):
    data = {"name": "Invoices", "match": "all", "enabled": "y",
            "conditions-0-field": "subject", "conditions-0-header_name": "",
            "conditions-0-operator": "contains", "conditions-0-value": "invoice",
            "actions-0-kind": "move", "actions-0-folder_id": str(target_id),
            "actions-0-argument": "", "save": "Save filter"}
    data.update(overrides)
    return {k: v for k, v in data.items() if v is not None}


def count_filters() -> int:
    return db.session.scalar(select(func.count()).select_from(Filter))


def test_settings_lists_the_filters_card(client, login_as, user):
    login_as(user)
    page = client.get("/settings/")
    assert b"/settings/filters" in page.data


def test_create_a_filter_with_two_conditions_and_two_actions(client, login_as, user):
    login_as(user)
    target = folder(user, name="Invoices")
    db.session.commit()
    data = form_data(target.id, **{
        "match": "any",
        "conditions-1-field": "header", "conditions-1-header_name": "List-Id",
        "conditions-1-operator": "regex", "conditions-1-value": r"news\.",
        "conditions-1-case_sensitive": "y",
        "actions-1-kind": "label", "actions-1-folder_id": "0", "actions-1-argument": "Money"})
    response = post_form(client, NEW, data)
    assert response.status_code == 302, response.data
    (filter_,) = user_filters(db.session, user.id)
    assert filter_.name == "Invoices" and not filter_.match_all and filter_.enabled
    assert [(c.field, c.header_name, c.operator, c.value, c.case_sensitive)
            for c in filter_.conditions] == [("subject", "", "contains", "invoice", False),
                                             ("header", "List-Id", "regex", r"news\.", True)]
    assert [(a.kind, a.folder_id, a.argument) for a in filter_.actions] == [
        ("move", target.id, ""), ("label", None, "Money")]
    listing = client.get("/settings/filters")
    assert b"Invoices" in listing.data and b"Money" in listing.data


def test_move_to_sent_is_offered(client, login_as, user):
    login_as(user)
    page = client.get(NEW)
    assert f'value="{folder(user, role="sent").id}">Sent<'.encode() in page.data


@pytest.mark.parametrize("overrides, message", [
    ({"conditions-0-value": "   "}, b"Enter the text this condition looks for."),
    ({"conditions-0-operator": "regex", "conditions-0-value": "(unclosed"},
     b"The regular expression does not compile: missing )"),
    ({"conditions-0-field": "header", "conditions-0-header_name": ""},
     b"Give the header&#39;s name"),
    ({"actions-0-folder_id": "999999"}, b"That folder no longer exists; choose another."),
    ({"actions-0-folder_id": "0"}, b"Choose the folder to move to."),
    ({"actions-0-kind": "label", "actions-0-argument": ""}, b"Give the label a name."),
    ({"actions-0-kind": "forward", "actions-0-argument": "not an address"},
     b"Give one email address to forward to."),
    ({"name": ""}, b"Give the filter a name."),
])
def test_bad_input_is_refused_with_a_clear_message(client, login_as, user, overrides, message):
    login_as(user)
    target = folder(user, name="Invoices")
    db.session.commit()
    response = post_form(client, NEW, form_data(target.id, **overrides))
    assert response.status_code == 200
    assert message in response.data, response.data.decode()
    assert count_filters() == 0
    # Nothing typed is lost: the page shows the values again.
    if overrides.get("conditions-0-value", "").strip():
        assert overrides["conditions-0-value"].encode() in response.data


def test_a_folder_deleted_while_editing_is_refused(client, login_as, user):
    """The folder list was shown, then the folder went away before Save."""
    login_as(user)
    target = folder(user, name="Soon gone")
    db.session.commit()
    page = client.get(NEW)
    db.session.delete(target)
    db.session.commit()
    from tests.conftest import csrf_from

    response = client.post(NEW, data={**form_data(target.id), "csrf_token": csrf_from(page)})
    assert b"That folder no longer exists; choose another." in response.data
    assert count_filters() == 0


def test_add_and_remove_rows_re_render_without_saving(client, login_as, user):
    login_as(user)
    target = folder(user, name="Invoices")
    db.session.commit()
    data = form_data(target.id, save=None, add_condition="Add condition")
    response = post_form(client, NEW, data)
    assert response.status_code == 200 and count_filters() == 0
    assert b'name="conditions-1-value"' in response.data
    assert b'value="invoice"' in response.data  # the typed row is kept
    data = form_data(target.id, save=None, add_action="Add action")
    assert b'name="actions-1-kind"' in post_form(client, NEW, data).data
    data = form_data(target.id, save=None, **{
        "conditions-1-field": "subject", "conditions-1-operator": "contains",
        "conditions-1-value": "second", "remove_condition": "0"})
    response = post_form(client, NEW, data)
    assert b'value="second"' in response.data and b'value="invoice"' not in response.data


def test_no_actions_is_refused(client, login_as, user):
    login_as(user)
    for kind in ("", "nonsense"):
        response = post_form(client, NEW, form_data(0, **{"actions-0-kind": kind}))
        assert response.status_code == 200 and count_filters() == 0
        assert b"a filter needs at least one" in response.data or b"Not a valid choice" \
            in response.data


def test_edit_replaces_conditions_and_actions(client, login_as, user):
    login_as(user)
    first, second = folder(user, name="First"), folder(user, name="Second")
    filter_ = make_filter(user, [("subject", "contains", "old")], [ActionSpec("move", first.id)])
    url = f"/settings/filters/{filter_.id}/edit"
    page = client.get(url)
    assert b'value="old"' in page.data
    response = post_form(client, url, form_data(second.id, name="Renamed", **{
        "conditions-0-value": "new", "conditions-0-field": "from"}))
    assert response.status_code == 302
    db.session.expire_all()
    filter_ = db.session.get(Filter, filter_.id)
    assert filter_.name == "Renamed"
    assert [(c.field, c.value) for c in filter_.conditions] == [("from", "new")]
    assert [a.folder_id for a in filter_.actions] == [second.id]
    assert db.session.scalar(select(func.count()).select_from(FilterCondition)) == 1


def test_reorder_with_up_and_down(client, login_as, user):
    login_as(user)
    names = ["a", "b", "c"]
    ids = [make_filter(user, [("subject", "contains", n)], [ActionSpec("flag")], name=n).id
           for n in names]
    post_form(client, f"/settings/filters/{ids[2]}/move/up", {}, page="/settings/filters")
    db.session.expire_all()
    assert [f.name for f in user_filters(db.session, user.id)] == ["a", "c", "b"]
    post_form(client, f"/settings/filters/{ids[0]}/move/down", {}, page="/settings/filters")
    db.session.expire_all()
    assert [f.name for f in user_filters(db.session, user.id)] == ["c", "a", "b"]
    post_form(client, f"/settings/filters/{ids[2]}/move/up", {}, page="/settings/filters")
    db.session.expire_all()
    assert [f.name for f in user_filters(db.session, user.id)] == ["c", "a", "b"]


def test_toggle_duplicate_delete(client, login_as, user):
    login_as(user)
    filter_ = make_filter(user, [("subject", "contains", "x")], [ActionSpec("flag")], name="Orig")
    post_form(client, f"/settings/filters/{filter_.id}/toggle", {}, page="/settings/filters")
    db.session.expire_all()
    assert not db.session.get(Filter, filter_.id).enabled
    response = post_form(client, f"/settings/filters/{filter_.id}/duplicate", {},
                         page="/settings/filters")
    assert response.status_code == 302
    db.session.expire_all()
    names = [(f.name, f.enabled) for f in user_filters(db.session, user.id)]
    assert names == [("Orig", False), ("Copy of Orig", False)]
    confirm = client.get(f"/settings/filters/{filter_.id}/delete")
    assert b"Delete the filter" in confirm.data and count_filters() == 2
    response = post_form(client, f"/settings/filters/{filter_.id}/delete", {"submit": "Delete"})
    assert response.status_code == 302
    db.session.expire_all()
    assert [f.name for f in user_filters(db.session, user.id)] == ["Copy of Orig"]


def test_filter_with_deleted_folder_shows_a_notice_and_cannot_be_turned_on(client, login_as, user):
    login_as(user)
    target = folder(user, name="Gone")
    filter_ = make_filter(user, [("subject", "contains", "x")], [ActionSpec("move", target.id)])
    db.session.delete(target)
    db.session.commit()
    listing = client.get("/settings/filters")
    assert b"the folder this filter moved mail to was deleted" in listing.data
    assert b"(deleted folder)" in listing.data
    response = post_form(client, f"/settings/filters/{filter_.id}/toggle", {},
                         page="/settings/filters", follow_redirects=True)
    assert b"no longer exists" in response.data
    db.session.expire_all()
    assert not db.session.get(Filter, filter_.id).enabled


@pytest.mark.parametrize("method, path", [
    ("get", "/edit"), ("get", "/delete"), ("get", "/test"), ("post", "/delete"),
    ("post", "/toggle"), ("post", "/duplicate"), ("post", "/move/up"), ("post", "/apply"),
])
def test_another_users_filter_is_404(client, login_as, user, org, method, path):
    other = make_user(org)
    theirs = make_filter(other, [("subject", "contains", "x")], [ActionSpec("flag")])
    login_as(user)
    url = f"/settings/filters/{theirs.id}{path}"
    if method == "get":
        assert client.get(url).status_code == 404
    else:
        assert post_form(client, url, {}, page="/settings/filters").status_code == 404
    db.session.expire_all()
    assert db.session.get(Filter, theirs.id).enabled


def test_pages_need_a_login(client):
    assert client.get("/settings/filters").status_code in (302, 401)
