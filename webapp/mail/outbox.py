"""The Outbox (/mail/outbox): where every outgoing message stands, with retry and cancel."""
from __future__ import annotations

from flask import abort, flash, redirect, url_for
from flask_login import current_user, login_required

from webapp.extensions import db
from webapp.mail.blueprint import bp
from webapp.mail.index import render_mail_page
from webapp.services import outbox

STATE_WORDS = {
    "queued": "Waiting to be sent",
    "sending": "Sending now",
    "sent": "Sent",
    "retry-wait": "Waiting to retry",
    "failed": "Not sent",
    "uncertain": "May have been sent",
    "cancelled": "Cancelled",
}
RECIPIENT_WORDS = {
    "pending": "not yet sent",
    "accepted": "accepted by the server",
    "refused": "refused",
    "deferred": "refused for now; will be retried",
}


@bp.route("/outbox")
@login_required
def outbox_index():
    """Every outgoing message of the user: state, attempts, next retry, errors, recipients."""
    messages = outbox.list_outbox(db.session, current_user.id)
    return render_mail_page("mail/outbox.html", messages=messages, state_words=STATE_WORDS,
                            recipient_words=RECIPIENT_WORDS)[0]


@bp.route("/outbox/<int:outgoing_id>/retry", methods=["POST"])
@login_required
def outbox_retry(outgoing_id: int):
    """Send a failed, uncertain or waiting message again now."""
    if outbox.get_outgoing(db.session, current_user.id, outgoing_id) is None:
        abort(404)
    if outbox.retry(db.session, current_user.id, outgoing_id):
        db.session.commit()
        flash("The message will be sent again in a moment.", "success")
    else:
        db.session.rollback()
        flash("This message cannot be retried now (it is being sent or was sent).", "error")
    return redirect(url_for("mail.outbox_index"))


@bp.route("/outbox/<int:outgoing_id>/cancel", methods=["POST"])
@login_required
def outbox_cancel(outgoing_id: int):
    """Cancel a message that is waiting to be sent or to be retried."""
    if outbox.get_outgoing(db.session, current_user.id, outgoing_id) is None:
        abort(404)
    if outbox.cancel(db.session, current_user.id, outgoing_id):
        db.session.commit()
        flash("Cancelled: the message will not be sent.", "success")
    else:
        db.session.rollback()
        flash("Not cancelled: the message is being sent or was sent already (if it is "
              "waiting for a retry, its copy in Sent is being filed: try again in a minute).",
              "error")
    return redirect(url_for("mail.outbox_index"))
