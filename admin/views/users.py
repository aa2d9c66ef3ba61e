"""Admin » Users: list, add, edit, disable, delete, and hand out password resets."""
from __future__ import annotations

from decimal import Decimal

from flask import abort, current_app, flash, make_response, redirect, render_template, \
    request, url_for
from flask_login import current_user
from sqlalchemy import func, or_, select

from admin.blueprint import bp, register_menu
from admin.forms import PasswordResetForm, UserAddForm, UserDeleteForm, UserEditForm, choices
from admin.views.audit import audit_admin
from webapp.auth.forms import EmptyForm
from webapp.auth.reset import public_link, reset_mail_text
from webapp.extensions import db
from webapp.models import User
from webapp.services import accounts_admin
from webapp.services.directory import DirectoryError
from webapp.services.quota import human_bytes

register_menu("Users", "admin.users_list", order=10)

PAGE_SIZE = 50
GIB = 1024**3


def gb_to_bytes(value: Decimal | None, default: int) -> int:
    """Quota typed in GB (GiB) → bytes; empty → the default."""
    return default if value is None else int(value * GIB)


def _org_user_or_404(user_id: int) -> User:
    user = accounts_admin.get_org_user(db.session, current_user.org_id, user_id)
    if user is None:
        abort(404)
    return user


