"""Dynamic batches fill up: ``MaxWaitBatches`` and the worker's prefetch window, on real Celery.

Most tests run a real Celery worker (``WorkController``, in a thread of this process) on the real
Redis, with the production task options (``batch_task_options``) and pool and prefetch window
(``pool_options``). Only the task body differs: it records each flush and holds it for a while
instead of rendering, so a test controls how long a batch takes. The last test runs the real
``loopfree worker`` process end to end.

Timing: the worker runs in this process, so flushes and publishes are timed on one monotonic clock.
A flush can never come early, however loaded the machine is, so lower bounds are exact; upper
bounds get more than a second of slack. The burst tests assert batch sizes only.
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from celery import Celery

from core.settings import Settings
from taskqueue.app import GENERATE_TASK, make_celery, publish_jobs, queue_name
from taskqueue.batches import MaxWaitBatches, batch_task_options
from tests.conftest import service_missing
from tests.helpers_processes import RedisServer
from worker.service import PIPELINE_DEPTH, pool_options

MODEL = "batch-fill-test"


@dataclass
class Flush:
    started: float  # monotonic, when the task body began
    job_ids: list[str]


@dataclass
class Worker:
    """A batching worker's app, what its task saw, and when each message was published."""

    app: Celery
    max_batch: int
    max_wait_s: float
    flushes: list[Flush] = field(default_factory=list)
    published: dict[str, float] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def publish(self, count: int) -> list[str]:
        """``count`` messages in one bulk publish (as ``submit`` does), timed just before it."""
        ids = [str(uuid.uuid4()) for _ in range(count)]
        before = time.monotonic()  # no message can reach the worker earlier than this
        self.published.update(dict.fromkeys(ids, before))
        assert publish_jobs(self.app, [(job_id, MODEL, 5) for job_id in ids]) == count
        return ids

    def sizes(self) -> list[int]:
        with self.lock:
            return [len(flush.job_ids) for flush in self.flushes]

    def wait_flushed(self, count: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while sum(self.sizes()) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{sum(self.sizes())} of {count} flushed: {self.sizes()}")
            time.sleep(0.01)

    def waits(self) -> list[tuple[int, float]]:
        """Per flush: its size, and how long its oldest message had waited since published."""
        with self.lock:
            return [
                (len(f.job_ids), f.started - min(self.published[j] for j in f.job_ids))
                for f in self.flushes
            ]


def batching_worker(
    tmp_path, redis_url: str, *, max_batch: int, max_wait_ms: int, hold_s: float
) -> Worker:
    settings = Settings(home=tmp_path / "home", broker_url=redis_url, model=MODEL)
    worker = Worker(make_celery(settings), max_batch, max_wait_ms / 1000)

    @worker.app.task(
        name=GENERATE_TASK, **batch_task_options(max_batch=max_batch, max_wait_ms=max_wait_ms)
    )
    def generate(requests) -> None:
        started = time.monotonic()
        with worker.lock:
            worker.flushes.append(Flush(started, [str(r.args[0]) for r in requests]))
        time.sleep(hold_s)  # a batch in hand, as sampling would hold it

    assert isinstance(worker.app.tasks[GENERATE_TASK], MaxWaitBatches)
    return worker


@pytest.fixture()
def broker(tmp_path) -> Iterator[RedisServer]:
    """A Redis server of the test's own, so that stopping the worker can end with killing it."""
    redis = RedisServer(tmp_path / "redis")
    try:
        redis.start()
    except FileNotFoundError as error:
        service_missing("redis-server (a private Redis for the batching worker)", error)
    try:
        yield redis
    finally:
        redis.kill()


@contextlib.contextmanager
def running(worker: Worker, broker: RedisServer) -> Iterator[None]:
    """The worker consuming its queue (with the production pool and prefetch window).

    ``broker`` is killed if the worker does not stop promptly: an embedded worker told to stop
    from another thread can sit in a blocking read on its connection for a minute (seen after a
    reconnect, and once on a loaded machine without one)."""
    ready = threading.Event()
    controller = worker.app.WorkController(
        hostname=f"batch-fill-{uuid.uuid4().hex[:8]}@test",
        ready_callback=lambda consumer: ready.set(),  # called once it consumes the queue
        queues=[queue_name(MODEL)],
        loglevel="WARNING",
        without_mingle=True,
        without_gossip=True,
        **pool_options(worker.max_batch),
    )
    thread = threading.Thread(target=controller.start, name="batch-fill-worker", daemon=True)
    thread.start()
    try:
        assert ready.wait(60), "the worker did not start consuming"
        yield
    finally:
        controller.stop(in_sighandler=False)
        thread.join(timeout=5)
        if thread.is_alive():
            broker.kill()
            thread.join(timeout=30)
        assert not thread.is_alive(), "the worker did not stop"


def test_the_production_pool_holds_a_whole_number_of_batches():
    options = pool_options(16)
    window = options["concurrency"] * options["prefetch_multiplier"]
    assert options["concurrency"] == PIPELINE_DEPTH
    assert window == PIPELINE_DEPTH * 16  # no remainder to leave as a small batch


@pytest.mark.slow
def test_a_burst_larger_than_the_prefetch_window_fills_every_batch(tmp_path, broker):
    # 10 batches' worth queued before the worker starts: the prefetch window fills and refills
    # while batches are in hand. A batch is held longer than max_wait, so any part of a batch the
    # window lets in beside the whole batches in hand would wait out max_wait and leave alone.
    worker = batching_worker(tmp_path, broker.url, max_batch=4, max_wait_ms=400, hold_s=0.8)
    ids = worker.publish(10 * 4)
    with running(worker, broker):
        worker.wait_flushed(len(ids))
        time.sleep(0.5)  # a straggler flush would show here
    assert worker.sizes() == [4] * 10
    assert sorted(j for f in worker.flushes for j in f.job_ids) == sorted(ids)


@pytest.mark.slow
def test_a_burst_into_a_running_worker_fills_every_batch(tmp_path, broker):
    # Three batches' worth published at once into an idle worker whose timer is ticking.
    worker = batching_worker(tmp_path, broker.url, max_batch=8, max_wait_ms=500, hold_s=0.2)
    with running(worker, broker):
        worker.publish(1)
        worker.wait_flushed(1)
        ids = worker.publish(3 * 8)
        worker.wait_flushed(1 + len(ids))
        time.sleep(0.5)
    assert worker.sizes() == [1, 8, 8, 8]


@pytest.mark.slow
def test_a_lone_message_leaves_after_max_wait_and_not_much_later(tmp_path, broker):
    worker = batching_worker(tmp_path, broker.url, max_batch=16, max_wait_ms=1000, hold_s=0)
    with running(worker, broker):
        for expected in (1, 2):  # the first starts the timer; the second finds it stopped
            worker.publish(1)
            worker.wait_flushed(expected, timeout=30)
            time.sleep(1.5)  # the timer finds the buffer empty and stops
    assert worker.sizes() == [1, 1]
    for _, waited in worker.waits():
        # At least max_wait, exactly; at most max_wait + one tick (0.25 s), plus slack for load.
        assert worker.max_wait_s <= waited < worker.max_wait_s * 1.25 + 1.5, worker.waits()


@pytest.mark.slow
def test_a_message_arriving_just_before_a_tick_waits_for_company(tmp_path, broker):
    # Messages 1.2 x max_wait apart: each lands in an empty buffer while the timer still ticks
    # (just before the tick that would find the buffer empty and stop it), and, with
    # celery-batches' periodic flush, would leave at that tick after a fraction of max_wait.
    worker = batching_worker(tmp_path, broker.url, max_batch=16, max_wait_ms=400, hold_s=0)
    with running(worker, broker):
        started = time.monotonic()
        for index in range(6):
            time.sleep(max(0.0, started + index * 1.2 * worker.max_wait_s - time.monotonic()))
            worker.publish(1)
        worker.wait_flushed(6, timeout=30)
    waits = worker.waits()
    # Each partial batch left only once its oldest message had waited max_wait (and not long
    # after: a timer that stopped ticking would leave messages behind).
    assert all(worker.max_wait_s <= waited < worker.max_wait_s * 1.25 + 1.5 for _, waited in waits)
    assert sum(size for size, _ in waits) == 6, waits


@pytest.mark.slow
def test_a_message_with_a_countdown_leaves_once_its_eta_has_passed(tmp_path, broker):
    # A job published again with a countdown (a retry): the worker receives it at once and holds
    # it until its ETA; the ticks must notice the ETA even with nothing else buffered.
    worker = batching_worker(tmp_path, broker.url, max_batch=16, max_wait_ms=300, hold_s=0)
    with running(worker, broker):
        job_id = str(uuid.uuid4())
        worker.published[job_id] = time.monotonic()
        assert publish_jobs(worker.app, [(job_id, MODEL, 5)], countdown=1.5) == 1
        worker.wait_flushed(1, timeout=30)
    [(size, waited)] = worker.waits()
    # The ETA is wall-clock time: a little leeway below for the clocks' difference.
    assert size == 1 and 1.45 <= waited < 1.5 + 0.3 * 1.25 + 1.5, waited


@pytest.mark.slow
def test_a_lone_message_still_leaves_after_the_worker_reconnects_to_the_broker(tmp_path, broker):
    # A lost connection clears the event loop's timers without cancelling them. celery-batches,
    # still holding its flush timer, never starts another: from then on a partial batch leaves
    # only once enough messages arrive to fill it.
    worker = batching_worker(tmp_path, broker.url, max_batch=16, max_wait_ms=300, hold_s=0)
    with running(worker, broker):
        worker.publish(1)
        worker.wait_flushed(1, timeout=30)
        worker.publish(1)  # in the buffer, with the flush timer running, as Redis goes
        broker.stop()
        broker.start()  # the worker reconnects on its own
        [alone] = worker.publish(1)
        deadline = time.monotonic() + 60
        while not any(alone in flush.job_ids for flush in list(worker.flushes)):
            assert time.monotonic() < deadline, f"never flushed: {worker.sizes()}"
            time.sleep(0.05)


@pytest.mark.slow
def test_a_burst_through_the_real_worker_records_only_full_batches(tmp_path, fleet_env):
    from producer.prompts import JobDefaults
    from producer.submit import submit_file
    from status.queries import list_jobs, wait_for
    from storage.db import make_engine
    from tests.helpers_processes import WorkerProcess, settings_from

    env = {**fleet_env, "LOOPFREE_MAX_BATCH": "4", "LOOPFREE_MAX_WAIT_MS": "500"}
    settings = settings_from(env)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("".join(f"burst prompt {i}\n" for i in range(48)), encoding="utf-8")
    report = submit_file(settings, prompts, JobDefaults(model=settings.model, seed_base=7))
    assert report.published == 48  # all queued before the worker starts: a burst

    worker = WorkerProcess(env, tmp_path / "worker.log")
    engine = make_engine(settings.resolved_database_url)
    try:
        assert wait_for(engine, report.submission_id, poll_s=0.5, timeout_s=300)
    finally:
        assert worker.stop() == 0
    try:
        jobs = list(list_jobs(engine, submission_id=report.submission_id, stage=None, limit=None))
    finally:
        engine.dispose()
    assert [job["status"] for job in jobs] == ["succeeded"] * 48
    assert [job["batch_size"] for job in jobs] == [4] * 48, worker.log_text()
