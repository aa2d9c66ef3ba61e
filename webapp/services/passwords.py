"""User password hashing (argon2id) and the strength rule every entry point shares."""
from __future__ import annotations

from argon2 import PasswordHasher, profiles
from argon2.exceptions import InvalidHashError, VerificationError

_hasher = PasswordHasher()  # argon2id with the library's recommended parameters

MIN_LENGTH = 10
_COMMON = {
    "password", "password1", "password123", "passw0rd", "qwerty", "qwertyuiop", "letmein",
    "welcome", "welcome1", "admin", "administrator", "iloveyou", "changeme", "secret",
    "1234567890", "0123456789", "abc123", "monkey", "dragon", "football", "sunshine",
}
# A precomputed hash verified when the user does not exist, so timing does not tell.
_DUMMY_HASH = _hasher.hash("not-a-real-password-for-timing")
PROFILES = ("RFC_9106_LOW_MEMORY", "RFC_9106_HIGH_MEMORY", "CHEAPEST")


def configure(profile: str) -> None:
    """Use one of argon2-cffi's parameter profiles (PASSWORD_HASH_PROFILE).

    CHEAPEST exists for test suites only (config refuses it in production); hashes made
    under another profile still verify and are upgraded at the next login.
    """
    global _hasher, _DUMMY_HASH
    if profile not in PROFILES:
        raise ValueError(f"unknown argon2 profile {profile!r}")
    hasher = PasswordHasher.from_parameters(getattr(profiles, profile))
    if hasher.time_cost != _hasher.time_cost or hasher.memory_cost != _hasher.memory_cost \
            or hasher.parallelism != _hasher.parallelism:
        _hasher = hasher
        _DUMMY_HASH = _hasher.hash("not-a-real-password-for-timing")


class WeakPasswordError(ValueError):
    """The password is too easy to guess; the message says why."""


def check_strength(password: str, email: str = "") -> None:
    """Raise WeakPasswordError unless the password is long and not an obvious guess."""
    if len(password) < MIN_LENGTH:
        raise WeakPasswordError(f"Password must be at least {MIN_LENGTH} characters long.")
    if len(set(password)) < 4:
        raise WeakPasswordError("Password must use more than a few different characters.")
    lowered = password.lower()
    if lowered in _COMMON or lowered.rstrip("0123456789!") in _COMMON:
        raise WeakPasswordError("Password is too common; choose something less guessable.")
    local = email.split("@", 1)[0].lower()
    if len(local) >= 3 and local in lowered:
        raise WeakPasswordError("Password must not contain your email name.")


def hash_password(password: str) -> str:
    """Return the argon2id hash to store."""
    return _hasher.hash(password)


def verify_password(stored_hash: str | None, password: str) -> bool:
    """Check a password against a stored hash; a missing user costs the same time."""
    try:
        return _hasher.verify(stored_hash or _DUMMY_HASH, password) and stored_hash is not None
    except (VerificationError, InvalidHashError):
        return False


def needs_rehash(stored_hash: str) -> bool:
    """True when the hash was made with weaker parameters than today's."""
    return _hasher.check_needs_rehash(stored_hash)
