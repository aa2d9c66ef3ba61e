"""Login throttling in Redis: per account and IP, per IP, per account; never permanent.

Each counter lives for one window from its first failure. The tight limit is per
(account, IP), so an attacker hammering an account from one place does not lock its
owner out elsewhere; looser limits per IP (spraying many accounts) and per account
(a distributed attack) stop the rest. Every block ends when its window does.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import redis


@dataclass(frozen=True)
class ThrottleLimits:
    """How many failures each counter allows within ``window`` seconds."""

    window: int
    per_account_ip: int
    per_ip: int
    per_account: int


def _keys(email: str, ip: str) -> dict[str, str]:
    # Hash the account name: Redis dumps should not list who is being attacked.
    account = hashlib.sha256(email.strip().lower().encode()).hexdigest()[:32]
    return {
        "per_account_ip": f"skydesk:login:acct-ip:{account}:{ip}",
        "per_ip": f"skydesk:login:ip:{ip}",
        "per_account": f"skydesk:login:acct:{account}",
    }


def seconds_blocked(conn: redis.Redis, limits: ThrottleLimits, email: str, ip: str) -> int:
    """Seconds until this login may be tried again; 0 when it may be tried now."""
    keys = _keys(email, ip)
    pipe = conn.pipeline()
    for key in keys.values():
        pipe.get(key)
        pipe.ttl(key)
    values = pipe.execute()
    wait = 0
    for index, name in enumerate(keys):
        count, ttl = values[2 * index], values[2 * index + 1]
        if count is not None and int(count) >= getattr(limits, name):
            wait = max(wait, ttl if ttl and ttl > 0 else 1)
    return wait


def record_failure(conn: redis.Redis, limits: ThrottleLimits, email: str, ip: str) -> None:
    """Count one failed login against every counter; each expires one window after it starts."""
    pipe = conn.pipeline()
    for key in _keys(email, ip).values():
        # SET NX EX starts the window on the first failure; INCR keeps its TTL.
        # (Not EXPIRE NX: the embedded Redis is 6.2, which lacks it.)
        pipe.set(key, 0, nx=True, ex=limits.window)
        pipe.incr(key)
    pipe.execute()


def record_success(conn: redis.Redis, email: str, ip: str) -> None:
    """A correct password from this place clears that place's account counter."""
    conn.delete(_keys(email, ip)["per_account_ip"])
