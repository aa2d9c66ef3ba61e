"""Mail filters: evaluation at delivery, dry run and apply on stored mail, and editing.

One matching function (`_Matcher.matches`) serves delivery, the dry run and "apply to
existing messages", over the same facts (subject, stored addresses, headers, body), so
the count the apply changes is the count the dry run showed.

Nothing a filter does may lose a message: a move whose folder is gone disables the
filter with a notice and leaves the message where delivery would have put it (Inbox),
and a regular expression that runs too long counts as "no match" (and is recorded).
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.parser import BytesHeaderParser
from email.policy import compat32

import regex
from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.orm import Session, selectinload

from webapp.models import Folder, Message, MessageAddress, User
from webapp.models._types import utcnow
from webapp.models.filters import (ACTION_KINDS, CONDITION_FIELDS, CONDITION_OPERATORS, Filter,
                                   FilterAction, FilterCondition, FilterRun, Label,
                                   MessageFilterHit, MessageLabel)
from webapp.services.mime import Envelope, decode_header_value, parse_message

log = logging.getLogger("skydesk.filters")

# Long enough for any sane pattern on a large body, short enough that a catastrophic one
# cannot hold up a delivery batch.
REGEX_TIMEOUT_SECONDS = 0.05
MAX_REGEX_CHARS = 500
# Over a whole mailbox (dry run, apply), a pattern that timed out this often is given up
# on: the rest count as "no match" at once instead of costing the time limit each.
SLOW_PATTERN_STRIKES = 3
# Folders whose mail "apply to existing messages" and the dry run look at.
EXCLUDED_ROLES = ("trash", "spam", "drafts")
BATCH = 500
PREVIEW = 20

ADDRESS_ROLES = {"from": ("from", "sender"), "to": ("to",), "cc": ("cc",),
                 "to_or_cc": ("to", "cc")}
FIELD_LABELS = {"from": "Sender (From or Sender)", "to": "To", "cc": "Cc", "to_or_cc": "To or Cc",
                "subject": "Subject", "body": "Body", "header": "Header named…"}
OPERATOR_LABELS = {"contains": "contains", "not_contains": "does not contain", "is": "is",
                   "starts_with": "starts with", "ends_with": "ends with",
                   "regex": "matches the regular expression"}
ACTION_LABELS = {"move": "Move to folder", "mark_read": "Mark as read", "flag": "Flag",
                 "label": "Add label", "trash": "Move to Trash",
                 "forward": "Forward to (through your Send Mail As)",
                 "stop": "Stop processing later filters"}
FOLDER_GONE_NOTICE = ("Turned off: the folder this filter moved mail to was deleted. "
                      "Matching mail now stays in the Inbox; choose another folder and turn "
                      "the filter back on.")


class FilterError(ValueError):
    """A filter that cannot be saved as given; the message says what to fix."""


@dataclass
class FilterDecision:
    """What the user's filters decided for one incoming message."""

    folder_id: int | None = None  # None: the folder the delivery asked for
    is_read: bool = False
    is_flagged: bool = False
    filter_id: int | None = None  # the filter that placed the message (or first that acted)
    actions: list[str] = field(default_factory=list)  # "<filter id>:<kind>", for the log
    filter_name: str = ""
    labels: list[str] = field(default_factory=list)
    forward_to: list[str] = field(default_factory=list)
    regex_timeouts: int = 0
    body_parsed: bool = False  # a body condition made delivery parse the whole message


@dataclass
class ConditionSpec:
    """A condition as plain values (from a form, the CLI or code)."""

    field: str
    operator: str
    value: str
    header_name: str = ""
    case_sensitive: bool = False


@dataclass
class ActionSpec:
    """An action as plain values."""

    kind: str
    folder_id: int | None = None
    argument: str = ""


@dataclass
class FilterSpec:
    """A whole filter as plain values."""

    name: str
    conditions: list[ConditionSpec]
    actions: list[ActionSpec]
    match_all: bool = True
    enabled: bool = True


# --- the facts a condition reads -------------------------------------------------------

