"""Search the user's mail (the search box of every mail page)."""
from __future__ import annotations

from flask import request
from flask_login import current_user, login_required

from webapp.extensions import db
from webapp.mail.blueprint import bp
from webapp.mail.index import owned_or_404, render_mail_page
from webapp.services import mailbox, search

SEARCH_QUERY_MAX = 500


@bp.route("/search")
@login_required
def search_results():
    """Messages matching every word of ?q= (optionally within ?folder=), newest first."""
    query = (request.args.get("q") or "").strip()[:SEARCH_QUERY_MAX]
    folder = None
    folder_arg = request.args.get("folder", "")
    if folder_arg.isdigit():
        folder = owned_or_404(mailbox.get_folder, int(folder_arg))
    results = search.search(db.session, current_user.id, query,
                            folder_id=folder.id if folder else None) if query else []
    return render_mail_page("mail/search.html",
                            current_folder_id=folder.id if folder else None,
                            query=query, folder=folder, results=results,
                            limited=len(results) >= 50)
