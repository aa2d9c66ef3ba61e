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
    """A port nobody listens on right now (for a listener in a subprocess)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def listener(app) -> Iterator[Callable[..., RunningListener]]:
    """Factory: start the app's listener (mode "smtp", "lmtp" or "submission"); stopped after."""
    running: list[ListenerController] = []

    def start(mode: str = "smtp", tls_context: ssl.SSLContext | None = None) -> RunningListener:
        controller = start_listener(app, "127.0.0.1", 0, mode=mode, tls_context=tls_context,
                                    hostname="mx.test.invalid")
        running.append(controller)
        return RunningListener("127.0.0.1", controller.port, controller)

    yield start
    for controller in running:
        stop_listener(controller)


def hosted_account(user) -> MailAccount:
    """The user's hosted mail account."""
    return db.session.scalar(select(MailAccount).where(MailAccount.user_id == user.id,
                                                       MailAccount.kind == "hosted"))
