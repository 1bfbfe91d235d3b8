"""The submit benchmark of ``bench_queue.py``: ``submit_file`` on a large ``.txt`` file, timed end
to end and stage by stage in the same call, and what-if timings of the slow stages done another way.

Stages are timed by wrapping the functions ``submit_file`` calls (module attributes, restored
afterwards), so the end-to-end call is the real one; the wrappers cost well under a microsecond
per call. Time between two wrapped calls is reported as the code that runs there.

The what-ifs never change project code: each times one alternative on its own submission in the
same database (or its own throwaway queue), so a fix can be judged by its measured effect.
"""

from __future__ import annotations

import base64
import gc
import json
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from _queue_services import delete_queue_keys, load_average, queue_length

import loopfree.queue
import producer.submit
import storage.db
import storage.submissions
from loopfree.modelinfo import canonical_model, native_size
from loopfree.queue import GENERATE_TASK, broker_priority, make_celery, model_queue, queue_name
from loopfree.settings import Settings
from producer.prompts import JobDefaults
from producer.submit import submit_file

# What each gap between two wrapped calls is, in submit_file's order.
GAPS = {
    ("default_key", "make_engine"): "build NewJob rows (canonical_model + resolve_size per job)",
    ("insert_jobs", "_queued_jobs"): "commit the insert transaction",
}
WRAPPED = (
    (producer.submit, "parse_prompt_file"),
    (producer.submit, "default_key"),
    (producer.submit, "canonical_model"),
    (storage.db, "make_engine"),
    (loopfree.queue, "make_celery"),
    (producer.submit, "_check_broker"),
    (storage.submissions, "create_submission"),
    (storage.submissions, "insert_jobs"),
    (producer.submit, "_queued_jobs"),
    (loopfree.queue, "publish_jobs"),
)
PUBLISH_PIPELINE = 1_000  # messages per Redis pipeline in the what-if publishers


@dataclass
class Span:
    name: str
    start: float
    end: float
    cpu: float
    calls: int = 1
    busy: float = 0.0  # summed wall time of the calls (differs from end - start when merged)


@dataclass
class SubmitResult:
    jobs: int
    wall_s: float
    cpu_s: float
    stages: list[dict[str, Any]]
    whatif: list[dict[str, Any]] = field(default_factory=list)
    load: list[float] = field(default_factory=list)

    @property
    def jobs_per_s(self) -> float:
        return self.jobs / self.wall_s


def write_txt(path: Path, count: int, tag: str) -> Path:
    """``count`` distinct prompts, one a line (a distinct tag makes a distinct idempotency key)."""
    with path.open("w", encoding="utf-8") as file:
        for i in range(count):
            file.write(f"a watercolor of a lighthouse number {i} on a cliff at dusk, {tag}\n")
    return path


