"""Settings » Mail Accounts: the hosted account and POP accounts, with live fetch progress."""
from __future__ import annotations

from flask import abort, current_app, flash, jsonify, redirect, render_template, url_for
from flask_login import current_user, login_required

from webapp.extensions import db
from webapp.models.pop import PopAccount
from webapp.queue import get_redis
from webapp.services import pop_accounts as service
from webapp.services.secrets import SecretDecryptError
from webapp.settings.account_forms import ConfirmForm, PopAccountForm
from webapp.settings.blueprint import bp, register_section

register_section("Mail Accounts", "settings.accounts_list",
                 "Your hosted address, and mailboxes elsewhere fetched by POP3 into this one.",
                 order=20)


def _own_account(pop_id: int) -> PopAccount:
    account = service.pop_account_of(db.session, current_user.id, pop_id)
    if account is None:
        abort(404)
    return account


def _redis_or_none():
    try:
        redis = get_redis()
        redis.ping()
        return redis
    except Exception:  # noqa: BLE001 - the page still shows the last batch's numbers
        return None


def _config(name: str):
    return service.pop_setting(current_app.config, name)


def _check(form: PopAccountForm, password: str, want_uidls: bool) -> service.ConnectionCheck:
    # One synchronous POP session from the request, bounded by the POP timeout: the user
    # waits a few seconds for an answer they can act on right away.
    return service.check_connection(
        form.host.data.strip(), form.port.data, form.security.data, form.username.data.strip(),
        password, ca_bundle=current_app.config.get("MAIL_CA_BUNDLE"),
        timeout=float(_config("POP_TIMEOUT_SECONDS")), want_uidls=want_uidls)


def _file_sent_mail(address: str) -> str | None:
    """Add the "my own mail → Sent" filter; returns a warning when it could not be added."""
    try:
        from webapp.services.filters import create_sent_mail_filter
    except ImportError:
        return "Filing your own mail in Sent is not available on this server yet."
    try:
        create_sent_mail_filter(db.session, current_user.id, address)
    except ValueError as exc:
        return str(exc)
    return None


@bp.route("/accounts")
@login_required
def accounts_list():
    """The user's mail accounts: state, counters, last error in words, live progress."""
    redis = _redis_or_none()
    accounts = service.user_accounts(db.session, current_user.id)
    pops = {p.mail_account_id: p for p in db.session.scalars(
        db.select(PopAccount).where(PopAccount.user_id == current_user.id))}
    statuses = {p.id: service.status_of(db.session, p, redis) for p in pops.values()}
    return render_template("settings/accounts.html", accounts=accounts, pops=pops,
                           statuses=statuses, button_form=ConfirmForm(),
                           human_duration=service.human_duration,
                           runs={p.id: service.recent_runs(db.session, p.id, 1) for p in pops.values()})


@bp.route("/accounts/<int:pop_id>/progress")
@login_required
def accounts_progress(pop_id: int):
    """Small JSON for the live progress bar (polled by pop.js)."""
    account = _own_account(pop_id)
    status = service.status_of(db.session, account, _redis_or_none())
    status["eta"] = service.human_duration(status["eta_seconds"]) if status["left"] else ""
    return jsonify({k: status[k] for k in (
        "id", "state", "state_words", "on_server", "messages", "left", "rate", "eta",
        "eta_seconds", "running", "auth_failures", "connection_failures", "last_error",
        "skipped", "quarantined")})


@bp.route("/accounts/new", methods=["GET", "POST"])
@login_required
def accounts_new():
    """Add a POP account; saving tests the connection first."""
    form = PopAccountForm()
    check = None
    if form.validate_on_submit():
        if not form.password.data:
            form.password.errors.append("Enter the password of the mailbox.")
        else:
            new_only = form.which.data == "new"
            check = _check(form, form.password.data, want_uidls=new_only)
            if check.ok or form.save_anyway.data:
                try:
                    account = service.create_pop_account(
                        db.session, current_user._get_current_object(), email=form.email.data,
                        display_name=form.display_name.data or "", host=form.host.data,
                        port=form.port.data, security=form.security.data,
                        username=form.username.data, password=form.password.data,
                        secret_keys=current_app.config["MAIL_SECRET_KEYS"],
                        delete_from_server=form.delete_from_server.data == "delete",
                        new_only=new_only, baseline_uidls=check.uidls if check.ok else None,
                        batch_size=form.batch_size.data,
                        interval_seconds=form.interval_minutes.data * 60,
                        job_timeout=int(_config("POP_JOB_TIMEOUT")))
                except service.PopAccountError as exc:
                    db.session.rollback()
                    flash(str(exc), "error")
                else:
                    return _finish_save(form, check, account)
    return render_template("settings/accounts_form.html", form=form, check=check, account=None)


