"""Operator command for the inbound listener: `flask --app wsgi inbound`."""
from __future__ import annotations

import click
from flask import current_app

from webapp.cli.common import fail

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 2525


@click.command("inbound")
@click.option("--host", default=None,
              help=f"Address to listen on (default: INBOUND_HOST or {DEFAULT_HOST}).")
@click.option("--port", type=click.IntRange(1, 65535), default=None,
              help="Delivery port for the hosted domains "
                   f"(default: INBOUND_PORT or {DEFAULT_PORT}).")
@click.option("--submission-port", type=click.IntRange(1, 65535), default=None,
              help="Also listen for authenticated submission from hosted users' mail clients "
                   "(default: INBOUND_SUBMISSION_PORT, off when unset).")
@click.option("--lmtp", is_flag=True,
              help="Speak LMTP on the delivery port (Postfix/Exim hand over by LMTP).")
def inbound_command(host: str | None, port: int | None, submission_port: int | None,
                    lmtp: bool) -> None:
    """Run the SMTP/LMTP listener for the hosted domains until SIGTERM or Ctrl-C."""
    from worker.inbound import run_listeners, tls_context_from_config

    config = current_app.config
    host = host or config.get("INBOUND_HOST") or DEFAULT_HOST
    port = port or config.get("INBOUND_PORT") or DEFAULT_PORT
    submission_port = submission_port or config.get("INBOUND_SUBMISSION_PORT") or None
    if submission_port == port:
        fail(f"--submission-port must differ from the delivery port {port}.")

    try:
        tls_context = tls_context_from_config(config)
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        fail(f"INBOUND_TLS_CERT/INBOUND_TLS_KEY cannot be loaded: {exc}")

    def ready(lines: list[str]) -> None:
        for line in lines:
            click.echo(line)
        click.echo("Press Ctrl-C (or send SIGTERM) to stop.")

    try:
        run_listeners(current_app._get_current_object(), host, port, lmtp=lmtp,
                      submission_port=submission_port, tls_context=tls_context,
                      on_ready=ready)
    except OSError as exc:
        fail(f"cannot listen on {host} (ports {port}"
             f"{f', {submission_port}' if submission_port else ''}): {exc.strerror or exc}")
    click.echo("Stopped.")


COMMANDS = [inbound_command]
