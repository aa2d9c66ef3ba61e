"""Folders: the message list of a folder, its bulk actions, custom folders, Empty Trash."""
from __future__ import annotations

from flask import abort, flash, redirect, request, url_for
from flask_login import current_user, login_required

from webapp.extensions import db
from webapp.mail.blueprint import bp
from webapp.mail.forms import BulkActionForm, ConfirmForm, FolderForm
from webapp.mail.index import owned_or_404, render_mail_page
from webapp.models import Folder
from webapp.services import mailbox


def _target_choices(form_field, folders) -> None:
    form_field.choices = [(0, "Move to…")] + [(f.id, f.name) for f in folders]


def render_folder(folder: Folder, form: BulkActionForm | None = None, status: int = 200):
    """The message list of one of the user's folders (page chosen by ?before= / ?after=)."""
    page = mailbox.list_page(db.session, current_user.id, folder.id,
                             before=request.args.get("before"), after=request.args.get("after"))
    form = form or BulkActionForm()
    folders = mailbox.folder_counts(db.session, current_user.id)
    _target_choices(form.target_folder, folders)
    return render_mail_page("mail/list.html", current_folder_id=folder.id, status=status,
                            folders=folders, folder=folder, page=page, form=form,
                            is_trash=folder.role == "trash")


@bp.route("/folder/<int:folder_id>")
@login_required
def folder_show(folder_id: int):
    """The messages of a folder, newest first, 50 a page."""
    return render_folder(owned_or_404(mailbox.get_folder, folder_id))


@bp.route("/folder/<int:folder_id>/bulk", methods=["POST"])
@login_required
def folder_bulk(folder_id: int):
    """Apply the pressed button to the checked messages of the list."""
    folder = owned_or_404(mailbox.get_folder, folder_id)
    form = BulkActionForm()
    if not form.validate_on_submit():
        for errors in (form.ids.errors, form.action.errors, form.target_folder.errors):
            for error in errors:
                flash(error, "error")
        return redirect(url_for("mail.folder_show", folder_id=folder.id))
    ids, action = form.ids.data, form.action.data
    try:
        if action == "move":
            count = mailbox.move(db.session, current_user.id, ids, form.target_folder.data)
            text = f"Moved {count} message{'s' if count != 1 else ''}."
        elif action == "delete":
            trashed, deleted = mailbox.trash_or_delete(db.session, current_user.id, ids)
            text = (f"Deleted {deleted} message{'s' if deleted != 1 else ''} for good."
                    if deleted else f"Moved {trashed} message{'s' if trashed != 1 else ''} to Trash.")
        else:
            count = mailbox.set_flags(db.session, current_user.id, ids, action)
            text = {"read": "Marked {} as read.", "unread": "Marked {} as unread.",
                    "flag": "Flagged {}.", "unflag": "Unflagged {}."}[action].format(
                        f"{count} message{'s' if count != 1 else ''}")
    except mailbox.NotFoundError:
        db.session.rollback()
        abort(404)
    except ValueError as error:
        db.session.rollback()
        flash(str(error), "error")
        return redirect(url_for("mail.folder_show", folder_id=folder.id))
    db.session.commit()
    flash(text, "success")
    return redirect(_back_to_list(folder.id))


def _back_to_list(folder_id: int) -> str:
    """The list page the form came from (its cursor), so a bulk action keeps the user's place."""
    params = {key: request.form.get(key) for key in ("before", "after") if request.form.get(key)}
    return url_for("mail.folder_show", folder_id=folder_id, **params)


@bp.route("/folders", methods=["GET", "POST"])
@login_required
def folders_manage():
    """The user's folders: create a custom folder, links to rename or delete one."""
    form = FolderForm()
    if form.validate_on_submit():
        try:
            folder = mailbox.create_folder(db.session, current_user.id, form.name.data)
        except mailbox.FolderError as error:
            db.session.rollback()
            form.name.errors.append(str(error))
        else:
            db.session.commit()
            flash(f"Folder “{folder.name}” created.", "success")
            return redirect(url_for("mail.folders_manage"))
    return render_mail_page("mail/folders.html", form=form,
                            status=400 if form.errors else 200)


@bp.route("/folder/<int:folder_id>/rename", methods=["GET", "POST"])
@login_required
def folder_rename(folder_id: int):
    """Rename a custom folder."""
    folder = owned_or_404(mailbox.get_folder, folder_id)
    if folder.role is not None:
        flash(f"“{folder.name}” is a system folder and cannot be renamed.", "error")
        return redirect(url_for("mail.folders_manage"))
    form = FolderForm(data={"name": folder.name} if request.method == "GET" else None)
    if form.validate_on_submit():
        try:
            mailbox.rename_folder(db.session, current_user.id, folder.id, form.name.data)
        except mailbox.FolderError as error:
            db.session.rollback()
            form.name.errors.append(str(error))
        else:
            db.session.commit()
            flash("Folder renamed.", "success")
            return redirect(url_for("mail.folders_manage"))
    return render_mail_page("mail/folder_rename.html", current_folder_id=folder.id,
                            folder=folder, form=form, status=400 if form.errors else 200)


@bp.route("/folder/<int:folder_id>/delete", methods=["GET", "POST"])
@login_required
def folder_delete(folder_id: int):
    """Delete a custom folder after a confirmation; its messages go to Trash."""
    folder = owned_or_404(mailbox.get_folder, folder_id)
    if folder.role is not None:
        flash(f"“{folder.name}” is a system folder and cannot be deleted.", "error")
        return redirect(url_for("mail.folders_manage"))
    form = ConfirmForm()
    if form.validate_on_submit():
        name = folder.name
        moved = mailbox.delete_folder(db.session, current_user.id, folder.id)
        db.session.commit()
        flash(f"Folder “{name}” deleted." + (f" Its {moved} message{'s' if moved != 1 else ''} "
                                             "moved to Trash." if moved else ""), "success")
        return redirect(url_for("mail.folders_manage"))
    count = mailbox.folder_message_count(db.session, current_user.id, folder.id)
    return render_mail_page("mail/confirm.html", current_folder_id=folder.id, form=form,
                            title=f"Delete the folder “{folder.name}”?",
                            text=(f"Its {count} message{'s' if count != 1 else ''} will be moved "
                                  "to Trash." if count else "The folder is empty."),
                            confirm_label="Delete folder",
                            cancel_url=url_for("mail.folders_manage"))


@bp.route("/trash/empty", methods=["GET", "POST"])
@login_required
def trash_empty():
    """Empty Trash after a confirmation: its messages are deleted for good."""
    trash = owned_or_404(mailbox.folder_by_role, "trash")
    form = ConfirmForm()
    if form.validate_on_submit():
        deleted = mailbox.empty_trash(db.session, current_user.id)
        db.session.commit()
        flash(f"Trash emptied: {deleted} message{'s' if deleted != 1 else ''} deleted for good.",
              "success")
        return redirect(url_for("mail.folder_show", folder_id=trash.id))
    count = mailbox.folder_message_count(db.session, current_user.id, trash.id)
    return render_mail_page("mail/confirm.html", current_folder_id=trash.id, form=form,
                            title="Empty Trash?",
                            text=(f"{count} message{'s' if count != 1 else ''} will be deleted "
                                  "for good. This cannot be undone."),
                            confirm_label="Empty Trash",
                            cancel_url=url_for("mail.folder_show", folder_id=trash.id))
