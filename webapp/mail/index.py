"""The Mail start page and what every mail page shares: the folder sidebar and the storage bar."""
from __future__ import annotations

from flask import abort, current_app, render_template
from flask_login import current_user, login_required

from webapp.extensions import db
from webapp.mail.blueprint import bp
from webapp.services import mailbox
from webapp.services.quota import human_bytes


def sidebar_context(current_folder_id: int | None = None,
                    folders: list[mailbox.FolderInfo] | None = None) -> dict:
    """The sidebar's data for the signed-in user: folders with unread counts, storage use."""
    if folders is None:
        folders = mailbox.folder_counts(db.session, current_user.id)
    used, limit = mailbox.storage(db.session, current_user.id)
    return {
        "folders": folders,
        "current_folder_id": current_folder_id,
        "storage_used": used,
        "storage_quota": limit,
        "storage_text": f"{human_bytes(used)} of {human_bytes(limit)}",
        "storage_full": limit > 0 and used >= limit * 0.9,
        # The compose screen lands separately; its links appear once its route exists.
        "can_compose": "mail.compose" in current_app.view_functions,
    }


def render_mail_page(template: str, current_folder_id: int | None = None, status: int = 200,
                     folders: list[mailbox.FolderInfo] | None = None, **context):
    """Render a page of the mail area (layout with sidebar and search box).

    Pass ``folders`` when the view has already loaded them, so the page counts once.
    """
    return render_template(template, **sidebar_context(current_folder_id, folders),
                           **context), status


def owned_or_404(loader, *args):
    """Call a mailbox loader for the signed-in user; a foreign or unknown id is a 404."""
    try:
        return loader(db.session, current_user.id, *args)
    except mailbox.NotFoundError:
        abort(404)


@bp.route("/")
@login_required
def mail_index():
    """The Mail start page: the Inbox."""
    from webapp.mail.folders import render_folder

    inbox = owned_or_404(mailbox.folder_by_role, "inbox")
    return render_folder(inbox)