def _secret_page(template: str, **context):
    """Render a page carrying a password or link: never cached, never put in a cookie."""
    response = make_response(render_template(template, **context))
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.route("/users")
def users_list():
    """Users of the organization, searchable by address or name, fifty per page."""
    search = (request.args.get("q") or "").strip()[:320]
    page = request.args.get("page", 1, type=int) or 1
    query = select(User).where(User.org_id == current_user.org_id)
    if search:
        pattern = "%" + search.lower().replace("\\", "\\\\").replace("%", "\\%") \
            .replace("_", "\\_") + "%"
        query = query.where(or_(func.lower(User.email).like(pattern, escape="\\"),
                                func.lower(User.display_name).like(pattern, escape="\\")))
    total = db.session.scalar(select(func.count()).select_from(query.subquery()))
    pages = max(1, (total + PAGE_SIZE - 1) // PAGE_SIZE)
    page = min(max(page, 1), pages)
    users = db.session.scalars(query.order_by(User.email).limit(PAGE_SIZE)
                               .offset((page - 1) * PAGE_SIZE)).all()
    return render_template("admin/users/list.html", users=users, search=search, page=page,
                           pages=pages, total=total, human_bytes=human_bytes,
                           action_form=EmptyForm())


@bp.route("/users/new", methods=["GET", "POST"])
def users_new():
    """Add a user: hosted address and folders, and an invitation link or one-time password."""
    org = current_user.organization
    form = UserAddForm()
    if form.validate_on_submit():
        default = current_app.config["MAIL_DEFAULT_QUOTA_BYTES"]
        try:
            user, secret = accounts_admin.add_user(
                db.session, org, email=form.email.data, display_name=form.display_name.data or "",
                is_admin=form.is_admin.data, quota_bytes=gb_to_bytes(form.quota_gb.data, default),
                credential=form.credential.data, recovery_email=form.recovery_email.data or "",
                created_by_id=current_user.id)
        except (DirectoryError, accounts_admin.AdminRuleError) as exc:
            db.session.rollback()
            form.email.errors.append(str(exc))
        else:
            audit_admin("user.created", user.email, {"credential": form.credential.data,
                                                     "is_admin": user.is_admin})
            db.session.commit()
            link = public_link("auth.reset_password", token=secret) \
                if form.credential.data == "invite" else None
            return _secret_page("admin/users/credential.html", user=user, link=link,
                                password=None if link else secret, mailed=False, kind="invite")
    return render_template("admin/users/new.html", form=form,
                           domains=[d.name for d in org.domains])


@bp.route("/users/<int:user_id>", methods=["GET", "POST"])
def users_edit(user_id: int):
    """Edit a user's name, role, recovery address and quota."""
    user = _org_user_or_404(user_id)
    form = UserEditForm(obj=user)
    if request.method == "GET":
        form.recovery_email.data = accounts_admin.recovery_address_of(db.session, user.id)
        form.quota_gb.data = (Decimal(user.quota_bytes) / GIB).quantize(Decimal("0.01"))
    if form.validate_on_submit():
        try:
            changed = accounts_admin.update_user(
                db.session, user, actor_id=current_user.id,
                display_name=form.display_name.data or "", is_admin=form.is_admin.data,
                recovery_email=form.recovery_email.data or "")
            quota = gb_to_bytes(form.quota_gb.data, current_app.config["MAIL_DEFAULT_QUOTA_BYTES"])
            if quota != user.quota_bytes:
                accounts_admin.set_quota(db.session, user, quota, form.allow_below_use.data)
                changed.append("quota_bytes")
        except accounts_admin.AdminRuleError as exc:
            db.session.rollback()
            target = form.quota_gb if "quota" in str(exc) else form.is_admin
            target.errors.append(str(exc))
        except DirectoryError as exc:
            db.session.rollback()
            form.recovery_email.errors.append(str(exc))
        else:
            if changed:
                audit_admin("user.updated", user.email, {"changed": changed,
                                                         "is_admin": user.is_admin,
                                                         "quota_bytes": user.quota_bytes})
            db.session.commit()
            flash(f"Saved {user.email}." if changed else "Nothing changed.", "success")
            return redirect(url_for("admin.users_edit", user_id=user.id))
    return render_template("admin/users/edit.html", user=user, form=form,
                           human_bytes=human_bytes, action_form=EmptyForm())


def _set_disabled(user_id: int, disabled: bool):
    user = _org_user_or_404(user_id)
    form = EmptyForm()
    if form.validate_on_submit():
        try:
            accounts_admin.set_disabled(db.session, user, disabled, actor_id=current_user.id)
        except accounts_admin.AdminRuleError as exc:
            db.session.rollback()
            flash(str(exc), "error")
        else:
            audit_admin("user.disabled" if disabled else "user.enabled", user.email)
            db.session.commit()
            flash(f"{user.email} is {'disabled; their sessions ended' if disabled else 'enabled'}.",
                  "success")
    return redirect(url_for("admin.users_edit", user_id=user.id))


@bp.route("/users/<int:user_id>/disable", methods=["POST"])
def users_disable(user_id: int):
    """Disable a user: every session ends at once and their jobs do nothing."""
    return _set_disabled(user_id, True)


@bp.route("/users/<int:user_id>/enable", methods=["POST"])
def users_enable(user_id: int):
    """Enable a disabled user again."""
    return _set_disabled(user_id, False)


@bp.route("/users/<int:user_id>/delete", methods=["GET", "POST"])
def users_delete(user_id: int):
    """Confirm, then delete a user with their mail; their CRM records are reassigned or deleted."""
    user = _org_user_or_404(user_id)
    others = db.session.scalars(select(User).where(User.org_id == current_user.org_id,
                                                   User.id != user.id).order_by(User.email)).all()
    form = UserDeleteForm()
    form.reassign_to.choices = choices([(u.id, u.email) for u in others])
    if form.validate_on_submit():
        reassigning = form.crm_records.data == "reassign"
        reassign_to = form.reassign_to.data if reassigning else None
        if form.confirm_email.data.strip().lower() != user.email:
            form.confirm_email.errors.append(f"Type {user.email} exactly to confirm.")
        elif reassigning and reassign_to not in {u.id for u in others}:
            form.reassign_to.errors.append("Choose who takes the records.")
        else:
            email = user.email
            try:
                accounts_admin.delete_user(db.session, user, actor_id=current_user.id,
                                           reassign_to_id=reassign_to)
            except accounts_admin.AdminRuleError as exc:
                db.session.rollback()
                flash(str(exc), "error")
            else:
                audit_admin("user.deleted", email, {"crm_records": form.crm_records.data,
                                                    "reassigned_to": reassign_to})
                db.session.commit()
                flash(f"{email} was deleted; their sessions ended.", "success")
                return redirect(url_for("admin.users_list"))
    return render_template("admin/users/delete.html", user=user, form=form,
                           human_bytes=human_bytes)


@bp.route("/users/<int:user_id>/reset", methods=["GET", "POST"])
def users_reset(user_id: int):
    """Hand the user a reset link or a one-time password; the admin never sees their new one."""
    user = _org_user_or_404(user_id)
    recovery = accounts_admin.recovery_address_of(db.session, user.id)
    form = PasswordResetForm()
    if form.validate_on_submit():
        if user.is_disabled:
            flash("Enable the user first: a disabled user cannot use a reset.", "error")
            return redirect(url_for("admin.users_edit", user_id=user.id))
        mailed = False
        if form.method.data == "link":
            raw = accounts_admin.issue_token(db.session, user, "reset",
                                             created_by_id=current_user.id)
            link = public_link("auth.reset_password", token=raw)
            if form.mail_link.data and recovery:
                mailed = accounts_admin.send_system_mail(
                    db.session, user.org_id, recovery, "Reset your SkyDesk Mail password",
                    reset_mail_text(link, "one hour"))
                if not mailed:
                    flash("The link could not be mailed (the outgoing relay is not set up): hand "
                          "it over yourself.", "warning")
            password = None
        else:
            password = accounts_admin.set_one_time_password(db.session, user)
            link = None
        audit_admin("user.password_reset", user.email, {"method": form.method.data,
                                                        "mailed": mailed})
        db.session.commit()
        return _secret_page("admin/users/credential.html", user=user, link=link,
                            password=password, mailed=mailed, kind="reset")
    return render_template("admin/users/reset.html", user=user, form=form, recovery=recovery)
