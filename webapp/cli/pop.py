"""Operator commands for POP accounts: `flask --app wsgi pop add|fetch|status`."""
from __future__ import annotations

import json
import sys
import time

import click
from flask import current_app
from flask.cli import AppGroup
from sqlalchemy import select

from webapp.cli.common import fail
from webapp.extensions import db

pop_cli = AppGroup("pop", help="POP accounts fetched by the worker.")

# `pop fetch` waits this long for a worker that is fetching the same account to finish.
BUSY_WAIT_SECONDS = 120


def _address_for(username: str, host: str) -> str:
    """The address an account stands for: the username when it is one, else user@host."""
    bare = username.split(":", 1)[1] if username.lower().startswith("recent:") else username
    return bare if "@" in bare else f"{bare}@{host}"


@pop_cli.command("add")
@click.option("--user", "user_email", required=True, help="The user who gets the mail.")
@click.option("--host", required=True, help="POP server name.")
@click.option("--port", type=click.IntRange(1, 65535), required=True)
@click.option("--security", type=click.Choice(["ssl", "starttls", "none"]), required=True)
@click.option("--username", required=True, help="Login at the POP server (Gmail: recent:…).")
@click.option("--password", required=True)
@click.option("--delete-from-server", is_flag=True, help="Delete each message once stored.")
@click.option("--new-only", is_flag=True, help="Only mail that arrives from now on.")
@click.option("--addon", type=click.Choice(["crm", "recruit"]), default=None,
              help="Make this account feed the CRM or Recruit add-on.")
@click.option("--email", default=None, help="The account's address (default: the username).")
@click.option("--batch-size", type=int, default=None, help="Messages per batch.")
@click.option("--interval", type=int, default=None, help="Seconds between checks.")
def pop_add(user_email: str, host: str, port: int, security: str, username: str, password: str,
            delete_from_server: bool, new_only: bool, addon: str | None, email: str | None,
            batch_size: int | None, interval: int | None) -> None:
    """Add a POP account for a user; prints its id last."""
    from webapp.models import User
    from webapp.services.pop_accounts import (PopAccountError, create_pop_account, pop_setting,
                                              probe_server)

    config = current_app.config
    user = db.session.scalar(select(User).where(User.email == user_email.strip().lower()))
    if user is None:
        fail(f"no user {user_email!r}")
    baseline = None
    if new_only:
        try:
            baseline = probe_server(host, port, security, username, password,
                                    ca_bundle=config.get("MAIL_CA_BUNDLE"),
                                    timeout=float(pop_setting(config, "POP_TIMEOUT_SECONDS")),
                                    want_uidls=True)["uidls"]
        except Exception as exc:  # noqa: BLE001 - PopError or bad settings; baseline comes later
            click.echo(f"Warning: could not read the mailbox now ({getattr(exc, 'user_message', exc)}); "
                       "the first successful fetch records what is there as already seen.",
                       err=True)
    try:
        account = create_pop_account(
            db.session, user, email=email or _address_for(username, host), host=host, port=port,
            security=security, username=username, password=password,
            secret_keys=config["MAIL_SECRET_KEYS"], delete_from_server=delete_from_server,
            new_only=new_only, baseline_uidls=baseline,
            batch_size=pop_setting(config, "POP_DEFAULT_BATCH_SIZE") if batch_size is None
            else batch_size,
            interval_seconds=pop_setting(config, "POP_DEFAULT_INTERVAL_SECONDS") if interval is None
            else interval,
            job_timeout=int(pop_setting(config, "POP_JOB_TIMEOUT")))
        if addon:
            from webapp.services.addon import AddonError, set_addon_account

            try:
                set_addon_account(db.session, user.id, addon, account.mail_account_id)
            except AddonError as exc:
                raise PopAccountError(str(exc)) from None
        db.session.commit()
    except PopAccountError as exc:
        db.session.rollback()
        fail(str(exc))
    click.echo(f"Added POP account {account.email} ({account.username} at {account.host}:"
               f"{account.port}, {account.security}) for {user.email}"
               + (f"; it feeds {addon}" if addon else "") + ".")
    click.echo(account.id)


@pop_cli.command("fetch")
@click.argument("account_id", type=int)
def pop_fetch(account_id: int) -> None:
    """Fetch an account now, batch after batch until nothing is left, with a progress bar."""
    from webapp.models.pop import PopAccount
    from worker.jobs.fetch import run_batch

    account = db.session.get(PopAccount, account_id)
    if account is None:
        fail(f"no POP account {account_id}")
    if account.state == "disabled":
        fail(f"account {account_id} is disabled ({account.last_error or account.state_reason}); "
             "save its password again or re-enable it first")
    email = account.email
    totals = {"stored": 0, "skipped": 0, "batches": 0}
    bar = None
    waited = 0.0
    try:
        while True:
            done_before = totals["stored"] + totals["skipped"]

            def show(partial, done_before=done_before):
                nonlocal bar
                if bar is None:
                    bar = click.progressbar(length=done_before + partial.stored + partial.skipped
                                            + partial.quarantined + partial.left,
                                            label=f"Fetching {email}", show_eta=True,
                                            show_pos=True, file=sys.stderr)
                    bar.__enter__()
                bar.update(done_before + partial.stored + partial.skipped
                           + partial.quarantined - bar.pos)

            result = run_batch(account_id, progress=show)
            if result.status == "busy":
                if waited >= BUSY_WAIT_SECONDS:
                    fail("a worker has been fetching this account for a while; try again later")
                time.sleep(1)
                waited += 1
                continue
            totals["batches"] += 1
            totals["stored"] += result.stored
            totals["skipped"] += result.skipped + result.quarantined
            if result.status != "more":
                break
    finally:
        if bar is not None:
            bar.__exit__(None, None, None)
    if result.status == "error":
        fail(f"{result.error} ({result.error_kind}); stored {totals['stored']} before it")
    if result.status == "paused":
        fail(f"paused: storage full; stored {totals['stored']}, {result.left} left on the server")
    if result.status == "inactive":
        fail(f"account {account_id} cannot be fetched: {result.error}")
    click.echo(f"Stored {totals['stored']} messages, skipped {totals['skipped']}, in "
               f"{totals['batches']} batches; {result.left} left, {result.on_server} on the server.")


@pop_cli.command("status")
@click.option("--user", "user_email", default=None, help="Only this user's accounts.")
@click.option("--json", "as_json", is_flag=True, help="A JSON list of objects.")
def pop_status(user_email: str | None, as_json: bool) -> None:
    """Every POP account: state, counters, fetched, left, last error."""
    from webapp.models import User
    from webapp.models.pop import PopAccount
    from webapp.queue import get_redis
    from webapp.services.pop_accounts import status_of

    query = select(PopAccount).order_by(PopAccount.id)
    if user_email:
        user = db.session.scalar(select(User).where(User.email == user_email.strip().lower()))
        if user is None:
            fail(f"no user {user_email!r}")
        query = query.where(PopAccount.user_id == user.id)
    try:
        redis = get_redis()
        redis.ping()
    except Exception:  # noqa: BLE001 - status still works from the database alone
        redis = None
    rows = [status_of(db.session, account, redis) for account in db.session.scalars(query)]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("No POP accounts.")
        return
    for row in rows:
        click.echo(f"{row['id']:>5}  {row['email']}  ({row['user']})  {row['state_words']}  "
                   f"stored {row['messages']}, left {row['left']}, "
                   f"failures auth {row['auth_failures']} / connection {row['connection_failures']}"
                   + (f"\n       last error: {row['last_error']}" if row['last_error'] else ""))


COMMANDS = [pop_cli]
