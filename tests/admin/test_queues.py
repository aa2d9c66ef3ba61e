"""Admin » Queue health: real Redis, a real RQ worker failing a real job (issue 8)."""
from __future__ import annotations

import pytest
from rq import SimpleWorker
from rq.job import Job

from tests.admin.helpers import audit_actions
from tests.conftest import post_form
from tests.factories import make_org
from webapp.queue import get_queue, get_redis


def _fail_a_job(meta: dict | None = None) -> Job:
    """Run a job that raises (math.sqrt(-1): a stdlib function, no test code) in a real worker."""
    queue = get_queue("default")
    job = queue.enqueue("math.sqrt", -1, meta=meta or {})
    SimpleWorker([queue], connection=get_redis()).work(burst=True)
    assert job.id in queue.failed_job_registry
    return job


def test_lists_queues_workers_and_a_failed_job_with_its_error(client, org, admin_user, login_as):
    job = _fail_a_job()
    get_queue("fetch").enqueue("math.sqrt", 4)
    worker = SimpleWorker([get_queue("send")], connection=get_redis(), name="panel-test-worker")
    worker.register_birth()
    try:
        login_as(admin_user)
        page = client.get("/admin/queues").data.decode()
    finally:
        worker.register_death()
    assert "<td>fetch</td><td>1</td>" in page
    assert "panel-test-worker" in page and "send" in page
    assert job.id in page and "math.sqrt" in page
    assert "ValueError: math domain error" in page


def test_requeue_and_delete_a_failed_job(client, org, admin_user, login_as):
    job = _fail_a_job()
    queue = get_queue("default")
    login_as(admin_user)
    post_form(client, f"/admin/queues/failed/{job.id}/requeue", {}, page="/admin/queues")
    assert job.id not in queue.failed_job_registry and job.id in queue.job_ids
    SimpleWorker([queue], connection=get_redis()).work(burst=True)
    assert job.id in queue.failed_job_registry
    post_form(client, f"/admin/queues/failed/{job.id}/delete", {}, page="/admin/queues")
    assert job.id not in queue.failed_job_registry
    assert not Job.exists(job.id, connection=get_redis())
    assert audit_actions(org.id)[-2:] == ["job.requeued", "job.deleted"]


def test_with_several_organizations_only_tagged_jobs_are_shown(client, org, admin_user,
                                                               login_as):
    other = make_org()
    untagged = _fail_a_job()
    theirs = _fail_a_job({"org_id": other.id})
    ours = _fail_a_job({"org_id": org.id})
    login_as(admin_user)
    page = client.get("/admin/queues").data.decode()
    assert ours.id in page and theirs.id not in page and untagged.id not in page
    for job in (theirs, untagged):
        response = post_form(client, f"/admin/queues/failed/{job.id}/delete", {},
                             page="/admin/queues")
        assert response.status_code == 404
        assert job.id in get_queue("default").failed_job_registry


@pytest.mark.parametrize("job_id", ["no-such-job", "x" * 80])
def test_unknown_jobs_are_404(client, org, admin_user, login_as, job_id):
    login_as(admin_user)
    response = post_form(client, f"/admin/queues/failed/{job_id}/requeue", {},
                         page="/admin/queues")
    assert response.status_code == 404


def test_no_worker_is_said_plainly(client, org, admin_user, login_as):
    login_as(admin_user)
    assert b"No worker is running" in client.get("/admin/queues").data
