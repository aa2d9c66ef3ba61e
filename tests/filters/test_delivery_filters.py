"""Filters at delivery: every operator and action, order, stop, all/any, regex time limit."""
from __future__ import annotations


import pytest
from sqlalchemy import select

from tests.filters.helpers import folder, hosted, make_filter, make_raw
from webapp.extensions import db
from webapp.models import Folder, Message
from webapp.models.filters import Filter, FilterCondition
from webapp.services.delivery import deliver
from webapp.services.mailbox import delete_folder
from webapp.services.filters import (FOLDER_GONE_NOTICE, ActionSpec, FilterError,
                                     create_sent_mail_filter, decide, facts_from_envelope,
                                     filter_matches, filter_name_for, labels_for)
from webapp.services.mime import parse_envelope


RAW = make_raw(extra_headers=[("List-Id", "Newsletter <news.lists.example>")])


def decide_for(user, raw=RAW):
    return decide(db.session, user.id, parse_envelope(raw), raw)


@pytest.mark.parametrize("field, operator, value, header, expected", [
    ("from", "contains", "customer.example", "", True),
    ("from", "contains", "JANE DOE", "", True),  # display name, case-insensitive
    ("from", "contains", "nobody", "", False),
    ("from", "not_contains", "nobody", "", True),
    ("from", "not_contains", "jane", "", False),
    ("from", "is", "jane@customer.example", "", True),
    ("from", "is", "jane@customer", "", False),
    ("from", "starts_with", "jane@", "", True),
    ("from", "starts_with", "customer", "", False),
    ("from", "ends_with", "@customer.example", "", True),
    ("from", "ends_with", "@customer", "", False),
    ("from", "regex", r"^jane@.*\.example$", "", True),
    ("from", "regex", r"^bob@", "", False),
    ("to", "is", "user@acme.example", "", True),
    ("to", "contains", "boss", "", False),
    ("cc", "is", "boss@acme.example", "", True),
    ("cc", "contains", "user@", "", False),
    ("to_or_cc", "contains", "boss@", "", True),
    ("to_or_cc", "contains", "user@", "", True),
    ("to_or_cc", "contains", "jane", "", False),
    ("subject", "contains", "overdue", "", True),
    ("subject", "is", "invoice 2026-11 overdue", "", True),
    ("subject", "starts_with", "Invoice", "", True),
    ("subject", "ends_with", "overdue", "", True),
    ("subject", "regex", r"\d{4}-\d{2}", "", True),
    ("subject", "not_contains", "invoice", "", False),
    ("body", "contains", "by friday", "", True),
    ("body", "not_contains", "by friday", "", False),
    ("body", "regex", r"pay\s+the", "", True),
    ("header", "contains", "news.lists.example", "List-Id", True),
    ("header", "is", "Newsletter <news.lists.example>", "list-id", True),
    ("header", "contains", "anything", "X-Not-There", False),
    ("header", "not_contains", "anything", "X-Not-There", True),
])
def test_every_operator_on_every_field(field, operator, value, header, expected):
    condition = FilterCondition(field=field, operator=operator, value=value, header_name=header,
                                case_sensitive=False)
    filter_ = Filter(id=1, match_all=True, conditions=[condition])
    assert filter_matches(filter_, facts_from_envelope(parse_envelope(RAW), RAW)) is expected


def test_an_operator_at_delivery_through_the_database(app, user):
    target = folder(user, name="Matched")
    make_filter(user, [("header", "contains", "news.lists", "List-Id")],
                [ActionSpec("move", target.id)])
    assert decide_for(user).folder_id == target.id


def test_case_sensitive_condition(app, user):
    target = folder(user, name="Exact")
    filter_ = make_filter(user, [("subject", "contains", "INVOICE")],
                          [ActionSpec("move", target.id)])
    assert decide_for(user).folder_id == target.id
    filter_.conditions[0].case_sensitive = True
    db.session.commit()
    assert decide_for(user).folder_id is None


