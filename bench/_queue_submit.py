"""The submit benchmark of ``bench_queue.py``: ``submit_file`` on a large ``.txt`` file, timed end
to end and stage by stage in the same call, and a what-if: publishing through Celery one message
at a time, as it was done before bulk publishing.

Stages are timed by wrapping the functions ``submit_file`` calls (module attributes, restored
afterwards), so the end-to-end call is the real one; the wrappers cost well under a microsecond
per call. Time between two wrapped calls is reported as the code that runs there.

The what-if never changes project code: it publishes into a throwaway queue, deleted afterwards.
"""

from __future__ import annotations

import gc
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _machine import load_average
from _queue_services import queue_length

import producer.submit
import storage.db
import storage.submissions
import taskqueue.app
from core.settings import Settings
from producer.prompts import JobDefaults
from producer.submit import submit_file
from taskqueue.app import make_celery, publish_with_celery, queue_name
from tests.harness import delete_queue_keys

# What each gap between two wrapped calls is, in submit_file's order.
GAPS = {
    ("default_key", "_as_stored"): "import storage and the queue (submit_file's first call)",
    ("insert_jobs", "publish_jobs"): "commit the insert transaction, list the messages",
}
WRAPPED = (
    (producer.submit, "parse_prompt_file"),
    (producer.submit, "default_key"),
    (producer.submit, "_as_stored"),  # the rows as stored: canonical model, resolved size
    (producer.submit, "canonical_model"),
    (storage.db, "make_engine"),
    (taskqueue.app, "make_celery"),
    (producer.submit, "_check_broker"),
    (storage.submissions, "create_submission"),
    (storage.submissions, "insert_jobs"),
    (taskqueue.app, "publish_jobs"),
)


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
    # canonical_model runs inside _as_stored (and before parsing): a part, not a stage of its own.
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
    """Publishing the submission's messages once more into a throwaway queue: through Celery's
    ``apply_async`` one message at a time (how publishing worked before ``taskqueue.redis_lists``)
    and in bulk, as ``publish_jobs`` does now."""
    del path, defaults  # the publishers need only job ids
    app = make_celery(settings)
    throwaway = f"bench-whatif-{uuid.uuid4().hex[:8]}"
    queue = queue_name(throwaway)
    count = publish_count * 20
    ids = [(str(uuid.uuid4()), throwaway, 5) for _ in range(count)]
    rows: list[dict[str, Any]] = []
    try:
        small = ids[:publish_count]
        seconds, _ = _timed(lambda: publish_with_celery(app, small, countdown=None))
        rows.append(_row("publish", "Celery apply_async, one message a time", len(small), seconds))
        seconds, _ = _timed(lambda: taskqueue.app.publish_jobs(app, ids))
        rows.append(_row("publish", "publish_jobs: rendered messages, bulk LPUSH", count, seconds))
        if queue_length(settings.resolved_broker_url, queue) != len(small) + count:
            raise AssertionError("a publisher lost messages")
    finally:
        delete_queue_keys(settings.resolved_broker_url, queue)
    return rows


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