@dataclass
class MessageFacts:
    """What conditions test; headers and body are read only when a condition asks."""

    subject: str
    addresses: list[tuple[str, str, str]]  # (role, email, name), as stored on MessageAddress
    raw_loader: Callable[[], bytes]
    _raw: bytes | None = None
    _headers: object | None = None
    _body: str | None = None

    def raw(self) -> bytes:
        """The raw bytes, loaded once."""
        if self._raw is None:
            self._raw = self.raw_loader()
        return self._raw

    def header_values(self, name: str) -> list[str]:
        """Every value of the named header, decoded; the header block is parsed once."""
        if self._headers is None:
            try:
                self._headers = BytesHeaderParser(policy=compat32).parsebytes(self.raw())
            except Exception:  # a broken header block: no header matches rather than a crash
                log.warning("unparsable header block", exc_info=True)
                self._headers = {}
        values = self._headers.get_all(name, []) if self._headers else []
        return [decode_header_value(str(v)) for v in values]

    def body(self) -> str:
        """The message's text (a full parse, done at most once per message)."""
        if self._body is None:
            self._body = parse_message(self.raw()).text
        return self._body


def facts_from_envelope(envelope: Envelope, raw: bytes) -> MessageFacts:
    """Facts of an incoming message, the same values deliver() stores for it."""
    addresses = [(a.role, a.email[:320], a.name[:320]) for a in envelope.addresses if a.email]
    return MessageFacts(subject=envelope.subject, addresses=addresses, raw_loader=lambda: raw,
                        _raw=raw)


# --- matching ----------------------------------------------------------------------------

_CONDITION_COST = {"header": 1, "body": 2}


class _Matcher:
    """Evaluates filters; compiles each regular expression once and counts timeouts."""

    def __init__(self, timeout: float = REGEX_TIMEOUT_SECONDS):
        self.timeout = timeout
        self._compiled: dict[tuple[str, bool], regex.Pattern | None] = {}
        self.timeouts: dict[int, int] = {}
        self._slow: dict[tuple[str, bool], int] = {}

    def _pattern(self, value: str, case_sensitive: bool):
        key = (value, case_sensitive)
        if key not in self._compiled:
            try:
                self._compiled[key] = compile_regex(value, case_sensitive)
            except FilterError:
                self._compiled[key] = None  # saved before a rule change: never matches
        return self._compiled[key]

    def _candidates(self, condition: FilterCondition, facts: MessageFacts) -> list[str]:
        if condition.field in ADDRESS_ROLES:
            roles = ADDRESS_ROLES[condition.field]
            values = []
            for role, email, name in facts.addresses:
                if role in roles:
                    values.append(email)
                    if name:
                        values.append(name)
            return values
        if condition.field == "subject":
            return [facts.subject]
        if condition.field == "body":
            return [facts.body()]
        return facts.header_values(condition.header_name)

    def condition_matches(self, condition: FilterCondition, facts: MessageFacts,
                          filter_id: int) -> bool:
        """Whether one condition holds; a regex timeout counts as "no match"."""
        values = self._candidates(condition, facts)
        operator = condition.operator
        if operator == "regex":
            key = (condition.value, condition.case_sensitive)
            pattern = self._pattern(*key)
            if pattern is None or self._slow.get(key, 0) >= SLOW_PATTERN_STRIKES:
                return False
            for value in values:
                try:
                    if pattern.search(value, timeout=self.timeout):
                        return True
                except TimeoutError:
                    self.timeouts[filter_id] = self.timeouts.get(filter_id, 0) + 1
                    self._slow[key] = self._slow.get(key, 0) + 1
                    log.warning("filter %s: regular expression timed out", filter_id)
                    return False
            return False
        wanted = condition.value if condition.case_sensitive else condition.value.casefold()
        folded = values if condition.case_sensitive else [v.casefold() for v in values]
        if operator == "contains":
            return any(wanted in v for v in folded)
        if operator == "not_contains":
            return not any(wanted in v for v in folded)
        if operator == "is":
            return any(v.strip() == wanted.strip() for v in folded)
        if operator == "starts_with":
            return any(v.startswith(wanted) for v in folded)
        if operator == "ends_with":
            return any(v.endswith(wanted) for v in folded)
        return False

    def matches(self, filter_: Filter, facts: MessageFacts) -> bool:
        """Whether the filter's conditions hold (all or any) for the message."""
        if not filter_.conditions:
            return False
        # Cheap conditions first: reading the raw message (headers) or parsing it (body)
        # is skipped when the outcome is already known.
        ordered = sorted(filter_.conditions, key=lambda c: _CONDITION_COST.get(c.field, 0))
        test = (lambda c: self.condition_matches(c, facts, filter_.id))
        return all(map(test, ordered)) if filter_.match_all else any(map(test, ordered))


