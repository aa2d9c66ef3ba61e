"""Admin » Domains: the organization's hosted domains and the DNS records to publish."""
from __future__ import annotations

from flask import abort, current_app, flash, redirect, render_template, url_for
from flask_login import current_user
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from admin.blueprint import bp, register_menu
from admin.forms import DomainAddForm
from admin.views.audit import audit_admin
from webapp.auth.forms import EmptyForm
from webapp.extensions import db
from webapp.models import Domain, MailAccount, User
from webapp.services.directory import DirectoryError, normalize_domain

register_menu("Domains", "admin.domains_index", order=20)


def dns_records(domain: str, primary: str, mx_host: str | None,
                spf_include: str | None) -> list[tuple[str, str, str]]:
    """The (name, type, value) records a domain needs for mail to reach this server."""
    host = (mx_host or f"mail.{primary}").rstrip(".")
    spf = f"v=spf1 mx include:{spf_include} -all" if spf_include else "v=spf1 mx -all"
    return [(domain, "MX", f"10 {host}."), (domain, "TXT", spf)]


def _domain_or_404(domain_id: int) -> Domain:
    domain = db.session.scalar(select(Domain).where(Domain.id == domain_id,
                                                    Domain.org_id == current_user.org_id))
    if domain is None:
        abort(404)
    return domain


def _addresses_on(domain: Domain) -> int:
    """How many user and hosted-account addresses of the organization use this domain."""
    suffix = f"%@{domain.name}"
    users = db.session.scalar(select(func.count()).select_from(User).where(
        User.org_id == domain.org_id, func.lower(User.email).like(suffix)))
    accounts = db.session.scalar(select(func.count()).select_from(MailAccount).where(
        MailAccount.org_id == domain.org_id, MailAccount.kind == "hosted",
        func.lower(MailAccount.email).like(suffix)))
    return (users or 0) + (accounts or 0)


@bp.route("/domains", methods=["GET", "POST"])
def domains_index():
    """List the domains with their DNS records; add a new one."""
    org = current_user.organization
    form = DomainAddForm()
    if form.validate_on_submit():
        try:
            name = normalize_domain(form.name.data)
            if db.session.scalar(select(Domain).where(Domain.name == name)) is not None:
                raise DirectoryError(f"{name} is already hosted here (by this or another "
                                     "organization).")
            db.session.add(Domain(org_id=org.id, name=name, is_primary=not org.domains))
            audit_admin("domain.added", name)
            db.session.commit()
        except DirectoryError as exc:
            db.session.rollback()
            form.name.errors.append(str(exc))
        except IntegrityError:
            db.session.rollback()
            form.name.errors.append("That domain was just added by someone else.")
        else:
            flash(f"{name} was added. Publish its DNS records below.", "success")
            return redirect(url_for("admin.domains_index"))
    domains = db.session.scalars(select(Domain).where(Domain.org_id == org.id)
                                 .order_by(Domain.name)).all()
    primary = org.primary_domain.name if org.primary_domain else ""
    cfg = current_app.config
    records = {d.id: dns_records(d.name, primary, cfg.get("MAIL_MX_HOST"),
                                 cfg.get("MAIL_SPF_INCLUDE")) for d in domains}
    in_use = {d.id: _addresses_on(d) for d in domains}
    return render_template("admin/domains.html", form=form, domains=domains, records=records,
                           in_use=in_use,
                           # No DKIM signing exists yet; the page says so instead of a record.
                           dkim_configured=False,
                           action_form=EmptyForm())


@bp.route("/domains/<int:domain_id>/primary", methods=["POST"])
def domains_primary(domain_id: int):
    """Make this the domain new users get their address on."""
    domain = _domain_or_404(domain_id)
    if EmptyForm().validate_on_submit():
        for other in db.session.scalars(select(Domain).where(Domain.org_id == domain.org_id)):
            other.is_primary = other.id == domain.id
        audit_admin("domain.primary", domain.name)
        db.session.commit()
        flash(f"{domain.name} is now the primary domain.", "success")
    return redirect(url_for("admin.domains_index"))


@bp.route("/domains/<int:domain_id>/delete", methods=["POST"])
def domains_delete(domain_id: int):
    """Remove a domain no address uses and that is not the primary one."""
    domain = _domain_or_404(domain_id)
    if EmptyForm().validate_on_submit():
        used = _addresses_on(domain)
        if used:
            flash(f"{domain.name} still carries {used} address{'es' if used != 1 else ''}: "
                  "delete or move those users first.", "error")
        elif domain.is_primary:
            flash("Make another domain primary before removing this one.", "error")
        else:
            name = domain.name
            db.session.delete(domain)
            audit_admin("domain.deleted", name)
            db.session.commit()
            flash(f"{name} was removed.", "success")
    return redirect(url_for("admin.domains_index"))
