"""The broker misbehaves: Redis restarts, loses everything, delivers twice, or carries bad input.

One worker process serves the whole module on a Redis server of the module's own; each test
submits its own jobs and reconciles them.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
import zlib
from pathlib import Path

import pytest
from kombu import Producer

from taskqueue.app import make_celery, model_queue, publish_jobs
from taskqueue.dead_letters import DEAD_LETTERS_KEY
from taskqueue.redis_lists import MessageTemplate
from tests.fault.conftest import open_fleet, private_redis
from tests.fault.fleet import Fleet, rows
from tests.fault.reconcile import assert_reconciled
from tests.helpers_processes import RedisServer, WorkerProcess, run_cli

pytestmark = pytest.mark.slow


class BrokerFleet:
    def __init__(self, fleet: Fleet, redis: RedisServer, worker: WorkerProcess) -> None:
        self.fleet, self.redis, self.worker = fleet, redis, worker

    def waiting(self) -> int:
        return self.fleet.broker_messages(self.redis)

    def drained(self) -> bool:
        """Nothing waiting and nothing delivered but unacknowledged."""
        return self.fleet.broker_messages(self.redis) == 0


@pytest.fixture(scope="module")
def broker(tmp_path_factory, pg_admin, s3_server, s3_env, fault_model_dir):
    folder = tmp_path_factory.mktemp("broker-fleet")
    with (
        private_redis(folder / "redis") as redis,
        open_fleet(
            folder,
            pg_admin=pg_admin,
            s3_endpoint=s3_server,
            model=fault_model_dir,
            broker_url=redis.url,
            visibility_timeout_s=20,
        ) as fleet,
    ):
        worker = fleet.start_worker()
        worker.wait_ready()
        yield BrokerFleet(fleet, redis, worker)


def succeeded_at_least(fleet: Fleet, submission_id: str, count: int):
    return lambda: fleet.counts(submission_id)["succeeded"] >= count


def test_workers_reconnect_when_redis_restarts_mid_run(broker):
    fleet = broker.fleet
    report = fleet.submit(rows(120))
    fleet.wait(succeeded_at_least(fleet, report.submission_id, 8), timeout=60, what="progress")
    waiting = broker.waiting()
    assert waiting > 0, "everything was delivered before the restart; nothing to reconnect for"

    broker.redis.stop()  # graceful: Redis writes its append-only file and exits
    broker.redis.start()  # same port, same data
    assert broker.waiting() > 0

    # The worker reconnects and works through the queue; the one message it may have been
    # receiving as the connection dropped is lost, and the reconciler publishes it again.
    lost = fleet.republish_lost(broker.redis, report.submission_id, timeout=120)
    assert lost <= 1
    assert fleet.counts(report.submission_id)["succeeded"] == 120 - lost
    fleet.wait_settled(report.submission_id, timeout=120)
    outcome = assert_reconciled(fleet, report.submission_id, submitted=120)
    assert outcome.counts["succeeded"] == 120
    assert broker.worker.alive(), "the worker died instead of reconnecting"


def test_requeue_stuck_republishes_every_unfinished_job_after_redis_loses_its_data(broker):
    fleet = broker.fleet
    report = fleet.submit(rows(150))
    fleet.wait(succeeded_at_least(fleet, report.submission_id, 4), timeout=60, what="progress")

    broker.redis.client().flushall()
    # A message the worker popped just before the flush is recorded as unacknowledged just after
    # it; the worker acks it when its batch is done.
    fleet.wait(broker.drained, timeout=60, what="the broker to hold nothing")
    queued = fleet.counts(report.submission_id)["queued"]
    # The worker held at most its prefetch window (4 threads x 4 messages, batches in hand
    # included) and has finished those: the queued jobs now exist only in the database.
    assert queued > 30, queued

    # A window job counts as lost once nobody has vouched for its message for three beats: not
    # waiting in Redis, not held by a live worker (whose heartbeat refreshes ``dispatched_at``).
    time.sleep(fleet.settings.live_for_s + 0.5)
    requeue = run_cli(["requeue", "--stuck"], fleet.env)
    assert requeue.returncode == 0, requeue.stderr
    result = json.loads(requeue.stdout)
    # The live worker may still claim a job or two it held between the count above and the
    # reconciler's read, so the count is an upper bound, not the answer: what must hold is the
    # final state, reached with no other reconciler than this one run.
    assert 0 < result["published"] <= queued, result

    fleet.wait_settled(report.submission_id, timeout=120)
    outcome = assert_reconciled(fleet, report.submission_id, submitted=150)
    assert outcome.counts["succeeded"] == 150
    assert all(job.attempts == 1 for job in outcome.jobs), "a job was claimed twice"


def test_a_job_published_three_times_is_rendered_and_recorded_once(broker):
    fleet = broker.fleet
    report = fleet.submit(rows(20))
    app = make_celery(fleet.settings)
    again = [(job.id, job.model, job.priority) for job in fleet.jobs(report.submission_id)]
    assert publish_jobs(app, again) == 20
    assert publish_jobs(app, again) == 20

    fleet.wait_settled(report.submission_id, timeout=120)
    fleet.wait(broker.drained, timeout=60, what="every duplicate message to be delivered")
    outcome = assert_reconciled(fleet, report.submission_id, submitted=20)
    assert outcome.counts["succeeded"] == 20
    assert [job.attempts for job in outcome.jobs] == [1] * 20, "a duplicate was claimed again"


class CreatesAFile:
    """Unpickling this creates ``path``: proof that a pickled message was deserialized."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def test_pickled_and_malformed_messages_are_rejected_and_the_worker_keeps_going(broker, tmp_path):
    fleet = broker.fleet
    log_before = len(broker.worker.log_text(tail=10_000_000))
    sentinel = tmp_path / "unpickled"
    queue = model_queue(fleet.settings.model)

    def headers(task: str = "loopfree.generate") -> dict:
        return {
            "lang": "py",
            "task": task,
            "id": str(uuid.uuid4()),
            "root_id": None,
            "parent_id": None,
            "group": None,
            "retries": 0,
            "eta": None,
            "expires": None,
        }

    # The app's connection: the same transport options (key separator, priorities) as workers.
    with make_celery(fleet.settings).connection_for_write() as connection:
        producer = Producer(
            connection.default_channel, exchange=queue.exchange, routing_key=queue.routing_key
        )
        body = ((str(uuid.uuid4()),), {}, {"callbacks": None, "errbacks": None, "chain": None})
        bad = [
            # A pickle whose unpickling would create the sentinel file.
            dict(body=CreatesAFile(sentinel), serializer="pickle"),
            # JSON of the wrong shape: no job id, extra arguments, a non-UUID id.
            dict(body=[[], {}, {}], serializer="json"),
            dict(body=[["x", "y"], {"k": 1}, {}], serializer="json"),
            dict(body=[["../../etc/passwd"], {}, {}], serializer="json"),
            # Not JSON at all, though it says so.
            dict(body=b"{not json", content_type="application/json", content_encoding="utf-8"),
            # A well-formed message for a task no worker has.
            dict(body=list(body), serializer="json", task="os.system"),
            # A well-formed job id that is no job.
            dict(body=list(body), serializer="json"),
        ]
        for message in bad:
            task = message.pop("task", "loopfree.generate")
            producer.publish(headers=headers(task), **message)

    report = fleet.submit(rows(12))
    fleet.wait_settled(report.submission_id, timeout=120)
    fleet.wait(broker.drained, timeout=60, what="the bad messages to be taken off the queue")
    outcome = assert_reconciled(fleet, report.submission_id, submitted=12)
    assert outcome.counts["succeeded"] == 12
    assert broker.worker.alive()
    assert not sentinel.exists(), "the worker unpickled a message"
    log = broker.worker.log_text(tail=10_000_000)[log_before:]
    assert log.count("dropping malformed message") == 3
    assert "Refusing to deserialize untrusted content of type pickle" in log
    assert "Can't decode message body" in log
    # A task other than ours is never handed to Celery (which would run celery.* built-ins): it
    # is set aside in the dead-letter list.
    letters = [json.loads(raw) for raw in broker.redis.client().lrange(DEAD_LETTERS_KEY, 0, -1)]
    assert any("'os.system'" in letter["reason"] for letter in letters), letters
    assert "Traceback" not in log, log


