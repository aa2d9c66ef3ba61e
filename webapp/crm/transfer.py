"""CSV import (preview, then all-or-nothing) and export of contacts, leads and potentials."""
from __future__ import annotations

from flask import Response, abort, flash, redirect, render_template, url_for
from flask_login import login_required

from webapp.crm.blueprint import KIND_LABELS, KIND_PLURALS, bp, viewer
from webapp.crm.forms import ImportConfirmForm, ImportUploadForm
from webapp.extensions import db
from webapp.services.crm_records import CSV_COLUMNS, export_csv, import_csv, preview_csv

CSV_MAX_BYTES = 5 * 1024 * 1024


def _kind_or_404(plural: str) -> str:
    for kind, name in KIND_PLURALS.items():
        if name == plural:
            return kind
    abort(404)


@bp.route("/<plural>/export.csv")
@login_required
def records_export(plural: str):
    """Download the records of a kind as CSV (cells that would run as formulas are quoted)."""
    kind = _kind_or_404(plural)
    text = export_csv(db.session, viewer(), kind)
    return Response(text.encode("utf-8"), mimetype="text/csv",
                    headers={"Content-Disposition": f'attachment; filename="{plural}.csv"'})


@bp.route("/<plural>/import", methods=["GET", "POST"])
@login_required
def records_import(plural: str):
    """Upload a CSV file and see every row checked before anything is saved."""
    kind = _kind_or_404(plural)
    form = ImportUploadForm()
    preview = None
    confirm = None
    if form.validate_on_submit():
        data = form.file.data.read(CSV_MAX_BYTES + 1)
        if len(data) > CSV_MAX_BYTES:
            form.file.errors.append("The file is larger than 5 MB; split it.")
        else:
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError:
                form.file.errors.append("The file is not UTF-8 text. Save it as "
                                        "\"CSV UTF-8\" and try again.")
            else:
                preview = preview_csv(db.session, viewer(), kind, text)
                if preview.ok:
                    confirm = ImportConfirmForm(formdata=None, content=text)
    return render_template("crm/import.html", form=form, preview=preview, confirm=confirm,
                           kind=kind, plural=plural, label=KIND_LABELS[kind],
                           columns=CSV_COLUMNS[kind])


@bp.route("/<plural>/import/confirm", methods=["POST"])
@login_required
def records_import_confirm(plural: str):
    """Create every previewed row in one transaction, or none when any row fails."""
    kind = _kind_or_404(plural)
    form = ImportConfirmForm()
    if not form.validate_on_submit():
        flash("The import form expired; upload the file again.", "error")
        return redirect(url_for("crm.records_import", plural=plural))
    preview = import_csv(db.session, viewer(), kind, form.content.data)
    if not preview.ok:
        db.session.rollback()
        flash("Nothing was imported: some rows have errors (see below).", "error")
        return render_template("crm/import.html", form=ImportUploadForm(formdata=None),
                               preview=preview, confirm=None, kind=kind, plural=plural,
                               label=KIND_LABELS[kind], columns=CSV_COLUMNS[kind])
    db.session.commit()
    flash(f"{len(preview.rows)} {plural} imported.", "success")
    return redirect(url_for(f"crm.{kind}_list"))
