"""Kill -9 the workers at random moments while they fetch 1,000 messages; nothing lost or doubled.

A real worker process (the production `run_worker`, its sweeper and the fetch job) fetches
two accounts from a real Dovecot, one leaving mail on the server and one deleting it; the
test kills it with SIGKILL many times, mid-batch or right after a commit, and starts another. At every
kill point, in delete mode, what Dovecot still holds plus what we stored is at least what
was seeded: a message is never deleted from the server before it is stored (Dovecot applies
DELE only at QUIT). At the end every seeded message is stored exactly once, byte for byte.
"""
from __future__ import annotations

import collections
import contextlib
import os
import random
import signal
import subprocess
import sys
import time

import pytest
from sqlalchemy import select

from tests.conftest import PROJECT_ROOT
from tests.pop.conftest import make_message, sha256
from webapp.extensions import db
from webapp.models import Message
from webapp.models.pop import PopAccount
from webapp.queue import get_redis
from webapp.services.pop_accounts import lock_key

SEEDED = 1000
KILLS = 12


class WorkerPool:
    """A worker process working, and the next one loading in the background meanwhile.

    Each worker is the leader of a process group of its own: a kill takes the process RQ's
    scheduler forks with it, as a machine or container that dies would. (A SIGKILL of the
    worker alone leaves that child running, outliving the test.)
    """

    def __init__(self, env, log_path):
        self.env, self.log_path = env, log_path
        self.standby = self._spawn()
        self.running: list[subprocess.Popen] = []

    def _spawn(self) -> list[subprocess.Popen]:
        with open(self.log_path, "ab") as log:
            return [subprocess.Popen([sys.executable, "-m", "tests.pop.crash_worker"],
                                     cwd=PROJECT_ROOT, env=self.env, stdout=subprocess.PIPE,
                                     stderr=log, stdin=subprocess.PIPE, start_new_session=True)]

    def start(self) -> None:
        """Let the standby worker work (once loaded), and load the next one meanwhile."""
        for process in self.standby:
            assert process.stdout.readline() == b"ready\n", "the worker did not start"
            process.stdin.write(b"go\n")
            process.stdin.close()
        self.running, self.standby = self.standby, self._spawn()

    @staticmethod
    def _kill_group(process: subprocess.Popen) -> None:
        with contextlib.suppress(ProcessLookupError):  # nobody left in it
            os.killpg(process.pid, signal.SIGKILL)

    def kill_running(self) -> None:
        """SIGKILL the working worker (and its scheduler)."""
        for process in self.running:
            self._kill_group(process)
        for process in self.running:
            process.wait()
            process.stdout.close()
        self.running = []

    def stop(self, graceful: bool) -> None:
        """End every process (running ones with SIGTERM when graceful)."""
        for process in self.running:
            process.terminate() if graceful else process.kill()
        for process in self.running:
            process.wait(timeout=60)
            process.stdout.close()
            self._kill_group(process)  # a scheduler the worker did not stop
        for process in self.standby:
            self._kill_group(process)
            process.stdin.close()
            process.wait()
            process.stdout.close()


def _stored(mail_account_id: int) -> list[tuple[str, str]]:
    db.session.rollback()  # a fresh snapshot of what the workers committed
    rows = db.session.execute(select(Message.message_id, Message.blob_sha256)
                              .where(Message.account_id == mail_account_id)).all()
    db.session.rollback()
    return [tuple(r) for r in rows]


def _wait_until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slow
def test_sigkill_at_random_moments_stores_every_message_once(
        pop_app, cli_env, tmp_path, dovecot, make_pop):
    accounts = {}
    expected = {}
    for mode in ("keep", "delete"):
        name, password = dovecot.new_user()
        messages = [make_message(n, body_bytes=500, message_id=f"<{mode}-{n}@test.example>")
                    for n in range(SEEDED)]
        dovecot.seed(name, messages)
        expected[mode] = {f"<{mode}-{n}@test.example>": sha256(m) for n, m in enumerate(messages)}
        account = make_pop((name, password), email=f"{mode}@pop.example", security="none",
                           port=dovecot.pop3_port, batch_size=50, interval_seconds=1,
                           delete_from_server=mode == "delete")
        accounts[mode] = (account.id, account.mail_account_id, name)
    redis = get_redis()
    locks = [lock_key(account_id) for account_id, _, _ in accounts.values()]

    def stored_total() -> int:
        return sum(len(_stored(mail_id)) for _, mail_id, _ in accounts.values())

    def held_locks() -> set[bytes]:
        return {token for token in (redis.get(key) for key in locks) if token}

    def all_stored() -> bool:
        return all(len(_stored(mail_id)) == SEEDED for _, mail_id, _ in accounts.values())

    rng = random.Random(20261129)
    pool = WorkerPool(cli_env, tmp_path / "workers.log")
    kills = 0
    try:
        for _ in range(KILLS):
            stale = held_locks()  # tokens of the worker killed last time
            before = stored_total()
            pool.start()
            if rng.random() < 0.5:
                # Right after a commit: the window between storing and QUIT (delete mode's DELEs).
                _wait_until(lambda: stored_total() > before or all_stored(), 120, "a commit")
                time.sleep(rng.uniform(0.0, 0.05))
            else:
                # Anywhere in a batch: while retrieving, delivering or committing. A batch
                # of 50 takes well under 0.1 s here: a longer sleep would let a worker
                # store so much that the import ends before enough kills.
                _wait_until(lambda: (held_locks() - stale) or all_stored(), 120,
                            "a new worker to start a fetch")
                time.sleep(rng.uniform(0.02, 0.3))
            pool.kill_running()
            kills += 1
            for mode, (_, mail_id, name) in accounts.items():
                on_server = dovecot.count(name)  # read first: the store only grows after this
                stored = _stored(mail_id)
                assert len(stored) == len(set(stored)), f"{mode}: a message was stored twice"
                assert on_server + len(stored) >= SEEDED, (
                    f"{mode}, kill {kills}: {on_server} on the server + {len(stored)} stored")
                if mode == "keep":
                    assert on_server == SEEDED
            if all_stored():
                break
        pool.start()
        _wait_until(lambda: all_stored() and dovecot.count(accounts["delete"][2]) == 0, 120,
                    "the last batches after the kills")
    finally:
        pool.stop(graceful=True)

    log = (tmp_path / "workers.log").read_text(errors="replace")[-3000:]
    for mode, (account_id, mail_id, name) in accounts.items():
        stored = _stored(mail_id)
        counts = collections.Counter(message_id for message_id, _ in stored)
        assert counts == collections.Counter(list(expected[mode])), log
        assert dict(stored) == expected[mode]
        assert dovecot.count(name) == (0 if mode == "delete" else SEEDED)
        assert db.session.get(PopAccount, account_id).messages_left == 0
    assert kills >= 8, "the import finished before the workers were killed often enough"
