"""Settings » Filters: list, create, edit, reorder, switch, duplicate, delete, test and apply."""
from __future__ import annotations

from flask import abort, current_app, flash, jsonify, redirect, render_template, request, url_for
from flask_login import current_user, login_required
from sqlalchemy import select

from webapp.extensions import db
from webapp.models import Folder
from webapp.models.filters import Filter, FilterRun
from webapp.queue import enqueue_after_commit
from webapp.services import blobs
from webapp.services import filters as filter_service
from webapp.settings.blueprint import bp, register_section
from webapp.settings.filter_forms import ConfirmForm, FilterForm

register_section("Filters", "settings.filters_list",
                 "Sort incoming mail: move, flag, label or forward what matches your rules.",
                 order=40)

APPLY_JOB_TIMEOUT = 3600


def _own_filter(filter_id: int) -> Filter:
    """The current user's filter, or 404 (another user's id reads as absent)."""
    filter_ = db.session.scalar(select(Filter).where(Filter.id == filter_id,
                                                     Filter.user_id == current_user.id))
    if filter_ is None:
        abort(404)
    return filter_


def _folder_choices() -> list[tuple[int, str]]:
    folders = db.session.scalars(select(Folder).where(Folder.user_id == current_user.id)
                                 .order_by(Folder.position, Folder.name))
    return [(f.id, f.name) for f in folders if f.role not in ("drafts",)]


def _rows_changed(form: FilterForm) -> bool:
    """Handle "add"/"remove" row buttons; True when the POST only changed the rows."""
    if form.add_condition.data:
        if len(form.conditions.entries) < form.conditions.max_entries:
            form.conditions.append_entry()
        return True
    if form.add_action.data:
        if len(form.actions.entries) < form.actions.max_entries:
            form.actions.append_entry()
        return True
    for name, rows in (("remove_condition", form.conditions), ("remove_action", form.actions)):
        if name in request.form:
            try:
                index = int(request.form[name])
            except ValueError:
                return True
            if 0 <= index < len(rows.entries) and len(rows.entries) > 1:
                rows.entries.pop(index)
            return True
    return False


def _edit(form: FilterForm, filter_: Filter | None):
    """Shared by create and edit: re-render on row changes, save when valid."""
    form.set_folder_choices(_folder_choices())
    if request.method == "POST":
        if _rows_changed(form):
            form.set_folder_choices(_folder_choices())
            return render_template("settings/filters_edit.html", form=form, filter=filter_)
        if form.validate():
            try:
                saved = filter_service.save_filter(db.session, current_user.id, form.to_spec(),
                                                   filter_)
            except filter_service.FilterError as exc:
                db.session.rollback()
                flash(str(exc), "error")
            else:
                db.session.commit()
                flash(f"Filter “{saved.name}” saved.", "success")
                return redirect(url_for("settings.filters_list"))
        else:
            flash("The filter was not saved: see the messages below.", "error")
    return render_template("settings/filters_edit.html", form=form, filter=filter_)


@bp.route("/filters")
@login_required
def filters_list():
    """The user's filters in the order they run."""
    broken = filter_service.disable_broken_filters(db.session, current_user.id)
    if broken:
        db.session.commit()
    filters = filter_service.user_filters(db.session, current_user.id)
    folder_names = dict(db.session.execute(
        select(Folder.id, Folder.name).where(Folder.user_id == current_user.id)).all())
    return render_template("settings/filters.html", filters=filters, folder_names=folder_names,
                           fields=filter_service.FIELD_LABELS,
                           operators=filter_service.OPERATOR_LABELS,
                           action_labels=filter_service.ACTION_LABELS)


@bp.route("/filters/new", methods=["GET", "POST"])
@login_required
def filter_create():
    """Create a filter."""
    return _edit(FilterForm(), None)


@bp.route("/filters/<int:filter_id>/edit", methods=["GET", "POST"])
@login_required
def filter_edit(filter_id: int):
    """Edit a filter; saving replaces its conditions and actions."""
    filter_ = _own_filter(filter_id)
    form = FilterForm()
    if request.method == "GET":
        form.fill_from(filter_service.spec_of(filter_))
    return _edit(form, filter_)


@bp.route("/filters/<int:filter_id>/move/<direction>", methods=["POST"])
@login_required
def filter_move(filter_id: int, direction: str):
    """Move a filter up or down in the order."""
    if direction not in ("up", "down") or not ConfirmForm().validate_on_submit():
        abort(400)
    filter_service.move_filter(db.session, _own_filter(filter_id), -1 if direction == "up" else 1)
    db.session.commit()
    return redirect(url_for("settings.filters_list"))