@pytest.mark.parametrize("action", ["move", "mark_read", "flag", "label", "trash", "stop"])
def test_every_action_at_delivery(app, user, action):
    target = folder(user, name="Invoices")
    spec = {"move": ActionSpec("move", target.id), "label": ActionSpec("label", argument="Money")}
    make_filter(user, [("subject", "contains", "invoice")],
                [spec.get(action, ActionSpec(action))], name="Invoices rule")
    message = deliver(db.session, hosted(user), RAW, f"k-{action}").message
    db.session.commit()
    expected_folder = {"move": target.id, "trash": folder(user, role="trash").id}.get(
        action, folder(user, role="inbox").id)
    assert message.folder_id == expected_folder
    assert message.is_read is (action == "mark_read")
    assert message.is_flagged is (action == "flag")
    assert labels_for(db.session, message.id) == (["Money"] if action == "label" else [])
    assert filter_name_for(db.session, message.id) == "Invoices rule"


def test_forward_action_queues_through_send_mail_as(app, user):
    from webapp.models.sending import OutgoingMessage

    make_filter(user, [("subject", "contains", "invoice")],
                [ActionSpec("forward", argument="accounts@elsewhere.example")])
    message = deliver(db.session, hosted(user), RAW, "fwd").message
    db.session.commit()
    assert message.folder_id == folder(user, role="inbox").id
    assert db.session.scalar(select(OutgoingMessage).where(OutgoingMessage.user_id == user.id))


@pytest.mark.parametrize("auto_submitted, forwarded", [("auto-replied", False),
                                                      ("auto-generated", False), ("no", True)])
def test_automatic_mail_is_never_forwarded(app, user, auto_submitted, forwarded):
    """RFC 3834: forwarding bounces and autoreplies could loop between two mailboxes."""
    from webapp.models.sending import OutgoingMessage

    make_filter(user, [("subject", "contains", "invoice")],
                [ActionSpec("forward", argument="accounts@elsewhere.example")])
    raw = make_raw(extra_headers=[("Auto-Submitted", auto_submitted)])
    message = deliver(db.session, hosted(user), raw, "auto").message
    db.session.commit()
    assert message.folder_id == folder(user, role="inbox").id
    queued = db.session.scalar(select(OutgoingMessage).where(OutgoingMessage.user_id == user.id))
    assert (queued is not None) is forwarded


def test_filters_run_in_order_and_the_last_move_places(app, user):
    first, second = folder(user, name="First"), folder(user, name="Second")
    make_filter(user, [("subject", "contains", "invoice")], [ActionSpec("move", first.id),
                                                             ActionSpec("flag")], name="one")
    make_filter(user, [("from", "contains", "jane")], [ActionSpec("move", second.id)], name="two")
    decision = decide_for(user)
    assert decision.folder_id == second.id and decision.is_flagged
    assert decision.filter_name == "two"


def test_stop_processing_skips_later_filters(app, user):
    first, second = folder(user, name="First"), folder(user, name="Second")
    make_filter(user, [("subject", "contains", "invoice")],
                [ActionSpec("move", first.id), ActionSpec("stop")], name="one")
    make_filter(user, [("from", "contains", "jane")],
                [ActionSpec("move", second.id), ActionSpec("mark_read")], name="two")
    decision = decide_for(user)
    assert decision.folder_id == first.id and not decision.is_read
    assert decision.filter_name == "one"


def test_disabled_filters_do_not_run(app, user):
    make_filter(user, [("subject", "contains", "invoice")], [ActionSpec("flag")], enabled=False)
    assert not decide_for(user).is_flagged


@pytest.mark.parametrize("match_all, expected", [(True, False), (False, True)])
def test_match_all_versus_any(app, user, match_all, expected):
    make_filter(user, [("subject", "contains", "invoice"), ("from", "contains", "nobody")],
                [ActionSpec("flag")], match_all=match_all)
    assert decide_for(user).is_flagged is expected