def test_undecodable_foreign_and_oversized_entries_are_dead_lettered_and_the_worker_goes_on(
    broker,
):
    fleet = broker.fleet
    client = broker.redis.client()
    client.delete(DEAD_LETTERS_KEY)
    log_before = len(broker.worker.log_text(tail=10_000_000))
    queue = model_queue(fleet.settings.model).name
    report = fleet.submit(rows(60))
    fleet.wait(succeeded_at_least(fleet, report.submission_id, 4), timeout=60, what="progress")

    good = json.loads(
        MessageTemplate.capture(make_celery(fleet.settings), queue, 0).render(str(uuid.uuid4()))
    )
    inflated = base64.b64encode(zlib.compress(b"0" * 50_000_000)).decode()
    bad = [
        b"not json at all",
        json.dumps([1, 2, 3]),
        json.dumps({**good, "body": "@@@ not base64 @@@"}),
        json.dumps({**good, "headers": {**good["headers"], "task": "celery.chord_unlock"}}),
        json.dumps({**good, "headers": {**good["headers"], "task": "celery.starmap"}}),
        json.dumps({**good, "body": base64.b64encode(b"x" * 200_000).decode()}),  # too large
        json.dumps(  # a small entry that would decompress to 50 MB
            {
                **good,
                "body": inflated,
                "headers": {**good["headers"], "compression": "application/x-gzip"},
            }
        ),
    ]
    client.lpush(queue, *bad)  # mid-run, among the submission's messages

    fleet.wait_settled(report.submission_id, timeout=180)
    outcome = assert_reconciled(fleet, report.submission_id, submitted=60)
    assert outcome.counts["succeeded"] == 60
    assert broker.worker.alive(), "a bad entry stopped the worker"
    fleet.wait(lambda: client.llen(DEAD_LETTERS_KEY) == len(bad), timeout=60, what="dead letters")
    log = broker.worker.log_text(tail=10_000_000)[log_before:]
    assert log.count("set aside a bad broker entry") == len(bad), log
    assert "Unrecoverable error" not in log and "Traceback" not in log, log

    listed = run_cli(["dead-letters"], fleet.env)
    assert listed.returncode == 0, listed.stderr
    reasons = [json.loads(line)["reason"] for line in listed.stdout.splitlines()]
    assert len(reasons) == len(bad)
    assert any("celery.chord_unlock" in reason for reason in reasons)
    cleared = run_cli(["dead-letters", "--clear"], fleet.env)
    assert json.loads(cleared.stdout) == {"cleared": len(bad)}
    assert client.llen(DEAD_LETTERS_KEY) == 0
