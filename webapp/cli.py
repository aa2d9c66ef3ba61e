"""Operator commands: `flask --app wsgi org|user|worker|health|up …`.

Each command prints a clear error and exits non-zero on bad input, writes nothing when
it fails, and prints the id of what it created as the last line of its output.
"""
from __future__ import annotations

import json
import secrets
import sys
import time
import uuid
from pathlib import Path

import click
from flask import Flask, current_app
from flask.cli import AppGroup
from sqlalchemy import func, select

from webapp.extensions import db

org_cli = AppGroup("org", help="Organizations.")
user_cli = AppGroup("user", help="Users of an organization.")


def fail(message: str) -> None:
    """Print an error to stderr and exit with status 1."""
    click.echo(f"Error: {message}", err=True)
    sys.exit(1)


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


@click.command("worker")
@click.option("--queues", default=None, help="Comma-separated queue names (default: all).")
@click.option("--burst", is_flag=True, help="Exit when the queues are empty.")
@click.option("--no-scheduler", is_flag=True, help="Do not run RQ's scheduler in this worker.")
def worker_command(queues: str | None, burst: bool, no_scheduler: bool) -> None:
    """Run an RQ worker (with its scheduler) with this app's configuration."""
    from worker.runner import run_worker

    names = [q.strip() for q in queues.split(",")] if queues else current_app.config["RQ_QUEUES"]
    run_worker(current_app._get_current_object(), names, burst=burst,
               with_scheduler=not no_scheduler)


@click.command("health")
@click.option("--timeout", default=30.0, show_default=True, help="Seconds to wait for a worker.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def health_command(timeout: float, as_json: bool) -> None:
    """Prove web → Redis → worker → database: enqueue a job and wait for its row."""
    from webapp.models import HealthCheck
    from webapp.queue import enqueue_after_commit

    token = uuid.uuid4().hex
    db.session.add(HealthCheck(token=token))
    enqueue_after_commit("worker.jobs.health.record_health", token, job_timeout=60)
    db.session.commit()
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        db.session.expire_all()
        check = db.session.scalar(select(HealthCheck).where(HealthCheck.token == token))
        if check.completed_at is not None:
            elapsed = time.monotonic() - started
            if as_json:
                click.echo(json.dumps({"ok": True, "seconds": round(elapsed, 3),
                                       "worker": check.worker_name}))
            else:
                click.echo(f"OK: worker {check.worker_name} answered in {elapsed:.2f} s.")
            return
        time.sleep(0.2)
    fail(f"no worker completed the health job within {timeout:g} s; "
         "is `flask --app wsgi worker` running against the same Redis and database?")


@click.command("up")
@click.option("--port", type=int, default=None, help="Web port (default: PORT or 5000).")
@click.option("--host", default="127.0.0.1", show_default=True)
def up_command(port: int | None, host: str) -> None:
    """Migrate, create the demo organization on first run, run web + worker until Ctrl-C."""
    from webapp.devserver import run_everything

    run_everything(current_app._get_current_object(), host=host,
                   port=port or current_app.config["PORT"])


def register_cli(app: Flask) -> None:
    """Attach every operator command to the app."""
    for command in (org_cli, user_cli, worker_command, health_command, up_command):
        app.cli.add_command(command)