def _finish_save(form, check: service.ConnectionCheck, account: PopAccount):
    """After add or edit: the sent-mail filter, a failed test kept as the last error, commit."""
    warning = _file_sent_mail(account.email) if form.file_sent.data else None
    if not check.ok:
        account.last_error_kind, account.last_error = check.kind, check.message
    db.session.commit()
    _flash_saved(check, account, warning)
    return redirect(url_for("settings.accounts_list"))


def _flash_saved(check: service.ConnectionCheck, account: PopAccount, warning: str | None) -> None:
    if check.ok:
        flash(f"Saved. {check.message} Fetching has started.", "success")
    else:
        flash(f"Saved, but the connection test failed: {check.message}", "error")
    if account.security == "none":
        flash("This account connects without encryption: your password and mail can be read "
              "on the way. Choose SSL/TLS if the provider offers it.", "warning")
    if account.is_gmail_recent:
        flash("Gmail recent: mode keeps every message on the server (it lists the last 30 days "
              "again in each session).", "warning")
    if warning:
        flash(warning, "warning")


@bp.route("/accounts/<int:pop_id>/edit", methods=["GET", "POST"])
@login_required
def accounts_edit(pop_id: int):
    """Change a POP account; a blank password keeps the saved one for the same server and login."""
    account = _own_account(pop_id)
    form = PopAccountForm(obj=account)
    del form.which, form.email
    if not form.is_submitted():
        form.display_name.data = account.mail_account.display_name
        form.delete_from_server.data = "delete" if account.delete_from_server else "keep"
        form.interval_minutes.data = max(1, account.interval_seconds // 60)
        form.file_sent.data = False
        form.password.data = ""
    check = None
    if form.validate_on_submit():
        try:
            # The saved password only goes to the saved server and login: a changed one
            # needs it typed again before anything is tested or saved.
            password = service.password_for_login(
                account, host=form.host.data, port=form.port.data, security=form.security.data,
                username=form.username.data, password=form.password.data or "",
                secret_keys=current_app.config["MAIL_SECRET_KEYS"])
        except (service.PopAccountError, SecretDecryptError) as exc:
            form.password.errors.append(str(exc))
            password = None
        if password:
            check = _check(form, password, want_uidls=False)
            if check.ok or form.save_anyway.data:
                try:
                    service.update_pop_account(
                        db.session, account, host=form.host.data, port=form.port.data,
                        security=form.security.data, username=form.username.data,
                        password=form.password.data or None,
                        display_name=form.display_name.data or "",
                        secret_keys=current_app.config["MAIL_SECRET_KEYS"],
                        delete_from_server=form.delete_from_server.data == "delete",
                        batch_size=form.batch_size.data,
                        interval_seconds=form.interval_minutes.data * 60,
                        job_timeout=int(_config("POP_JOB_TIMEOUT")))
                except service.PopAccountError as exc:
                    db.session.rollback()
                    flash(str(exc), "error")
                else:
                    return _finish_save(form, check, account)
    return render_template("settings/accounts_form.html", form=form, check=check, account=account)


@bp.route("/accounts/<int:pop_id>/fetch", methods=["POST"])
@login_required
def accounts_fetch_now(pop_id: int):
    """"Fetch now": enqueue a fetch of the account at once."""
    account = _own_account(pop_id)
    form = ConfirmForm()
    if form.validate_on_submit():
        try:
            service.request_fetch(db.session, account, job_timeout=int(_config("POP_JOB_TIMEOUT")))
        except service.PopAccountError as exc:
            flash(str(exc), "error")
        else:
            db.session.commit()
            flash(f"Fetching {account.email} now.", "success")
    return redirect(url_for("settings.accounts_list"))


@bp.route("/accounts/<int:pop_id>/retry", methods=["POST"])
@login_required
def accounts_retry_quarantined(pop_id: int):
    """Try quarantined messages again (after the cause was fixed)."""
    account = _own_account(pop_id)
    if ConfirmForm().validate_on_submit():
        released = service.release_quarantine(db.session, account)
        service.request_fetch(db.session, account, job_timeout=int(_config("POP_JOB_TIMEOUT"))) \
            if account.state != "disabled" else None
        db.session.commit()
        flash(f"{released} quarantined message{'' if released == 1 else 's'} will be tried again.",
              "success")
    return redirect(url_for("settings.accounts_list"))


@bp.route("/accounts/<int:pop_id>/delete", methods=["GET", "POST"])
@login_required
def accounts_delete(pop_id: int):
    """Confirm, then stop fetching this account; mail already fetched stays."""
    account = _own_account(pop_id)
    form = ConfirmForm()
    if form.validate_on_submit():
        email = account.email
        service.delete_pop_account(db.session, account)
        db.session.commit()
        flash(f"{email} is no longer fetched. The mail already here stays.", "success")
        return redirect(url_for("settings.accounts_list"))
    return render_template("settings/accounts_delete.html", form=form, account=account)
