"""SkyDesk Mail Add-On: the application factory."""
from __future__ import annotations

import logging
from pathlib import Path

from flask import Flask, render_template
from werkzeug.middleware.proxy_fix import ProxyFix

from config import instance_path_from_env, load_config


def create_app(config: dict | None = None, environ: dict | None = None) -> Flask:
    """Create the app: settings, extensions, blueprints (admin too) and the CLI."""
    app = Flask(__name__, instance_relative_config=True)
    instance = (config or {}).get("INSTANCE_PATH") or instance_path_from_env(environ)
    if instance:
        app.instance_path = str(Path(instance).resolve())
    Path(app.instance_path).mkdir(parents=True, exist_ok=True)
    app.config.from_mapping(load_config(app.instance_path, environ))
    if config:
        app.config.from_mapping(config)

    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("skydesk").setLevel(logging.INFO)
    if app.config["TRUSTED_PROXIES"]:
        # Only as many X-Forwarded-For hops as there are proxies we run: a client cannot
        # pick its own address by sending the header itself.
        n = app.config["TRUSTED_PROXIES"]
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=n, x_proto=n, x_host=n)

    from webapp.services import passwords

    passwords.configure(app.config["PASSWORD_HASH_PROFILE"])
    _init_extensions(app)
    _register_blueprints(app)
    _register_errors(app)
    _register_security_headers(app)

    from webapp.cli import register_cli

    register_cli(app)
    return app


def _init_extensions(app: Flask) -> None:
    from webapp import models  # noqa: F401  (register every table with the metadata)
    from webapp.auth.session import init_login
    from webapp.extensions import csrf, db, migrate

    db.init_app(app)
    migrate.init_app(app, db, directory=str(Path(__file__).resolve().parent.parent / "migrations"),
                     render_as_batch=True, compare_type=True)
    csrf.init_app(app)
    init_login(app)
    if app.config["SQLALCHEMY_DATABASE_URI"].startswith("sqlite"):
        _tune_sqlite(app)
    else:
        from webapp.durability import restore_on_checkin

        with app.app_context():
            restore_on_checkin(db.engine)


def _tune_sqlite(app: Flask) -> None:
    """WAL and a busy timeout let the web, the worker and the CLI share one SQLite file."""
    from sqlalchemy import event

    from webapp.durability import restore_on_checkin
    from webapp.extensions import db

    with app.app_context():
        engine = db.engine

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record):
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA foreign_keys=ON")
        # FULL: a commit is on disk before it returns. POP deletes from the server only
        # after the commit, so a commit a power cut could undo (NORMAL) would lose mail.
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.close()

    restore_on_checkin(engine)


def _register_blueprints(app: Flask) -> None:
    from admin import bp as admin_bp
    from webapp.auth import bp as auth_bp
    from webapp.contacts.views import bp as contacts_bp
    from webapp.crm.views import bp as crm_bp
    from webapp.mail import bp as mail_bp
    from webapp.main.views import bp as main_bp
    from webapp.recruit.views import bp as recruit_bp
    from webapp.settings import bp as settings_bp

    for blueprint in (main_bp, auth_bp, mail_bp, settings_bp, crm_bp, recruit_bp, contacts_bp):
        app.register_blueprint(blueprint)
    app.register_blueprint(admin_bp, url_prefix="/admin")


def _register_errors(app: Flask) -> None:
    from flask_wtf.csrf import CSRFError

    def _page(code: int, title: str, text: str):
        return render_template("errors/error.html", code=code, title=title, text=text), code

    @app.errorhandler(403)
    def forbidden(_error):
        return _page(403, "Not allowed", "You do not have access to this page.")

    @app.errorhandler(404)
    def not_found(_error):
        return _page(404, "Not found", "There is nothing here, or it is not yours to see.")

    @app.errorhandler(CSRFError)
    def csrf_error(error):
        return _page(400, "Form expired", "The form was missing its security token or it "
                     "expired. Go back, reload the page and try again.")

    @app.errorhandler(413)
    def too_large(_error):
        return _page(413, "Too large", "What you sent is larger than this server accepts.")

    @app.errorhandler(500)
    def server_error(_error):
        return _page(500, "Something went wrong", "The error was logged. Nothing you typed was "
                     "saved by the failed request; try again in a moment.")


def _register_security_headers(app: Flask) -> None:
    @app.after_request
    def _headers(response):
        response.headers.setdefault(
            "Content-Security-Policy",
            "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
            "object-src 'none'; base-uri 'self'; form-action 'self'; frame-ancestors 'self'")
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        response.headers.setdefault("X-Frame-Options", "SAMEORIGIN")
        return response
