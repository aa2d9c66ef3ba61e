"""Configuration: read once from the environment; production refuses to start without secrets."""
from __future__ import annotations

import pytest
from cryptography.fernet import Fernet

from config import ConfigError, load_config
from webapp import create_app

KEY = Fernet.generate_key().decode()


@pytest.mark.parametrize("missing", ["SECRET_KEY", "MAIL_SECRET_KEYS", "SKYDESK_PUBLIC_URL"])
def test_production_without_a_secret_refuses_to_start_and_names_it(tmp_path, missing):
    environ = {"SKYDESK_ENV": "production", "SECRET_KEY": "s" * 40, "MAIL_SECRET_KEYS": KEY,
               "SKYDESK_PUBLIC_URL": "https://mail.example.com"}
    del environ[missing]
    with pytest.raises(ConfigError, match=missing):
        create_app({"INSTANCE_PATH": str(tmp_path)}, environ=environ)
    assert not (tmp_path / "secrets.json").exists()


def test_production_reads_secrets_from_files(tmp_path):
    (tmp_path / "sk").write_text("file-secret\n")
    cfg = load_config(tmp_path, {"SKYDESK_ENV": "production", "SECRET_KEY_FILE": str(tmp_path / "sk"),
                                 "MAIL_SECRET_KEYS": KEY,
                                 "SKYDESK_PUBLIC_URL": "https://mail.example.com/"})
    assert cfg["SKYDESK_PUBLIC_URL"] == "https://mail.example.com"
    assert cfg["SECRET_KEY"] == "file-secret"
    assert cfg["SESSION_COOKIE_SECURE"] is True


def test_development_generates_secrets_once_and_keeps_them(tmp_path):
    first = load_config(tmp_path, {})
    second = load_config(tmp_path, {})
    assert first["SECRET_KEY"] == second["SECRET_KEY"] and len(first["SECRET_KEY"]) > 40
    assert first["MAIL_SECRET_KEYS"] == second["MAIL_SECRET_KEYS"]
    assert (tmp_path / "secrets.json").stat().st_mode & 0o777 == 0o600
    assert first["SESSION_COOKIE_SECURE"] is False


def test_defaults_are_embedded(tmp_path):
    cfg = load_config(tmp_path, {})
    assert cfg["SQLALCHEMY_DATABASE_URI"] == f"sqlite:///{tmp_path / 'skydesk.db'}"
    assert cfg["REDIS_URL"] is None
    assert cfg["REDIS_EMBEDDED_PATH"] == str(tmp_path / "redis.db")
    assert cfg["BLOB_DIR"] == str(tmp_path / "blobs")
    assert cfg["PORT"] == 5000 and cfg["TRUSTED_PROXIES"] == 0


def test_postgres_urls_use_psycopg3(tmp_path):
    cfg = load_config(tmp_path, {"DATABASE_URL": "postgres://u@db/x"})
    assert cfg["SQLALCHEMY_DATABASE_URI"] == "postgresql+psycopg://u@db/x"


def test_rotating_keys_keeps_all(tmp_path):
    other = Fernet.generate_key().decode()
    cfg = load_config(tmp_path, {"MAIL_SECRET_KEYS": f"{KEY}, {other}"})
    assert cfg["MAIL_SECRET_KEYS"] == [KEY, other]


@pytest.mark.parametrize("environ, names", [
    ({"PORT": "eighty"}, "PORT"),
    ({"TRUSTED_PROXIES": "-1"}, "TRUSTED_PROXIES"),
    ({"MAIL_SECRET_KEYS": "not-a-key"}, "MAIL_SECRET_KEYS"),
    ({"MAIL_CA_BUNDLE": "/nonexistent/ca.pem"}, "MAIL_CA_BUNDLE"),
    ({"SKYDESK_ENV": "staging"}, "SKYDESK_ENV"),
    ({"SKYDESK_PUBLIC_URL": "mail.example.com"}, "SKYDESK_PUBLIC_URL"),
])
def test_bad_settings_are_refused_with_their_name(tmp_path, environ, names):
    with pytest.raises(ConfigError, match=names):
        load_config(tmp_path, environ)


def test_cheapest_password_hashing_is_refused_in_production(tmp_path):
    with pytest.raises(ConfigError, match="PASSWORD_HASH_PROFILE"):
        load_config(tmp_path, {"SKYDESK_ENV": "production", "SECRET_KEY": "s" * 40,
                               "MAIL_SECRET_KEYS": KEY, "PASSWORD_HASH_PROFILE": "cheapest",
                               "SKYDESK_PUBLIC_URL": "https://mail.example.com"})


def test_password_hash_profile_applies_and_old_hashes_still_verify(tmp_path):
    from webapp.services import passwords

    passwords.configure("RFC_9106_LOW_MEMORY")
    strong = passwords.hash_password("correct horse battery")
    passwords.configure("CHEAPEST")
    try:
        cheap = passwords.hash_password("correct horse battery")
        assert "m=8" in cheap and passwords.verify_password(strong, "correct horse battery")
        assert passwords.needs_rehash(strong)
    finally:
        passwords.configure("CHEAPEST")
