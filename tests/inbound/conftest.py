"""Fixtures for the inbound listener: a real aiosmtpd listener of the test app on loopback."""
from __future__ import annotations

import socket
import ssl
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from sqlalchemy import select

from webapp.extensions import db
from webapp.models import MailAccount
from worker.inbound import ListenerController, start_listener, stop_listener


@dataclass
class RunningListener:
    """Where a started listener accepts connections."""

    host: str
    port: int
    controller: ListenerController


def free_loopback_port() -> int:
    """A port nobody listens on right now (aiosmtpd's Controller needs a concrete one)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def listener(app) -> Iterator[Callable[..., RunningListener]]:
    """Factory: start the app's listener (mode "smtp", "lmtp" or "submission"); stopped after."""
    running: list[ListenerController] = []

    def start(mode: str = "smtp", tls_context: ssl.SSLContext | None = None) -> RunningListener:
        last_error: OSError | None = None
        for _attempt in range(3):  # the probed port can be taken before we bind it
            port = free_loopback_port()
            try:
                controller = start_listener(app, "127.0.0.1", port, mode=mode,
                                            tls_context=tls_context, hostname="mx.test.invalid")
            except OSError as error:
                last_error = error
                continue
            running.append(controller)
            return RunningListener("127.0.0.1", port, controller)
        raise RuntimeError(f"could not start the listener on a free port: {last_error}")

    yield start
    for controller in running:
        stop_listener(controller)


def hosted_account(user) -> MailAccount:
    """The user's hosted mail account."""
    return db.session.scalar(select(MailAccount).where(MailAccount.user_id == user.id,
                                                       MailAccount.kind == "hosted"))