@bp.route("/filters/<int:filter_id>/toggle", methods=["POST"])
@login_required
def filter_toggle(filter_id: int):
    """Turn a filter on or off."""
    filter_ = _own_filter(filter_id)
    if not ConfirmForm().validate_on_submit():
        abort(400)
    try:
        filter_service.set_enabled(db.session, filter_, not filter_.enabled)
    except filter_service.FilterError as exc:
        flash(str(exc), "error")
    else:
        db.session.commit()
        flash(f"Filter “{filter_.name}” is {'on' if filter_.enabled else 'off'}.", "success")
    return redirect(url_for("settings.filters_list"))


@bp.route("/filters/<int:filter_id>/duplicate", methods=["POST"])
@login_required
def filter_duplicate(filter_id: int):
    """Copy a filter (the copy starts switched off)."""
    filter_ = _own_filter(filter_id)
    if not ConfirmForm().validate_on_submit():
        abort(400)
    try:
        copy = filter_service.duplicate_filter(db.session, filter_)
    except filter_service.FilterError as exc:
        db.session.rollback()
        flash(f"The filter could not be copied: {exc}", "error")
        return redirect(url_for("settings.filters_list"))
    db.session.commit()
    flash(f"Copied as “{copy.name}” (switched off until you turn it on).", "success")
    return redirect(url_for("settings.filter_edit", filter_id=copy.id))


@bp.route("/filters/<int:filter_id>/delete", methods=["GET", "POST"])
@login_required
def filter_delete(filter_id: int):
    """Ask, then delete a filter."""
    filter_ = _own_filter(filter_id)
    form = ConfirmForm()
    form.submit.label.text = "Delete filter"
    if form.validate_on_submit():
        name = filter_.name
        filter_service.delete_filter(db.session, filter_)
        db.session.commit()
        flash(f"Filter “{name}” deleted.", "success")
        return redirect(url_for("settings.filters_list"))
    return render_template("settings/filters_delete.html", form=form, filter=filter_)


@bp.route("/filters/<int:filter_id>/test")
@login_required
def filter_test(filter_id: int):
    """Dry run: how many stored messages the filter matches, and the first of them."""
    filter_ = _own_filter(filter_id)
    store = blobs.get_store(current_app.config["BLOB_DIR"])
    result = filter_service.dry_run(db.session, filter_, store.get)
    db.session.rollback()  # a dry run changes nothing
    form = ConfirmForm()
    form.submit.label.text = f"Apply to these {result.count} messages"
    return render_template("settings/filters_test.html", filter=filter_, result=result,
                           form=form, run=filter_service.latest_run(db.session, filter_.id))


@bp.route("/filters/<int:filter_id>/apply", methods=["POST"])
@login_required
def filter_apply(filter_id: int):
    """Apply the filter to existing messages in the worker."""
    filter_ = _own_filter(filter_id)
    if not ConfirmForm().validate_on_submit():
        abort(400)
    run = filter_service.start_run(db.session, filter_)
    enqueue_after_commit("worker.jobs.filters.apply_filter", filter_.id, run.id, queue="default",
                         job_timeout=APPLY_JOB_TIMEOUT)
    db.session.commit()
    flash("Applying the filter to your messages…", "success")
    return redirect(url_for("settings.filter_run", filter_id=filter_.id, run_id=run.id))


def _own_run(filter_id: int, run_id: int) -> tuple[Filter, FilterRun]:
    filter_ = _own_filter(filter_id)
    run = db.session.scalar(select(FilterRun).where(FilterRun.id == run_id,
                                                    FilterRun.filter_id == filter_.id,
                                                    FilterRun.user_id == current_user.id))
    if run is None:
        abort(404)
    return filter_, run


@bp.route("/filters/<int:filter_id>/runs/<int:run_id>")
@login_required
def filter_run(filter_id: int, run_id: int):
    """Progress of an apply run (the page reloads itself while it runs, with or without JS)."""
    filter_, run = _own_run(filter_id, run_id)
    return render_template("settings/filters_run.html", filter=filter_, run=run)


@bp.route("/filters/<int:filter_id>/runs/<int:run_id>.json")
@login_required
def filter_run_status(filter_id: int, run_id: int):
    """Progress of an apply run, for the page's polling script."""
    _filter, run = _own_run(filter_id, run_id)
    return jsonify(state=run.state, done=run.done, total=run.total, matched=run.matched,
                   error=run.error)
