"""The worker benchmarks of ``bench_queue.py``: the raw sampler back to back, a real ``loopfree
worker`` draining a burst, and the same worker under a steady stream of jobs.

Throughput through the queue is read from the database, the source of truth: a batch ends when its
jobs are recorded (``finished_at``), and steady state runs from the end of the first batch to the
end of the last, so model loading, warm-up and the first batch's fill are left out.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

from _machine import load_average

import taskqueue.app
from core.settings import Settings
from producer.prompts import JobDefaults
from producer.submit import submit_file


def prompt(i: int) -> str:
    """Distinct prompts: the worker's text-encoder cache must not get cheaper work than the raw
    sampler gets."""
    return f"a photo of object number {i} on a wooden table, studio light"


def write_prompts(path: Path, first: int, count: int) -> Path:
    path.write_text("".join(prompt(i) + "\n" for i in range(first, first + count)), "utf-8")
    return path


# -- the raw sampler ------------------------------------------------------------------------------


@dataclass
class RawResult:
    mode: str  # "main thread" or "pool thread"
    batches: int
    batch_size: int
    seconds: list[float]  # per batch: encode_text + sample
    load: float
    cpu_s: float = 0.0  # process CPU seconds over the run (all threads)

    @property
    def cpu_per_image_ms(self) -> float:
        return 1000 * self.cpu_s / (self.batches * self.batch_size)

    @property
    def images_per_s(self) -> float:
        return self.batches * self.batch_size / sum(self.seconds)


class RawSampler:
    """The model loaded as the worker loads it, timed calling ``encode_text`` + ``sample``.

    Timed from the main thread and from a fresh thread: the worker samples in a Celery pool
    thread, and on this shared CPU the two run at visibly different speeds (torch's OpenMP team
    of the main thread competes with other processes differently), so both are measured and the
    faster one is the baseline.
    """

    def __init__(self, model: Path) -> None:
        from worker.models import load_model
        from worker.sampler import TiUESampler

        self.sampler = TiUESampler(load_model(str(model), device="cpu"))
        self.size = self.sampler.model.default_size
        self.sampler.generate(["warm-up"], [0])  # the worker warms up the same way
        self.next_prompt = 10_000_000

    def run(self, batches: int, batch_size: int, *, in_thread: bool) -> RawResult:
        if not in_thread:
            return self._run(batches, batch_size, "main thread")
        box: dict[str, Any] = {}

        def target() -> None:
            try:
                box["result"] = self._run(batches, batch_size, "pool thread")
            except BaseException as error:  # noqa: BLE001 - re-raised in the caller's thread
                box["error"] = error

        thread = threading.Thread(target=target, name="raw-sampler")
        thread.start()
        thread.join()
        if "error" in box:
            raise box["error"]
        return box["result"]

    def _run(self, batches: int, batch_size: int, mode: str) -> RawResult:
        seconds = []
        load = load_average()
        cpu = time.process_time()
        for _ in range(batches):
            first = self.next_prompt
            self.next_prompt += batch_size
            prompts = [prompt(i) for i in range(first, first + batch_size)]
            started = time.perf_counter()
            text = self.sampler.encode_text(prompts)
            self.sampler.sample(text, list(range(first, first + batch_size)), self.size, self.size)
            seconds.append(time.perf_counter() - started)
        used = time.process_time() - cpu
        return RawResult(mode, batches, batch_size, seconds, max(load, load_average()), used)


# -- reading the database -------------------------------------------------------------------------


@dataclass
class QueueRun:
    jobs: int
    succeeded: int
    batches: int
    steady_images: int  # jobs recorded after the first batch
    steady_s: float  # first batch recorded -> last batch recorded
    batch_sizes: list[int]  # one entry per job: the size of the delivery it came in
    delivery_sizes: list[int]  # one entry per delivery (batch_id): jobs it recorded
    sample_s: list[float]  # one entry per batch
    upload_s: list[float]  # one entry per job
    max_batch: int
    load: list[float] = field(default_factory=list)
    latency_s: list[float] = field(default_factory=list)  # stream: publish -> recorded
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def images_per_s(self) -> float:
        return self.steady_images / self.steady_s if self.steady_s > 0 else float("nan")

    @property
    def mean_batch(self) -> float:
        return statistics.fmean(self.batch_sizes)

    @property
    def fill(self) -> float:
        return self.mean_batch / self.max_batch

    @property
    def sampling_share(self) -> float:
        """Sampler seconds in the steady window / its length: how busy the "GPU" was."""
        return sum(self.sample_s[1:]) / self.steady_s if self.steady_s > 0 else float("nan")


def read_run(settings: Settings, submission_id: str, max_batch: int) -> QueueRun:
    from sqlalchemy import select

    from storage.db import make_engine, session_scope
    from storage.models import Job, JobStatus

    engine = make_engine(settings.resolved_database_url)
    try:
        with session_scope(engine) as session:
            rows = session.execute(
                select(Job.status, Job.batch_id, Job.batch_size, Job.finished_at, Job.sample_s,
                       Job.upload_s, Job.id).where(Job.submission_id == submission_id)
            ).all()  # fmt: skip
    finally:
        engine.dispose()
    done = [row for row in rows if row.status == JobStatus.SUCCEEDED]
    batches: dict[str, list[Any]] = defaultdict(list)
    for row in done:
        batches[row.batch_id].append(row)
    ends = sorted(
        (max(r.finished_at for r in members).timestamp(), len(members), members[0].sample_s)
        for members in batches.values()
    )
    steady_s = ends[-1][0] - ends[0][0] if len(ends) > 1 else 0.0
    return QueueRun(
        jobs=len(rows),
        succeeded=len(done),
        batches=len(batches),
        steady_images=sum(size for _, size, _ in ends[1:]),
        steady_s=steady_s,
        batch_sizes=[row.batch_size for row in done],
        delivery_sizes=[len(members) for members in batches.values()],
        sample_s=[sample for _, _, sample in ends],
        upload_s=[row.upload_s for row in done],
        max_batch=max_batch,
        extra={
            "first_end": ends[0][0] if ends else float("nan"),
            "finished_at": {str(row.id): row.finished_at.timestamp() for row in done},
        },
    )


def wait_done(
    settings: Settings,
    submission_id: str,
    timeout_s: float,
    alive: Callable[[], None],
    on_poll: Callable[[], None] | None = None,
) -> None:
    """Poll until no job of the submission is queued or running; ``on_poll`` runs every poll."""
    from storage.db import make_engine, session_scope
    from storage.queries import count_by_status

    engine = make_engine(settings.resolved_database_url)
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            alive()
            if on_poll is not None:
                on_poll()
            with session_scope(engine) as session:
                counts = count_by_status(session, submission_id=submission_id)
            if not any(counts[s] for s in counts if not s.is_terminal):
                return
            time.sleep(0.2)
    finally:
        engine.dispose()
    raise TimeoutError(f"submission {submission_id} not finished after {timeout_s}s")


# -- a burst and a stream -------------------------------------------------------------------------


def submit_burst(settings: Settings, model: Path, workdir: Path, first: int, count: int) -> str:
    """All jobs recorded and published before the worker looks: a full queue."""
    path = write_prompts(workdir / f"burst-{first}.txt", first, count)
    report = submit_file(settings, path, JobDefaults(model=str(model), seed_base=first))
    assert report.published == count, report
    return report.submission_id


def run_stream(
    settings: Settings,
    model: Path,
    workdir: Path,
    first: int,
    rate: float,
    duration_s: float,
    alive: Callable[[], None],
) -> tuple[str, dict[str, float]]:
    """Jobs arriving one at a time at ``rate`` per second for ``duration_s``.

    The rows are inserted up front by ``submit_file`` with publishing held back (its
    ``publish_jobs`` is swapped for a list); the messages are then published one by one on a
    fixed schedule, so the worker sees a steady stream. Returns the submission id and each job's
    publish time (for publish -> recorded latency).
    """
    count = max(1, round(rate * duration_s))
    path = write_prompts(workdir / f"stream-{first}.txt", first, count)
    held: list[tuple[str, str, int]] = []
    original = taskqueue.app.publish_jobs
    taskqueue.app.publish_jobs = lambda app, jobs, **_: held.extend(jobs) or len(held)
    try:
        report = submit_file(settings, path, JobDefaults(model=str(model), seed_base=first))
    finally:
        taskqueue.app.publish_jobs = original
    assert len(held) == count, (len(held), count)

    app = taskqueue.app.make_celery(settings)
    published: dict[str, float] = {}
    started = time.perf_counter()
    for index, job in enumerate(held):
        delay = started + index / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        original(app, [job])
        published[job[0]] = time.time()
        if index % 50 == 0:
            alive()
    late = time.perf_counter() - started - (count - 1) / rate
    if late > max(0.5, 0.05 * duration_s):
        raise RuntimeError(f"the stream fell {late:.1f}s behind its schedule; lower the rate")
    return report.submission_id, published


class CpuMeter:
    """CPU seconds of the worker process and of this one (the moto S3 server), sampled at every
    poll, so the CPU a steady window used can be read off afterwards."""

    def __init__(self, cpu_of_worker: Callable[[], float]) -> None:
        self.cpu_of_worker = cpu_of_worker
        self.samples: list[tuple[float, float, float]] = []

    def sample(self) -> None:
        self.samples.append((time.time(), self.cpu_of_worker(), time.process_time()))

    def between(self, start: float, end: float) -> tuple[float, float]:
        """(worker, this process) CPU seconds from ``start`` to ``end``, linearly interpolated."""
        return (
            self._at(end, 1) - self._at(start, 1),
            self._at(end, 2) - self._at(start, 2),
        )

    def _at(self, moment: float, column: int) -> float:
        samples = self.samples
        for before, after in pairwise(samples):
            if before[0] <= moment <= after[0]:
                span = after[0] - before[0] or 1.0
                share = (moment - before[0]) / span
                return before[column] + share * (after[column] - before[column])
        return samples[-1][column] if moment > samples[-1][0] else samples[0][column]