def filter_matches(filter_: Filter, facts: MessageFacts,
                   timeout: float = REGEX_TIMEOUT_SECONDS) -> bool:
    """Whether one filter's conditions hold for a message (the rule delivery and apply share)."""
    return _Matcher(timeout).matches(filter_, facts)


def compile_regex(pattern: str, case_sensitive: bool = False):
    """Compile a user's pattern, or raise FilterError with the compiler's own words."""
    if len(pattern) > MAX_REGEX_CHARS:
        raise FilterError(f"The regular expression is longer than {MAX_REGEX_CHARS} characters.")
    flags = 0 if case_sensitive else regex.IGNORECASE | regex.FULLCASE
    try:
        return regex.compile(pattern, flags)
    except (regex.error, ValueError, OverflowError) as exc:
        raise FilterError(f"The regular expression does not compile: {exc}") from exc


def _record_timeouts(session: Session, filters: list[Filter], timeouts: dict[int, int]) -> None:
    for filter_ in filters:
        count = timeouts.get(filter_.id)
        if count:
            filter_.regex_timeouts = Filter.regex_timeouts + count
            filter_.last_regex_timeout_at = utcnow()


# --- at delivery -------------------------------------------------------------------------

def _enabled_filters(session: Session, user_id: int) -> list[Filter]:
    return list(session.scalars(
        select(Filter).where(Filter.user_id == user_id, Filter.enabled.is_(True))
        .order_by(Filter.position, Filter.id)
        .options(selectinload(Filter.conditions), selectinload(Filter.actions))))


def _user_folders(session: Session, user_id: int) -> dict[int, str | None]:
    rows = session.execute(select(Folder.id, Folder.role).where(Folder.user_id == user_id))
    return {folder_id: role for folder_id, role in rows}


def _broken(filter_: Filter, folders: dict[int, str | None]) -> bool:
    return any(a.kind == "move" and (a.folder_id is None or a.folder_id not in folders)
               for a in filter_.actions)


def _disable_for_missing_folder(filter_: Filter) -> None:
    filter_.enabled = False
    filter_.notice = FOLDER_GONE_NOTICE
    log.warning("filter %s disabled: its target folder is gone", filter_.id)


class DeliveryFilters:
    """A user's enabled filters and folders, loaded once for a whole batch of deliveries."""

    def __init__(self, session: Session, user_id: int):
        self.session, self.user_id = session, user_id
        self.filters = _enabled_filters(session, user_id)
        self.folders = _user_folders(session, user_id) if self.filters else {}
        self.trash_id = next((fid for fid, role in self.folders.items() if role == "trash"), None)
        self.matcher = _Matcher()
        self._recorded: dict[int, int] = {}

    def decide(self, envelope: Envelope, raw: bytes) -> FilterDecision:
        """Run the filters, in order, on one incoming message."""
        decision = FilterDecision()
        if not self.filters:
            return decision
        facts = facts_from_envelope(envelope, raw)
        before = sum(self.matcher.timeouts.values())
        placed_by: Filter | None = None
        first_acting: Filter | None = None
        for filter_ in self.filters:
            if not filter_.enabled:
                continue  # turned off earlier in this batch
            if _broken(filter_, self.folders):
                _disable_for_missing_folder(filter_)
                continue
            if not self.matcher.matches(filter_, facts):
                continue
            first_acting = first_acting or filter_
            stop = False
            for action in filter_.actions:
                decision.actions.append(f"{filter_.id}:{action.kind}")
                if action.kind == "move":
                    decision.folder_id, placed_by = action.folder_id, filter_
                elif action.kind == "trash" and self.trash_id is not None:
                    decision.folder_id, placed_by = self.trash_id, filter_
                elif action.kind == "mark_read":
                    decision.is_read = True
                elif action.kind == "flag":
                    decision.is_flagged = True
                elif action.kind == "label" and action.argument not in decision.labels:
                    decision.labels.append(action.argument)
                elif action.kind == "forward" and action.argument not in decision.forward_to:
                    decision.forward_to.append(action.argument)
                elif action.kind == "stop":
                    stop = True
            if stop:
                break
        if decision.forward_to and _is_automatic(facts):
            # RFC 3834: never forward an automatic message (a bounce, an autoreply, a forward
            # of ours); two filters forwarding to each other would otherwise loop.
            decision.forward_to = []
        decision.regex_timeouts = sum(self.matcher.timeouts.values()) - before
        if decision.regex_timeouts:
            # One UPDATE per timed-out filter, adding only this message's timeouts.
            for filter_id, total in self.matcher.timeouts.items():
                fresh = total - self._recorded.get(filter_id, 0)
                if fresh:
                    self.session.execute(
                        update(Filter).where(Filter.id == filter_id)
                        .values(regex_timeouts=Filter.regex_timeouts + fresh,
                                last_regex_timeout_at=utcnow())
                        .execution_options(synchronize_session=False))
            self._recorded = dict(self.matcher.timeouts)
        decision.body_parsed = facts._body is not None
        chosen = placed_by or first_acting
        if chosen is not None:
            decision.filter_id, decision.filter_name = chosen.id, chosen.name
        return decision