@contextmanager
def stage_clock() -> Iterator[list[Span]]:
    """Wrap the functions ``submit_file`` calls; yields the list the spans are appended to.

    Repeated calls of one function (``canonical_model``) are merged into one span that counts
    them; its start and end are those of the first and last call.
    """
    spans: list[Span] = []
    merged: dict[str, Span] = {}
    originals = [(module, name, getattr(module, name)) for module, name in WRAPPED]

    def wrap(name: str, original: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            start, cpu = time.perf_counter(), time.process_time()
            try:
                return original(*args, **kwargs)
            finally:
                end, used = time.perf_counter(), time.process_time() - cpu
                span = merged.get(name)
                if span is None or name != "canonical_model":
                    span = Span(name, start, end, used, busy=end - start)
                    merged[name] = span
                    spans.append(span)
                else:
                    span.end, span.cpu, span.calls = end, span.cpu + used, span.calls + 1
                    span.busy += end - start

        return timed

    for module, name, original in originals:
        setattr(module, name, wrap(name, original))
    try:
        yield spans
    finally:
        for module, name, original in originals:
            setattr(module, name, original)


def stage_table(spans: list[Span], started: float, finished: float) -> list[dict[str, Any]]:
    """Non-overlapping stages in call order, with the gaps between them named where known."""
    rows = []
    at = started
    previous = "start"
    # canonical_model runs inside the "build NewJob rows" gap: shown as a part of it, not a stage.
    outer = [span for span in spans if span.name != "canonical_model"]
    for span in sorted(outer, key=lambda s: s.start):
        gap = span.start - at
        if gap > 0.0005:
            rows.append(
                {
                    "stage": GAPS.get((previous, span.name), f"between {previous} and {span.name}"),
                    "wall_s": gap,
                    "cpu_s": None,
                }
            )
        rows.append({"stage": span.name, "wall_s": span.end - span.start, "cpu_s": span.cpu})
        at, previous = span.end, span.name
    if finished - at > 0.0005:
        rows.append({"stage": "return the report", "wall_s": finished - at, "cpu_s": None})
    for span in spans:
        if span.name == "canonical_model":
            rows.append({
                "stage": f"  of which canonical_model ({span.calls:,} calls)",
                "wall_s": span.busy, "cpu_s": span.cpu, "part": True,
            })  # fmt: skip
    return rows


def run_submit(
    settings: Settings, model: Path, workdir: Path, count: int, *, whatif: bool, whatif_publish: int
) -> SubmitResult:
    """``submit_file`` on ``count`` prompts, then (with ``whatif``) the alternatives."""
    path = write_txt(workdir / f"prompts-{count}.txt", count, uuid.uuid4().hex[:8])
    defaults = JobDefaults(model=str(model), seed_base=0)
    load = [load_average()]
    with stage_clock() as spans:
        started, cpu = time.perf_counter(), time.process_time()
        report = submit_file(settings, path, defaults)
        finished, cpu_used = time.perf_counter(), time.process_time() - cpu
    load.append(load_average())
    if report.published != count or report.inserted != count:
        raise AssertionError(f"submitted {report.inserted} rows, {report.published} messages")
    waiting = queue_length(settings.resolved_broker_url, queue_name(str(model)))
    if waiting != count:
        raise AssertionError(f"{waiting} messages in the queue, expected {count}")
    result = SubmitResult(
        jobs=count,
        wall_s=finished - started,
        cpu_s=cpu_used,
        stages=stage_table(spans, started, finished),
        load=load,
    )
    if whatif:
        result.whatif = run_whatifs(settings, model, path, defaults, whatif_publish)
        result.load.append(load_average())
    return result


# -- what-ifs -------------------------------------------------------------------------------------


def run_whatifs(
    settings: Settings, model: Path, path: Path, defaults: JobDefaults, publish_count: int
) -> list[dict[str, Any]]:
    from producer.prompts import parse_prompt_file
    from storage.db import make_engine, session_scope
    from storage.submissions import NewJob, create_submission, insert_jobs

    rows: list[dict[str, Any]] = []
    parsed = parse_prompt_file(path, defaults=defaults)
    count = len(parsed.jobs)

    # 1. The NewJob loop as submit_file runs it, and with canonical_model once per distinct model.
    def build(cached: bool) -> list[NewJob]:
        sizes: dict[str, int] = {}
        models: dict[str, str] = {}
        jobs = []
        for parsed_job in parsed.jobs:
            spec = parsed_job.spec
            if cached:
                model_name = models.get(spec.model)
                if model_name is None:
                    model_name = models[spec.model] = canonical_model(spec.model)
            else:
                model_name = canonical_model(spec.model)
            if model_name not in sizes:
                sizes[model_name] = native_size(model_name)
            spec = spec.resolve_size(sizes[model_name], sizes[model_name])
            jobs.append(NewJob(
                position=parsed_job.position, line_number=parsed_job.line_number,
                prompt=spec.prompt, seed=spec.seed, height=spec.height, width=spec.width,
                steps=spec.steps, model=model_name, priority=spec.priority,
                metadata=spec.metadata,
            ))  # fmt: skip
        return jobs

    for cached, label in ((False, "as submit_file does"), (True, "canonical_model cached")):
        seconds, jobs = _timed(lambda cached=cached: build(cached))
        rows.append(_row("build NewJob rows", label, count, seconds))

    # 2. The insert, as submit_file does it (staging table) and straight COPY for a new submission.
    engine = make_engine(settings.resolved_database_url)
    try:
        for skip_existing in (True, False):

            def insert(skip_existing: bool = skip_existing) -> None:
                with session_scope(engine) as session:
                    ref = create_submission(
                        session, source=path.name, defaults={}, job_count=count,
                        idempotency_key=f"bench-{uuid.uuid4().hex}",
                    )  # fmt: skip
                    insert_jobs(session, ref.id, jobs, skip_existing=skip_existing)

            seconds, _ = _timed(insert)
            label = (
                "skip_existing=True (as submit_file)"
                if skip_existing
                else ("skip_existing=False (COPY into jobs)")
            )
            rows.append(_row("insert + commit", label, count, seconds))
    finally:
        engine.dispose()

    # 3. Publishing, into a throwaway queue: as publish_jobs does, with kombu's Producer.batch,
    #    and with the message rendered from a template and LPUSHed in pipelines.
    app = make_celery(settings)
    throwaway = f"bench-whatif-{uuid.uuid4().hex[:8]}"
    queue = queue_name(throwaway)
    ids = [(str(uuid.uuid4()), throwaway, 5) for _ in range(count)]
    try:
        small = ids[:publish_count]
        seconds, _ = _timed(lambda: loopfree.queue.publish_jobs(app, small))
        rows.append(
            _row("publish", "publish_jobs (one LPUSH round trip per job)", len(small), seconds)
        )
        seconds, _ = _timed(lambda: publish_batched(app, small))
        rows.append(
            _row("publish", "same calls inside kombu Producer.batch(1000)", len(small), seconds)
        )
        template = MessageTemplate.capture(app, settings.resolved_broker_url, throwaway)
        seconds, _ = _timed(lambda: template.publish(settings.resolved_broker_url, ids))
        rows.append(_row("publish", "template message + pipelined LPUSH (1000)", count, seconds))
        expected = 2 * len(small) + 1 + count
        if queue_length(settings.resolved_broker_url, queue) != expected:
            raise AssertionError("a what-if publisher lost messages")
    finally:
        delete_queue_keys(settings.resolved_broker_url, queue)
    return rows


def publish_batched(app: Any, jobs: list[tuple[str, str, int]]) -> int:
    """``publish_jobs`` with its loop inside ``producer.batch``: kombu 5.7's pipelined publish."""
    task = app.signature(GENERATE_TASK)
    with app.producer_or_acquire() as producer:
        queue = model_queue(jobs[0][1])
        queue(producer.channel).declare()
        with producer.batch(max_size=PUBLISH_PIPELINE):
            for job_id, _model, priority in jobs:
                task.clone(args=(job_id,)).apply_async(
                    producer=producer, queue=queue, priority=broker_priority(priority),
                    task_id=job_id,
                )  # fmt: skip
    return len(jobs)


@dataclass(frozen=True)
class MessageTemplate:
    """A message exactly as ``publish_jobs`` wrote it for one job, re-rendered for other ids.

    Only the job id (body, ``id``, ``root_id``, ``argsrepr``, ``correlation_id``) and kombu's
    random ``delivery_tag`` differ between two messages of one queue and priority; ``capture``
    checks that by rendering the captured job again and comparing.
    """

    key: str
    envelope: dict[str, Any]
    embed: Any

    @classmethod
    def capture(cls, app: Any, redis_url: str, model: str) -> MessageTemplate:
        job_id = str(uuid.uuid4())
        loopfree.queue.publish_jobs(app, [(job_id, model, 5)])
        client = redis.Redis.from_url(redis_url)
        try:
            keys = [k for k in client.scan_iter(match=f"{queue_name(model)}*")
                    if client.type(k) == b"list"]  # fmt: skip
            (key,) = keys
            raw = client.lindex(key, 0)
        finally:
            client.close()
        envelope = json.loads(raw)
        args, _kwargs, embed = json.loads(base64.b64decode(envelope["body"]))
        if args != [job_id]:
            raise AssertionError(f"unexpected message body {args!r}")
        template = cls(key.decode(), envelope, embed)
        again = json.loads(template.render(job_id))
        again["properties"]["delivery_tag"] = envelope["properties"]["delivery_tag"]
        if again != envelope:
            raise AssertionError("the template does not reproduce publish_jobs' message")
        return template

    def render(self, job_id: str) -> str:
        envelope = self.envelope
        body = json.dumps([[job_id], {}, self.embed]).encode()
        return json.dumps({
            **envelope,
            "body": base64.b64encode(body).decode(),
            "headers": {**envelope["headers"], "id": job_id, "root_id": job_id,
                        "argsrepr": repr((job_id,))},
            "properties": {**envelope["properties"], "correlation_id": job_id,
                           "delivery_tag": str(uuid.uuid4())},
        })  # fmt: skip

    def publish(self, redis_url: str, jobs: list[tuple[str, str, int]]) -> int:
        client = redis.Redis.from_url(redis_url)
        try:
            for start in range(0, len(jobs), PUBLISH_PIPELINE):
                pipe = client.pipeline(transaction=False)
                for job_id, _model, _priority in jobs[start : start + PUBLISH_PIPELINE]:
                    pipe.lpush(self.key, self.render(job_id))
                pipe.execute()
        finally:
            client.close()
        return len(jobs)


_last_cpu = [0.0]  # process CPU seconds of the last _timed call, for _row


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    gc.collect()  # garbage of the previous what-if is not this one's cost
    started, cpu = time.perf_counter(), time.process_time()
    value = fn()
    _last_cpu[0] = time.process_time() - cpu
    return time.perf_counter() - started, value


def _row(stage: str, how: str, count: int, seconds: float) -> dict[str, Any]:
    return {"stage": stage, "how": how, "jobs": count, "wall_s": seconds,
            "jobs_per_s": count / seconds, "cpu_s": _last_cpu[0]}  # fmt: skip
