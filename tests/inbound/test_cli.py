"""`flask --app wsgi inbound`: its own process, stopped cleanly by a signal (issue 3 item 6)."""
from __future__ import annotations

import signal
import smtplib
import socket
import subprocess
import sys
import time

import pytest

from tests.conftest import PROJECT_ROOT
from tests.inbound.conftest import free_loopback_port


def _wait_for_line(process: subprocess.Popen, needle: str, timeout: float = 60) -> list[str]:
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line)
        if needle in line:
            return lines
    raise AssertionError(f"{needle!r} never printed; output so far: {lines!r}")


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_inbound_command_delivers_and_stops_on_signal(app, user, cli_env, stop_signal):
    port, submission_port = free_loopback_port(), free_loopback_port()
    env = {**cli_env, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "flask", "--app", "wsgi", "inbound", "--host", "127.0.0.1",
         "--port", str(port), "--submission-port", str(submission_port)],
        cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines = _wait_for_line(process, "Press Ctrl-C")
        assert any(f"127.0.0.1:{port}" in line and "SMTP delivery" in line for line in lines)
        assert any(f"127.0.0.1:{submission_port}" in line for line in lines)
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
            assert smtp.sendmail("a@sender.example", [user.email],
                                 b"Subject: via the CLI listener\r\n\r\nhi\r\n") == {}
        process.send_signal(stop_signal)
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, err
    assert "Stopped." in out
    assert "via the CLI listener" not in err  # one line per transaction, never the body
    assert f"rcpts={user.email}:250" in err
    with pytest.raises(OSError):  # the port is closed again
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


def test_inbound_command_reports_a_busy_port(app, runner):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = runner.invoke(args=["inbound", "--port", str(port)])
    assert result.exit_code == 1
    assert f"cannot listen on 127.0.0.1 (ports {port})" in result.output


def test_inbound_command_reports_an_unusable_certificate(app, runner, tmp_path):
    app.config["INBOUND_TLS_CERT"] = str(tmp_path / "missing.crt")
    result = runner.invoke(args=["inbound", "--port", str(free_loopback_port())])
    assert result.exit_code == 1
    assert "INBOUND_TLS_CERT/INBOUND_TLS_KEY cannot be loaded" in result.output


def test_submission_port_must_differ(app, runner):
    result = runner.invoke(args=["inbound", "--port", "2600", "--submission-port", "2600"])
    assert result.exit_code == 1 and "must differ" in result.output