def decide(session: Session, user_id: int, envelope: Envelope, raw: bytes) -> FilterDecision:
    """Run the user's enabled filters, in order, on one incoming message."""
    return DeliveryFilters(session, user_id).decide(envelope, raw)


def _is_automatic(facts: MessageFacts) -> bool:
    values = facts.header_values("Auto-Submitted")
    return any(v.strip().lower() not in ("", "no") for v in values)


def after_delivery(session: Session, user_id: int, message_pk: int,
                   decision: FilterDecision) -> None:
    """Side effects that need the stored message: the filter record, labels, forwards."""
    if decision.filter_id is not None:
        session.add(MessageFilterHit(message_pk=message_pk, filter_id=decision.filter_id,
                                     filter_name=decision.filter_name[:200]))
    if decision.labels:
        _add_labels(session, user_id, [message_pk], decision.labels)
    for address in decision.forward_to:
        from webapp.services.outbox import queue_forward

        # A forward that cannot be queued (daily limit, no sending address) must never
        # undo the delivery: the savepoint drops its half-written rows, the message stays.
        try:
            with session.begin_nested():
                queue_forward(session, user_id, message_pk, address)
        except Exception as exc:
            log.warning("filter %s: message %s not forwarded to %s: %s",
                        decision.filter_id, message_pk, address, exc)


def filter_name_for(session: Session, message_pk: int) -> str | None:
    """The name of the filter that placed a message, for the message view (None: no filter)."""
    return session.scalar(select(MessageFilterHit.filter_name)
                          .where(MessageFilterHit.message_pk == message_pk))


def _label_ids(session: Session, user_id: int, names: list[str]) -> list[int]:
    ids = []
    for name in names:
        label = session.scalar(select(Label).where(Label.user_id == user_id, Label.name == name))
        if label is None:
            label = Label(user_id=user_id, name=name[:100])
            session.add(label)
            session.flush()
        ids.append(label.id)
    return ids


def _add_labels(session: Session, user_id: int, message_ids: list[int], names: list[str]) -> None:
    for label_id in _label_ids(session, user_id, names):
        have = set(session.scalars(select(MessageLabel.message_pk).where(
            MessageLabel.label_id == label_id, MessageLabel.message_pk.in_(message_ids))))
        rows = [{"message_pk": mid, "label_id": label_id} for mid in message_ids if mid not in have]
        if rows:
            session.execute(insert(MessageLabel), rows)


def labels_for(session: Session, message_pk: int) -> list[str]:
    """The label names on a message, for the message view."""
    return list(session.scalars(select(Label.name).join(MessageLabel,
                                                        MessageLabel.label_id == Label.id)
                                .where(MessageLabel.message_pk == message_pk)
                                .order_by(Label.name)))


# --- stored mail: dry run and apply -------------------------------------------------------

def _scope_folder_ids(session: Session, user_id: int) -> list[int]:
    return list(session.scalars(select(Folder.id).where(
        Folder.user_id == user_id,
        (Folder.role.is_(None)) | (Folder.role.not_in(EXCLUDED_ROLES)))))


def count_in_scope(session: Session, user_id: int) -> int:
    """How many messages the dry run and the apply look at."""
    folder_ids = _scope_folder_ids(session, user_id)
    return session.scalar(select(func.count()).select_from(Message).where(
        Message.user_id == user_id, Message.folder_id.in_(folder_ids))) or 0


