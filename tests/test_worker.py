"""The queue: jobs go out only after commit, and a real worker process completes them."""
from __future__ import annotations

import json
import subprocess
import sys

from sqlalchemy import select

from tests.conftest import PROJECT_ROOT
from webapp.extensions import db
from webapp.models import HealthCheck
from webapp.queue import enqueue_after_commit, get_queue


def test_jobs_are_enqueued_only_after_commit(app):
    queue = get_queue("default")
    db.session.add(HealthCheck(token="t1"))
    enqueue_after_commit("worker.jobs.health.record_health", "t1")
    assert queue.count == 0
    db.session.commit()
    assert queue.count == 1
    job = queue.jobs[0]
    assert job.func_name == "worker.jobs.health.record_health" and job.args == ("t1",)


def test_rolled_back_work_enqueues_nothing(app):
    queue = get_queue("default")
    db.session.add(HealthCheck(token="t2"))
    enqueue_after_commit("worker.jobs.health.record_health", "t2")
    db.session.rollback()
    db.session.commit()
    assert queue.count == 0


def test_round_trip_web_redis_worker_database(app, cli_env):
    """`flask health` enqueues through Redis; a real `flask worker` process writes the row."""
    flask = [sys.executable, "-m", "flask", "--app", "wsgi"]
    worker = subprocess.Popen([*flask, "worker", "--no-scheduler"], cwd=PROJECT_ROOT, env=cli_env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        result = subprocess.run([*flask, "health", "--timeout", "60", "--json"], cwd=PROJECT_ROOT,
                                env=cli_env, capture_output=True, text=True, timeout=90)
        assert result.returncode == 0, result.stderr + result.stdout
        assert '"ok": true' in result.stdout
    finally:
        worker.terminate()
        output = worker.communicate(timeout=30)[0].decode(errors="replace")
    db.session.expire_all()
    check = db.session.scalar(select(HealthCheck))
    assert check.completed_at is not None and check.worker_name, output


def test_health_fails_clearly_without_a_worker(app, cli_env):
    result = subprocess.run([sys.executable, "-m", "flask", "--app", "wsgi", "health",
                             "--timeout", "1", "--json"], cwd=PROJECT_ROOT, env=cli_env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "no worker completed" in result.stderr
    assert json.loads(result.stdout)["ok"] is False


def test_a_failed_savepoint_drops_only_its_own_jobs(app):
    """Review finding: a rolled-back SAVEPOINT emptied every job waiting for the commit."""
    queue = get_queue("default")
    db.session.add(HealthCheck(token="kept"))
    enqueue_after_commit("worker.jobs.health.record_health", "kept")
    try:
        with db.session.begin_nested():
            enqueue_after_commit("worker.jobs.health.record_health", "dropped")
            raise ValueError("refused inside the savepoint")
    except ValueError:
        pass
    with db.session.begin_nested():
        enqueue_after_commit("worker.jobs.health.record_health", "released")
    assert queue.count == 0
    db.session.commit()
    assert sorted(job.args[0] for job in queue.jobs) == ["kept", "released"]


def test_a_worker_process_keeps_what_start_up_built_out_of_full_collections(app, cli_env):
    """A real `flask worker` runs a job that asks the collector what it froze at start-up."""
    job = get_queue("default").enqueue("gc.get_freeze_count")
    result = subprocess.run([sys.executable, "-m", "flask", "--app", "wsgi", "worker",
                             "--queues", "default", "--burst", "--no-scheduler"],
                            cwd=PROJECT_ROOT, env=cli_env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    frozen = job.latest_result().return_value
    assert frozen > 10_000  # the app and its libraries, not a handful of objects