def test_body_is_parsed_only_when_a_body_condition_needs_it(app, user):
    """A body condition costs a full parse; filters without one must not pay it."""
    make_filter(user, [("subject", "contains", "invoice")], [ActionSpec("flag")])
    assert not decide_for(user).body_parsed
    make_filter(user, [("body", "contains", "friday")], [ActionSpec("mark_read")])
    make_filter(user, [("body", "contains", "pay")], [ActionSpec("label", argument="x")])
    decision = decide_for(user)
    assert decision.body_parsed and decision.is_read and decision.labels == ["x"]


@pytest.mark.parametrize("pattern", [r"(a|aa)+$", r"(a+)+$"])
def test_catastrophic_regex_finishes_quickly_with_no_match(app, user, pattern):
    """A pattern with exponential backtracking cannot stall delivery (issue 6)."""
    target = folder(user, name="Never")
    filter_ = make_filter(user, [("subject", "regex", pattern)], [ActionSpec("move", target.id)])
    raw = make_raw(subject="a" * 30 + "b")
    message = deliver(db.session, hosted(user), raw, "redos").message
    db.session.commit()
    assert message.folder_id == folder(user, role="inbox").id  # no match, delivered
    db.session.refresh(filter_)
    if pattern == r"(a|aa)+$":  # the regex package short-cuts (a+)+ itself; this one it cannot
        assert filter_.regex_timeouts == 1 and filter_.last_regex_timeout_at is not None


def test_deleted_target_folder_disables_the_filter_and_mail_goes_to_inbox(app, user):
    target = folder(user, name="Gone soon")
    filter_ = make_filter(user, [("subject", "contains", "invoice")],
                          [ActionSpec("move", target.id), ActionSpec("flag")])
    delete_folder(db.session, user.id, target.id)  # the mailbox's own folder deletion
    db.session.commit()
    message = deliver(db.session, hosted(user), RAW, "after-delete").message
    db.session.commit()
    assert message.folder_id == folder(user, role="inbox").id
    assert not message.is_flagged
    db.session.refresh(filter_)
    assert not filter_.enabled and filter_.notice == FOLDER_GONE_NOTICE
    assert filter_.actions[0].folder_id is None


def test_sent_mail_filter_moves_own_messages_to_sent(app, user):
    """The POP sent-mail filter: a message From the user's own address lands in Sent."""
    create_sent_mail_filter(db.session, user.id, "Me@Gmail.example")
    db.session.commit()
    own = deliver(db.session, hosted(user), make_raw(sender="Me <me@gmail.example>", n=1),
                  "own").message
    other = deliver(db.session, hosted(user), make_raw(n=2), "other").message
    db.session.commit()
    assert own.folder_id == folder(user, role="sent").id
    assert other.folder_id == folder(user, role="inbox").id


def test_sent_mail_filter_is_idempotent(app, user):
    first = create_sent_mail_filter(db.session, user.id, "me@gmail.example")
    again = create_sent_mail_filter(db.session, user.id, "ME@gmail.example")
    db.session.commit()
    assert first.id == again.id
    assert db.session.query(Filter).filter_by(user_id=user.id).count() == 1
    with pytest.raises(FilterError):
        create_sent_mail_filter(db.session, user.id, "  ")


def test_message_view_can_name_the_filter_even_after_it_is_deleted(app, user):
    target = folder(user, name="Kept")
    filter_ = make_filter(user, [("subject", "contains", "invoice")],
                          [ActionSpec("move", target.id)], name="Invoices")
    message = deliver(db.session, hosted(user), RAW, "named").message
    db.session.commit()
    assert filter_name_for(db.session, message.id) == "Invoices"
    db.session.delete(filter_)
    db.session.commit()
    assert filter_name_for(db.session, message.id) == "Invoices"


def test_other_users_filters_never_apply(app, user, org):
    from tests.factories import make_user

    other = make_user(org)
    make_filter(other, [("subject", "contains", "invoice")], [ActionSpec("flag")])
    message = deliver(db.session, hosted(user), RAW, "mine").message
    db.session.commit()
    assert not message.is_flagged
    assert db.session.scalar(select(Folder.user_id).where(Folder.id == message.folder_id)) \
        == user.id
    assert db.session.get(Message, message.id).user_id == user.id