def iter_matching(session: Session, filter_: Filter, raw_loader: Callable[[str], bytes],
                  matcher: _Matcher | None = None,
                  batch: int = BATCH) -> Iterator[tuple[list[int], int]]:
    """Stream the user's stored messages in id order; yield (matching ids, scanned) per batch.

    The single matching function of the dry run and the apply: both count the same messages.
    """
    matcher = matcher or _Matcher()
    folder_ids = _scope_folder_ids(session, filter_.user_id)
    last_id = 0
    while True:
        rows = session.execute(
            select(Message.id, Message.subject, Message.blob_sha256)
            .where(Message.user_id == filter_.user_id, Message.folder_id.in_(folder_ids),
                   Message.id > last_id)
            .order_by(Message.id).limit(batch)).all()
        if not rows:
            return
        ids = [r.id for r in rows]
        addresses: dict[int, list[tuple[str, str, str]]] = {}
        for pk, role, email, name in session.execute(
                select(MessageAddress.message_pk, MessageAddress.role, MessageAddress.email,
                       MessageAddress.name)
                .where(MessageAddress.message_pk.in_(ids)).order_by(MessageAddress.id)):
            addresses.setdefault(pk, []).append((role, email, name))
        matched = []
        for row in rows:
            facts = MessageFacts(subject=row.subject, addresses=addresses.get(row.id, []),
                                 raw_loader=lambda sha=row.blob_sha256: raw_loader(sha))
            if matcher.matches(filter_, facts):
                matched.append(row.id)
        last_id = ids[-1]
        yield matched, len(rows)


@dataclass
class DryRun:
    """The outcome of a dry run: how many match, and the first few."""

    count: int
    scanned: int
    preview: list[Message]
    regex_timeouts: int


def dry_run(session: Session, filter_: Filter, raw_loader: Callable[[str], bytes],
            preview: int = PREVIEW) -> DryRun:
    """Count the user's stored messages the filter matches, with the first `preview` of them."""
    matcher = _Matcher()
    count = scanned = 0
    first: list[int] = []
    for matched, seen in iter_matching(session, filter_, raw_loader, matcher):
        count += len(matched)
        scanned += seen
        first.extend(matched[: max(0, preview - len(first))])
    messages = list(session.scalars(select(Message).where(Message.id.in_(first))
                                    .order_by(Message.id))) if first else []
    return DryRun(count, scanned, messages, sum(matcher.timeouts.values()))


def apply_actions(session: Session, filter_: Filter, message_ids: list[int]) -> None:
    """Do the filter's actions on stored messages (forwarding excepted: old mail is not re-sent)."""
    if not message_ids:
        return
    folders = _user_folders(session, filter_.user_id)
    values: dict[str, object] = {}
    moved = False
    for action in filter_.actions:
        if action.kind == "move":
            values["folder_id"], moved = action.folder_id, True
        elif action.kind == "trash":
            trash_id = next((fid for fid, role in folders.items() if role == "trash"), None)
            if trash_id is not None:
                values["folder_id"], moved = trash_id, True
        elif action.kind == "mark_read":
            values["is_read"] = True
        elif action.kind == "flag":
            values["is_flagged"] = True
    if values:
        session.execute(update(Message).where(Message.user_id == filter_.user_id,
                                              Message.id.in_(message_ids)).values(**values))
    labels = [a.argument for a in filter_.actions if a.kind == "label"]
    if labels:
        _add_labels(session, filter_.user_id, message_ids, labels)
    if moved:
        session.execute(delete(MessageFilterHit)
                        .where(MessageFilterHit.message_pk.in_(message_ids)))
        session.execute(insert(MessageFilterHit), [
            {"message_pk": mid, "filter_id": filter_.id, "filter_name": filter_.name,
             "created_at": utcnow()} for mid in message_ids])


