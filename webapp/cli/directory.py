"""Operator commands for organizations and users: `flask --app wsgi org|user …`."""
from __future__ import annotations

import click
from flask import current_app
from flask.cli import AppGroup

from webapp.cli.common import fail
from webapp.extensions import db

org_cli = AppGroup("org", help="Organizations.")
user_cli = AppGroup("user", help="Users of an organization.")


@org_cli.command("create")
@click.option("--name", required=True, help="Organization name.")
@click.option("--domain", required=True, help="Its first hosted mail domain.")
@click.option("--admin-email", required=True, help="Address of the first admin (on the domain).")
@click.option("--admin-password", required=True, help="Password of the first admin.")
def org_create(name: str, domain: str, admin_email: str, admin_password: str) -> None:
    """Create an organization with a hosted domain and its first admin."""
    from webapp.services.directory import DirectoryError, create_organization

    try:
        org, admin = create_organization(db.session, name=name, domain=domain,
                                         admin_email=admin_email, admin_password=admin_password,
                                         quota_bytes=current_app.config["MAIL_DEFAULT_QUOTA_BYTES"])
        db.session.commit()
    except DirectoryError as exc:
        db.session.rollback()
        fail(str(exc))
    click.echo(f"Created organization {org.name} with domain {org.domains[0].name}; "
               f"admin {admin.email} (user id {admin.id}).")
    click.echo(org.id)


@user_cli.command("create")
@click.option("--org", "org_domain", required=True, help="A domain of the organization.")
@click.option("--email", required=True, help="The user's address on one of its domains.")
@click.option("--password", required=True)
@click.option("--admin", is_flag=True, help="Make the user an organization admin.")
@click.option("--name", default="", help="Display name.")
def user_create(org_domain: str, email: str, password: str, admin: bool, name: str) -> None:
    """Create a user (with hosted account and folders) in an organization."""
    from webapp.services.directory import DirectoryError, create_user, find_org_by_domain

    try:
        org = find_org_by_domain(db.session, org_domain)
        user = create_user(db.session, org, email=email, password=password, is_admin=admin,
                           display_name=name,
                           quota_bytes=current_app.config["MAIL_DEFAULT_QUOTA_BYTES"])
        db.session.commit()
    except DirectoryError as exc:
        db.session.rollback()
        fail(str(exc))
    click.echo(f"Created {'admin' if admin else 'user'} {user.email} in {org.name}.")
    click.echo(user.id)

COMMANDS = [org_cli, user_cli]
