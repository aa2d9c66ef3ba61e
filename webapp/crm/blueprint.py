"""The CRM blueprint and the helpers its views share (scoping, links into webmail)."""
from __future__ import annotations

from urllib.parse import urlencode, urlsplit

from flask import Blueprint, abort, current_app, url_for
from flask_login import current_user

from webapp.extensions import db
from webapp.services import crm

bp = Blueprint("crm", __name__, url_prefix="/crm")

KIND_LABELS = {"contact": "Contact", "lead": "Lead", "potential": "Potential"}
KIND_PLURALS = {"contact": "contacts", "lead": "leads", "potential": "potentials"}


def viewer() -> crm.Viewer:
    """The logged-in user as a CRM viewer (organization, id, admin)."""
    return crm.Viewer.of(current_user)


def record_or_404(kind: str, record_id: int) -> crm.Record:
    """A record the current user may see, or 404 (also for another organization's ids)."""
    record = crm.get_record(db.session, viewer(), kind, record_id)
    if record is None:
        abort(404)
    return record


def _has_endpoint(endpoint: str) -> bool:
    return endpoint in current_app.view_functions


@bp.app_template_global("crm_message_url")
def message_url(message_id: int) -> str:
    """The webmail page of a message."""
    for endpoint in ("mail.message_show", "mail.message_view"):
        if _has_endpoint(endpoint):
            return url_for(endpoint, message_id=message_id)
    return f"/mail/message/{message_id}"


@bp.app_template_global("crm_compose_url")
def compose_url(to: str) -> str | None:
    """Compose in webmail with To filled in, or None while there is no compose page."""
    if _has_endpoint("mail.compose"):
        return url_for("mail.compose", to=to)
    return None


@bp.app_template_global("crm_record_url")
def record_url(record: crm.Record) -> str:
    """The detail page of a record."""
    kind = crm.record_kind(record)
    return url_for(f"crm.{kind}_show", record_id=record.id)


@bp.app_template_filter("crm_kind")
def kind_label(record: crm.Record) -> str:
    """'Contact', 'Lead' or 'Potential'."""
    return KIND_LABELS[crm.record_kind(record)]


def safe_next(target: str | None, default: str) -> str:
    """A redirect target from a form, only when it stays on this site (no open redirect)."""
    if target:
        parts = urlsplit(target)
        if not parts.scheme and not parts.netloc and target.startswith("/") \
                and not target.startswith("//") and "\\" not in target:
            return target
    return default


def new_record_url(kind: str, **prefill: str) -> str:
    """The create page of a kind, prefilled from a message (name, email, next)."""
    query = urlencode({k: v for k, v in prefill.items() if v})
    return url_for(f"crm.{kind}_new") + (f"?{query}" if query else "")