def run_apply(session: Session, run: FilterRun, raw_loader: Callable[[str], bytes],
              batch: int = BATCH) -> FilterRun:
    """Apply a run's filter to the user's stored mail, committing progress after each batch."""
    filter_ = session.get(Filter, run.filter_id)
    if filter_ is None:
        run.state, run.error, run.finished_at = "failed", "The filter was deleted.", utcnow()
        session.commit()
        return run
    if _broken(filter_, _user_folders(session, filter_.user_id)):
        _disable_for_missing_folder(filter_)
        run.state, run.error, run.finished_at = "failed", FOLDER_GONE_NOTICE, utcnow()
        session.commit()
        return run
    run.state, run.done, run.matched, run.error = "running", 0, 0, ""
    run.total = count_in_scope(session, filter_.user_id)
    session.commit()
    matcher = _Matcher()
    # Collect first, then act: moving a message must not change what a later batch sees.
    matched_ids: list[int] = []
    for matched, seen in iter_matching(session, filter_, raw_loader, matcher, batch):
        matched_ids.extend(matched)
        run.done = min(run.total, run.done + seen) if run.total else run.done + seen
        session.commit()
    for start in range(0, len(matched_ids), batch):
        apply_actions(session, filter_, matched_ids[start:start + batch])
        run.matched += len(matched_ids[start:start + batch])
        session.commit()
    _record_timeouts(session, [filter_], matcher.timeouts)
    run.state, run.done, run.finished_at = "done", max(run.done, run.total), utcnow()
    session.commit()
    return run


def start_run(session: Session, filter_: Filter) -> FilterRun:
    """A queued run row for "apply to existing messages"; the caller commits and enqueues."""
    run = FilterRun(user_id=filter_.user_id, filter_id=filter_.id, state="queued",
                    total=count_in_scope(session, filter_.user_id))
    session.add(run)
    session.flush()
    return run


def latest_run(session: Session, filter_id: int) -> FilterRun | None:
    """The filter's most recent apply run."""
    return session.scalar(select(FilterRun).where(FilterRun.filter_id == filter_id)
                          .order_by(FilterRun.created_at.desc(), FilterRun.id.desc()).limit(1))


# --- editing -------------------------------------------------------------------------------

def validate_spec(session: Session, user_id: int, spec: FilterSpec) -> list[str]:
    """Every reason the filter cannot be saved, in words the user can act on."""
    errors = []
    if not spec.name.strip():
        errors.append("Give the filter a name.")
    if not spec.conditions:
        errors.append("Add at least one condition.")
    if not spec.actions:
        errors.append("Add at least one action.")
    folders = _user_folders(session, user_id)
    for n, c in enumerate(spec.conditions, 1):
        if c.field not in CONDITION_FIELDS or c.operator not in CONDITION_OPERATORS:
            errors.append(f"Condition {n}: choose a field and an operator.")
            continue
        if c.field == "header" and not regex.fullmatch(r"[!-9;-~]+", c.header_name or ""):
            errors.append(f"Condition {n}: give the header's name (e.g. List-Id).")
        if not c.value.strip():
            errors.append(f"Condition {n}: the value is empty.")
        elif c.operator == "regex":
            try:
                compile_regex(c.value, c.case_sensitive)
            except FilterError as exc:
                errors.append(f"Condition {n}: {exc}")
    for n, a in enumerate(spec.actions, 1):
        if a.kind not in ACTION_KINDS:
            errors.append(f"Action {n}: choose an action.")
        elif a.kind == "move" and (a.folder_id is None or a.folder_id not in folders):
            errors.append(f"Action {n}: that folder no longer exists; choose another.")
        elif a.kind == "label" and not a.argument.strip():
            errors.append(f"Action {n}: give the label a name.")
        elif a.kind == "forward" and not _looks_like_address(a.argument):
            errors.append(f"Action {n}: give one address to forward to.")
    return errors


def _looks_like_address(text: str) -> bool:
    from webapp.services.mime import normalize_address

    return bool(text.strip()) and "," not in text and normalize_address(text.strip()) is not None


def save_filter(session: Session, user_id: int, spec: FilterSpec,
                filter_: Filter | None = None) -> Filter:
    """Create or replace a filter from a spec; raise FilterError listing what is wrong."""
    errors = validate_spec(session, user_id, spec)
    if errors:
        raise FilterError(" ".join(errors))
    if filter_ is None:
        user = session.get(User, user_id)
        position = session.scalar(select(func.max(Filter.position))
                                  .where(Filter.user_id == user_id))
        filter_ = Filter(org_id=user.org_id, user_id=user_id,
                         position=(position if position is not None else -1) + 1)
        session.add(filter_)
    filter_.name = spec.name.strip()[:200]
    filter_.match_all = spec.match_all
    filter_.enabled = spec.enabled
    filter_.notice = ""
    filter_.conditions = [
        FilterCondition(position=n, field=c.field, operator=c.operator, value=c.value[:1000],
                        header_name=c.header_name.strip() if c.field == "header" else "",
                        case_sensitive=c.case_sensitive)
        for n, c in enumerate(spec.conditions)]
    filter_.actions = [
        FilterAction(position=n, kind=a.kind,
                     folder_id=a.folder_id if a.kind == "move" else None,
                     argument=a.argument.strip()[:320] if a.kind in ("label", "forward") else "")
        for n, a in enumerate(spec.actions)]
    session.flush()
    return filter_


