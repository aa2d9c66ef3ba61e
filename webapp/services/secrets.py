"""Encryption of stored third-party passwords (POP, SMTP) with rotatable Fernet keys."""
from __future__ import annotations

from cryptography.fernet import InvalidToken, MultiFernet, Fernet


class SecretDecryptError(RuntimeError):
    """A stored secret cannot be decrypted with any configured key."""


def _fernet(keys: list[str]) -> MultiFernet:
    """The first key encrypts; every key decrypts (MAIL_SECRET_KEYS rotation)."""
    if not keys:
        raise SecretDecryptError("MAIL_SECRET_KEYS is empty")
    return MultiFernet([Fernet(key.encode()) for key in keys])


def encrypt_secret(keys: list[str], plaintext: str) -> str:
    """Encrypt a password for storage."""
    return _fernet(keys).encrypt(plaintext.encode()).decode()


def decrypt_secret(keys: list[str], token: str) -> str:
    """Decrypt a stored password, or say plainly that the keys do not match."""
    try:
        return _fernet(keys).decrypt(token.encode()).decode()
    except InvalidToken:
        raise SecretDecryptError(
            "A stored password cannot be decrypted with MAIL_SECRET_KEYS; "
            "was a key removed? Save the password again.") from None


def rotate_secret(keys: list[str], token: str) -> str:
    """Re-encrypt a stored password under the first (newest) key."""
    return _fernet(keys).rotate(token.encode()).decode()
