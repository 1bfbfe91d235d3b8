"""A waiting job costs at most 1 KiB of Redis memory, and its message is still Celery's: the
same from the bulk publisher and from ``apply_async``, with the headers a worker requires.
A real worker consuming these messages: ``test_end_to_end.py`` and ``test_redis_lists.py``."""

from __future__ import annotations

import base64
import json

import pytest
import redis

from core.settings import Settings
from taskqueue.app import GENERATE_TASK, make_celery, publish_jobs, publish_with_celery

MAX_BYTES_PER_JOB = 1024
JOBS = 1_000


@pytest.fixture()
def app(tmp_path, redis_url):
    return make_celery(Settings(broker_url=redis_url, home=tmp_path / "home"))


def test_a_waiting_job_costs_at_most_one_kib_of_redis_memory(app, redis_url) -> None:
    client = redis.Redis.from_url(redis_url)
    model = "senmaonk/loopfree-sd1.5"  # the longest queue name a default deployment has
    job_ids = [f"0b8e1c1e-0000-5000-8000-{i:012d}" for i in range(JOBS)]
    try:
        assert publish_jobs(app, [(job_id, model, 5) for job_id in job_ids]) == JOBS
        (key,) = [k for k in client.scan_iter() if client.type(k) == b"list"]
        per_job = client.memory_usage(key, samples=0) / JOBS
        single = client.lindex(key, 0)
    finally:
        client.close()
    assert per_job <= MAX_BYTES_PER_JOB, per_job
    message = json.loads(single)
    headers = message["headers"]
    assert headers["task"] == GENERATE_TASK and headers["id"] in job_ids
    assert headers["argsrepr"] == repr((headers["id"],))  # what `celery inspect` shows
    assert json.loads(base64.b64decode(message["body"])) == [[headers["id"]], {}, {}]


def test_celerys_own_publishing_sends_the_same_lean_message(app, redis_url) -> None:
    client = redis.Redis.from_url(redis_url)
    try:
        assert publish_with_celery(app, [("job-a", "model-x", 5)], countdown=None) == 1
        (key,) = [k for k in client.scan_iter() if client.type(k) == b"list"]
        message = json.loads(client.lindex(key, 0))
    finally:
        client.close()
    assert message["headers"]["task"] == GENERATE_TASK and message["headers"]["id"] == "job-a"
    assert not {"origin", "kwargsrepr", "stamps", "shadow"} & message["headers"].keys()
    assert "reply_to" not in message["properties"]
