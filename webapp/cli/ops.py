"""Operator commands that run or check processes: `flask --app wsgi worker|health|up`."""
from __future__ import annotations

import json
import time
import uuid

import click
from flask import current_app
from sqlalchemy import select

from webapp.cli.common import fail
from webapp.extensions import db


@click.command("worker")
@click.option("--queues", default=None, help="Comma-separated queue names (default: all).")
@click.option("--burst", is_flag=True, help="Exit when the queues are empty.")
@click.option("--no-scheduler", is_flag=True, help="Do not run RQ's scheduler in this worker.")
def worker_command(queues: str | None, burst: bool, no_scheduler: bool) -> None:
    """Run an RQ worker (with its scheduler) with this app's configuration."""
    import gc

    from sqlalchemy.orm import configure_mappers

    from worker.runner import run_worker

    names = [q.strip() for q in queues.split(",")] if queues else current_app.config["RQ_QUEUES"]
    # What start-up built (modules, the app, the mappers) lives as long as the process: out
    # of the collector's sight, a full collection walks only what jobs leave behind, instead
    # of pausing a send job for some 90 ms to walk 160,000 objects that cannot be garbage.
    configure_mappers()
    gc.collect()
    gc.freeze()
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
    message = (f"no worker completed the health job within {timeout:g} s; "
               "is `flask --app wsgi worker` running against the same Redis and database?")
    if as_json:
        click.echo(json.dumps({"ok": False, "error": message}))
    fail(message)


@click.command("up")
@click.option("--port", type=int, default=None, help="Web port (default: PORT or 5000).")
@click.option("--host", default="127.0.0.1", show_default=True)
def up_command(port: int | None, host: str) -> None:
    """Migrate, create the demo organization on first run, run web + worker until Ctrl-C."""
    from webapp.devserver import run_everything

    run_everything(current_app._get_current_object(), host=host,
                   port=port or current_app.config["PORT"])

COMMANDS = [worker_command, health_command, up_command]
