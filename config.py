"""Every setting of SkyDesk, read from the environment once and cast here.

Nothing else in the project reads ``os.environ``. Secrets may also come from a file
named by ``NAME_FILE`` (Docker/Kubernetes secrets). In production
(``SKYDESK_ENV=production``) a missing secret stops the app with a message naming it;
elsewhere secrets are generated once and kept in the instance folder.
"""
from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

from cryptography.fernet import Fernet

GIB = 1024**3
SECRET_NAMES = ("SECRET_KEY", "MAIL_SECRET_KEYS")


class ConfigError(RuntimeError):
    """A setting is missing or malformed; the message names it."""


def _env(environ: dict, name: str) -> str | None:
    """Return a setting from NAME, or from the file named by NAME_FILE, or None."""
    value = environ.get(name)
    if value not in (None, ""):
        return value
    path = environ.get(f"{name}_FILE")
    if path:
        try:
            return Path(path).read_text().strip()
        except OSError as exc:
            raise ConfigError(f"{name}_FILE={path} cannot be read: {exc.strerror}") from exc
    return None


def _int(environ: dict, name: str, default: int, minimum: int = 0) -> int:
    """Cast an integer setting, refusing garbage with a message that names it."""
    raw = _env(environ, name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a whole number, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, got {value}")
    return value


def _choice(environ: dict, name: str, allowed: tuple[str, ...], default: str) -> str:
    """A setting that must be one of a few words."""
    value = (_env(environ, name) or default).lower()
    if value not in allowed:
        raise ConfigError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
    return value


def _database_url(raw: str | None, instance_path: Path) -> str:
    """Default to SQLite in the instance folder; use psycopg 3 for PostgreSQL URLs."""
    if not raw:
        return f"sqlite:///{instance_path / 'skydesk.db'}"
    for prefix in ("postgres://", "postgresql://"):
        if raw.startswith(prefix):
            return "postgresql+psycopg://" + raw[len(prefix):]
    return raw


def _local_secrets(instance_path: Path) -> dict[str, str]:
    """Load, or create once, the development secrets kept in the instance folder."""
    path = instance_path / "secrets.json"
    if path.exists():
        return json.loads(path.read_text())
    generated = {
        "SECRET_KEY": secrets.token_urlsafe(48),
        "MAIL_SECRET_KEYS": Fernet.generate_key().decode(),
    }
    instance_path.mkdir(parents=True, exist_ok=True)
    # 0600 from the start: these keys decrypt stored POP/SMTP passwords.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(generated, handle)
    return generated


def instance_path_from_env(environ: dict | None = None) -> str | None:
    """SKYDESK_INSTANCE_PATH: where local state lives (default: the `instance` folder)."""
    environ = os.environ if environ is None else environ
    return environ.get("SKYDESK_INSTANCE_PATH") or None


def load_config(instance_path: str | os.PathLike, environ: dict | None = None) -> dict:
    """Build the Flask config mapping from the environment (or the given mapping)."""
    environ = dict(os.environ if environ is None else environ)
    instance = Path(instance_path)
    env_name = (_env(environ, "SKYDESK_ENV") or "development").lower()
    if env_name not in ("development", "production", "test"):
        raise ConfigError(f"SKYDESK_ENV must be development, production or test, got {env_name!r}")
    production = env_name == "production"

    found = {name: _env(environ, name) for name in SECRET_NAMES}
    missing = [name for name, value in found.items() if not value]
    if missing and production:
        raise ConfigError(
            "SKYDESK_ENV=production needs " + " and ".join(missing)
            + " (set it in the environment or in a file named by "
            + " / ".join(f"{n}_FILE" for n in missing) + ")"
        )
    if missing:
        stored = _local_secrets(instance)
        for name in missing:
            found[name] = stored[name]

    mail_keys = [key.strip() for key in found["MAIL_SECRET_KEYS"].split(",") if key.strip()]
    for key in mail_keys:
        try:
            Fernet(key.encode())
        except (ValueError, TypeError):
            raise ConfigError("MAIL_SECRET_KEYS holds a value that is not a Fernet key "
                              "(generate one with: python -c 'from cryptography.fernet import "
                              "Fernet; print(Fernet.generate_key().decode())')") from None

    ca_bundle = _env(environ, "MAIL_CA_BUNDLE")
    if ca_bundle and not Path(ca_bundle).is_file():
        raise ConfigError(f"MAIL_CA_BUNDLE={ca_bundle} is not a readable file")
    for name in ("INBOUND_TLS_CERT", "INBOUND_TLS_KEY"):
        path = _env(environ, name)
        if path and not Path(path).is_file():
            raise ConfigError(f"{name}={path} is not a readable file")

    public_url = (_env(environ, "SKYDESK_PUBLIC_URL") or "").rstrip("/") or None
    if production and not public_url:
        # Mailed password links would otherwise take their host from the request, which
        # anyone can forge (Host: evil.example) to collect reset tokens.
        raise ConfigError("SKYDESK_ENV=production needs SKYDESK_PUBLIC_URL "
                          "(e.g. https://mail.example.com), the base of mailed links")
    if public_url and not public_url.startswith(("https://", "http://")):
        raise ConfigError(f"SKYDESK_PUBLIC_URL must start with https:// or http://, got {public_url!r}")

    hash_profile = _choice(environ, "PASSWORD_HASH_PROFILE",
                           ("rfc_9106_low_memory", "rfc_9106_high_memory", "cheapest"),
                           "rfc_9106_low_memory").upper()
    if production and hash_profile == "CHEAPEST":
        raise ConfigError("PASSWORD_HASH_PROFILE=cheapest is for test suites, never production")

    return {
        "SKYDESK_ENV": env_name,
        "PASSWORD_HASH_PROFILE": hash_profile,
        "TESTING": env_name == "test",
        "SECRET_KEY": found["SECRET_KEY"],
        "MAIL_SECRET_KEYS": mail_keys,
        "MAIL_CA_BUNDLE": ca_bundle,
        "SQLALCHEMY_DATABASE_URI": _database_url(_env(environ, "DATABASE_URL"), instance),
        "SQLALCHEMY_ENGINE_OPTIONS": {"pool_pre_ping": True},
        "REDIS_URL": _env(environ, "REDIS_URL"),
        "REDIS_EMBEDDED_PATH": str(instance / "redis.db"),
        "BLOB_DIR": _env(environ, "BLOB_DIR") or str(instance / "blobs"),
        "PORT": _int(environ, "PORT", 5000, minimum=1),
        "TRUSTED_PROXIES": _int(environ, "TRUSTED_PROXIES", 0),
        "SESSION_COOKIE_HTTPONLY": True,
        "SESSION_COOKIE_SAMESITE": "Lax",
        "SESSION_COOKIE_SECURE": production,
        "REMEMBER_COOKIE_HTTPONLY": True,
        "REMEMBER_COOKIE_SAMESITE": "Lax",
        "REMEMBER_COOKIE_SECURE": production,
        "PREFERRED_URL_SCHEME": "https" if production else "http",
        "WTF_CSRF_TIME_LIMIT": None,
        "MAX_CONTENT_LENGTH": _int(environ, "MAIL_MAX_UPLOAD_BYTES", 40 * 1024**2, minimum=1),
        "MAIL_DEFAULT_QUOTA_BYTES": _int(environ, "MAIL_DEFAULT_QUOTA_BYTES", 5 * GIB, minimum=1),
        "MAIL_MAX_MESSAGE_BYTES": _int(environ, "MAIL_MAX_MESSAGE_BYTES", 35 * 1024**2, minimum=1),
        "LOGIN_THROTTLE_WINDOW": _int(environ, "LOGIN_THROTTLE_WINDOW", 900, minimum=1),
        "LOGIN_THROTTLE_PER_ACCOUNT_IP": _int(environ, "LOGIN_THROTTLE_PER_ACCOUNT_IP", 5, minimum=1),
        "LOGIN_THROTTLE_PER_IP": _int(environ, "LOGIN_THROTTLE_PER_IP", 30, minimum=1),
        "LOGIN_THROTTLE_PER_ACCOUNT": _int(environ, "LOGIN_THROTTLE_PER_ACCOUNT", 100, minimum=1),
        # The organization relay used when an organization has not set its own in the admin.
        # Base URL for links that are mailed or handed over (password resets, invitations).
        # Set it in production: otherwise links use the request's Host header.
        "SKYDESK_PUBLIC_URL": public_url,
        "MAIL_MX_HOST": _env(environ, "MAIL_MX_HOST"),  # shown on Admin » Domains
        "MAIL_SPF_INCLUDE": _env(environ, "MAIL_SPF_INCLUDE"),  # relay host for the SPF record
        "MAIL_RELAY_HOST": _env(environ, "MAIL_RELAY_HOST"),
        "MAIL_RELAY_PORT": _int(environ, "MAIL_RELAY_PORT", 25, minimum=1),
        "MAIL_RELAY_SECURITY": _choice(environ, "MAIL_RELAY_SECURITY", ("none", "starttls", "ssl"),
                                       "starttls"),
        "MAIL_RELAY_USERNAME": _env(environ, "MAIL_RELAY_USERNAME"),
        "MAIL_RELAY_PASSWORD": _env(environ, "MAIL_RELAY_PASSWORD"),
        "INBOUND_HOST": _env(environ, "INBOUND_HOST") or "127.0.0.1",
        "INBOUND_PORT": _int(environ, "INBOUND_PORT", 2525, minimum=1),
        "INBOUND_SUBMISSION_PORT": _int(environ, "INBOUND_SUBMISSION_PORT", 0),  # 0: none
        "INBOUND_HOSTNAME": _env(environ, "INBOUND_HOSTNAME"),  # greeting; default: FQDN
        "INBOUND_TLS_CERT": _env(environ, "INBOUND_TLS_CERT"),  # PEM chain: enables STARTTLS
        "INBOUND_TLS_KEY": _env(environ, "INBOUND_TLS_KEY"),
        "INBOUND_MAX_RECIPIENTS": _int(environ, "INBOUND_MAX_RECIPIENTS", 100, minimum=1),
        "POP_MAX_MESSAGE_BYTES": _int(environ, "POP_MAX_MESSAGE_BYTES", 0),  # 0: MAIL_MAX_MESSAGE_BYTES
        "POP_TIMEOUT_SECONDS": _int(environ, "POP_TIMEOUT_SECONDS", 30, minimum=1),
        "POP_LOCK_SECONDS": _int(environ, "POP_LOCK_SECONDS", 60, minimum=1),
        "POP_JOB_TIMEOUT": _int(environ, "POP_JOB_TIMEOUT", 600, minimum=30),
        "POP_BATCH_SECONDS": _int(environ, "POP_BATCH_SECONDS", 240, minimum=5),
        "POP_SWEEP_SECONDS": _int(environ, "POP_SWEEP_SECONDS", 5, minimum=1),
        "POP_PAUSED_RECHECK_SECONDS": _int(environ, "POP_PAUSED_RECHECK_SECONDS", 60, minimum=1),
        "POP_QUEUED_MARKER_SECONDS": _int(environ, "POP_QUEUED_MARKER_SECONDS", 120, minimum=1),
        "POP_DEFAULT_BATCH_SIZE": _int(environ, "POP_DEFAULT_BATCH_SIZE", 1000, minimum=1),
        "POP_DEFAULT_INTERVAL_SECONDS": _int(environ, "POP_DEFAULT_INTERVAL_SECONDS", 300,
                                             minimum=30),
        "RQ_QUEUES": ["default", "fetch", "send"],
        "RQ_JOB_TIMEOUT": _int(environ, "RQ_JOB_TIMEOUT", 600, minimum=10),
    }