def spec_of(filter_: Filter) -> FilterSpec:
    """The filter as plain values (to edit or duplicate it)."""
    return FilterSpec(
        name=filter_.name, match_all=filter_.match_all, enabled=filter_.enabled,
        conditions=[ConditionSpec(c.field, c.operator, c.value, c.header_name, c.case_sensitive)
                    for c in filter_.conditions],
        actions=[ActionSpec(a.kind, a.folder_id, a.argument) for a in filter_.actions])


def user_filters(session: Session, user_id: int) -> list[Filter]:
    """The user's filters in evaluation order."""
    return list(session.scalars(
        select(Filter).where(Filter.user_id == user_id).order_by(Filter.position, Filter.id)
        .options(selectinload(Filter.conditions), selectinload(Filter.actions))))


def disable_broken_filters(session: Session, user_id: int) -> list[Filter]:
    """Turn off (with a notice) every enabled filter whose target folder is gone."""
    folders = _user_folders(session, user_id)
    broken = [f for f in user_filters(session, user_id) if f.enabled and _broken(f, folders)]
    for filter_ in broken:
        _disable_for_missing_folder(filter_)
    return broken


def _renumber(filters: list[Filter]) -> None:
    for n, filter_ in enumerate(filters):
        filter_.position = n


def move_filter(session: Session, filter_: Filter, offset: int) -> None:
    """Move a filter up (-1) or down (+1) in the evaluation order."""
    filters = user_filters(session, filter_.user_id)
    index = filters.index(filter_)
    target = max(0, min(len(filters) - 1, index + offset))
    filters.insert(target, filters.pop(index))
    _renumber(filters)


def duplicate_filter(session: Session, filter_: Filter) -> Filter:
    """A copy of the filter, turned off, placed right after it."""
    spec = spec_of(filter_)
    spec.name, spec.enabled = f"Copy of {filter_.name}"[:200], False
    copy = save_filter(session, filter_.user_id, spec)
    filters = user_filters(session, filter_.user_id)
    filters.remove(copy)
    filters.insert(filters.index(filter_) + 1, copy)
    _renumber(filters)
    return copy


def delete_filter(session: Session, filter_: Filter) -> None:
    """Delete a filter; the messages it placed keep its name in their record."""
    user_id = filter_.user_id
    session.delete(filter_)
    session.flush()
    _renumber(user_filters(session, user_id))


def set_enabled(session: Session, filter_: Filter, enabled: bool) -> None:
    """Turn a filter on or off; one whose folder is gone cannot be turned on."""
    if enabled and _broken(filter_, _user_folders(session, filter_.user_id)):
        raise FilterError("The folder this filter moves mail to no longer exists: "
                          "edit the filter and choose another folder first.")
    filter_.enabled = enabled
    if enabled:
        filter_.notice = ""


def create_sent_mail_filter(session: Session, user_id: int, address: str) -> Filter:
    """The filter "sender contains <address> → Sent" for the user; returns the existing one if any.

    It makes the user's own messages fetched from a POP account count as sent (issue 6).
    """
    address = address.strip()
    if not address:
        raise FilterError("An address is needed for the sent-mail filter.")
    sent = session.scalar(select(Folder).where(Folder.user_id == user_id, Folder.role == "sent"))
    if sent is None:
        raise FilterError("This mailbox has no Sent folder.")
    for filter_ in user_filters(session, user_id):
        if (len(filter_.conditions) == 1 and len(filter_.actions) == 1
                and filter_.conditions[0].field == "from"
                and filter_.conditions[0].operator == "contains"
                and filter_.conditions[0].value.casefold() == address.casefold()
                and filter_.actions[0].kind == "move" and filter_.actions[0].folder_id == sent.id):
            return filter_
    return save_filter(session, user_id, FilterSpec(
        name=f"My sent mail ({address})"[:200], match_all=True,
        conditions=[ConditionSpec("from", "contains", address)],
        actions=[ActionSpec("move", folder_id=sent.id)]))
