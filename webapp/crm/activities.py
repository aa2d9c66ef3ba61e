"""Tasks, events and notes on a record; events export as iCalendar."""
from __future__ import annotations

from datetime import timezone

from flask import Response, abort, flash, redirect, render_template, request, url_for
from flask_login import current_user, login_required
from sqlalchemy import select

from webapp.crm.blueprint import KIND_LABELS, bp, record_or_404, record_url, safe_next, viewer
from webapp.crm.forms import ActivityForm, ConfirmForm
from webapp.extensions import db
from webapp.models.crm import Activity
from webapp.services import crm
from webapp.services.crm_records import events_to_ical


def _aware(value):
    # datetime-local inputs carry no zone; the form labels them UTC.
    return value.replace(tzinfo=timezone.utc) if value is not None else None


def _activity_or_404(activity_id: int) -> Activity:
    activity = crm.get_activity(db.session, viewer(), activity_id)
    if activity is None:
        abort(404)
    return activity


@bp.route("/<kind>/<int:record_id>/activities/new", methods=["GET", "POST"])
@login_required
def activity_new(kind: str, record_id: int):
    """Add a task, event or note to a record (also the target of the mail view's quick forms)."""
    if kind not in KIND_LABELS:
        abort(404)
    record = record_or_404(kind, record_id)
    form = ActivityForm()
    if request.method == "GET":
        form.kind.data = request.args.get("kind", "note") if request.args.get("kind") in \
            ("task", "event", "note") else "note"
    back = safe_next(form.next.data or request.args.get("next"), record_url(record))
    if form.validate_on_submit():
        message_id = int(form.message_id.data) if (form.message_id.data or "").isdigit() \
            else None
        try:
            crm.add_activity(db.session, record, current_user.id, kind=form.kind.data,
                             title=form.title.data, notes=form.notes.data or "",
                             due_date=form.due_date.data, status=form.status.data,
                             starts_at=_aware(form.starts_at.data),
                             ends_at=_aware(form.ends_at.data), message_id=message_id)
        except crm.CrmError as exc:
            db.session.rollback()
            flash(str(exc), "error")
        else:
            db.session.commit()
            flash(f"{form.kind.data.capitalize()} added to {record.name}.", "success")
            return redirect(back)
    elif request.method == "POST":
        # Quick forms post from the mail view; say what was wrong there, keep nothing half-done.
        problems = "; ".join(f"{form[name].label.text}: {' '.join(errors)}"
                             for name, errors in form.errors.items() if name in form)
        if form.next.data:
            flash(f"Nothing was added to {record.name}: {problems}", "error")
            return redirect(back)
    return render_template("crm/activity_form.html", form=form, record=record, activity=None,
                           back=back)


@bp.route("/activities/<int:activity_id>/edit", methods=["GET", "POST"])
@login_required
def activity_edit(activity_id: int):
    """Change a task, event or note."""
    activity = _activity_or_404(activity_id)
    record = crm.record_of(db.session, viewer(), activity)
    form = ActivityForm(obj=activity)
    if form.validate_on_submit():
        activity.kind = form.kind.data
        activity.title = form.title.data.strip()[:300]
        activity.notes = (form.notes.data or "").strip()
        activity.due_date = form.due_date.data if activity.kind == "task" else None
        activity.status = form.status.data if activity.kind == "task" else "open"
        activity.starts_at = _aware(form.starts_at.data) if activity.kind == "event" else None
        activity.ends_at = (_aware(form.ends_at.data) or activity.starts_at) \
            if activity.kind == "event" else None
        db.session.commit()
        flash("Saved.", "success")
        return redirect(record_url(record))
    return render_template("crm/activity_form.html", form=form, record=record,
                           activity=activity, back=record_url(record))


@bp.route("/activities/<int:activity_id>/done", methods=["POST"])
@login_required
def activity_done(activity_id: int):
    """Mark a task done (or open again)."""
    activity = _activity_or_404(activity_id)
    form = ConfirmForm()
    if form.validate_on_submit() and activity.kind == "task":
        activity.status = "open" if activity.status == "done" else "done"
        db.session.commit()
    record = crm.record_of(db.session, viewer(), activity)
    return redirect(safe_next(request.form.get("next"), record_url(record)))


@bp.route("/activities/<int:activity_id>/delete", methods=["GET", "POST"])
@login_required
def activity_delete(activity_id: int):
    """Delete a task, event or note after a confirmation."""
    activity = _activity_or_404(activity_id)
    record = crm.record_of(db.session, viewer(), activity)
    form = ConfirmForm()
    if form.validate_on_submit():
        db.session.delete(activity)
        db.session.commit()
        flash("Deleted.", "success")
        return redirect(record_url(record))
    return render_template("crm/confirm_delete.html", form=form, record=activity,
                           label=activity.kind.capitalize(), kind="activity",
                           back=record_url(record))


def _calendar_response(events, filename: str) -> Response:
    domain = (current_user.email.rsplit("@", 1)[-1]) or "skydesk.invalid"
    body = events_to_ical(events, domain=domain)
    return Response(body, mimetype="text/calendar",
                    headers={"Content-Disposition": f'attachment; filename="{filename}"'})


@bp.route("/activities/<int:activity_id>/event.ics")
@login_required
def activity_ics(activity_id: int):
    """One event as an iCalendar file."""
    activity = _activity_or_404(activity_id)
    if activity.kind != "event":
        abort(404)
    return _calendar_response([activity], f"event-{activity.id}.ics")


@bp.route("/events.ics")
@login_required
def events_ics():
    """Every event on the records the user sees, as one iCalendar file."""
    who = viewer()
    events = db.session.scalars(
        select(Activity).where(Activity.org_id == who.org_id, Activity.kind == "event",
                               *(() if who.is_admin else (Activity.owner_id == who.user_id,)))
        .order_by(Activity.starts_at, Activity.id)).all()
    visible = [e for e in events if crm.record_of(db.session, who, e) is not None]
    return _calendar_response(visible, "crm-events.ics")


@bp.app_template_global("crm_activity_done_url")
def activity_done_url(activity_id: int) -> str:
    """Where a task's done/open button posts."""
    return url_for("crm.activity_done", activity_id=activity_id)
