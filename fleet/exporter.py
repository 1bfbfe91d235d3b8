"""The fleet exporter behind ``loopfree metrics``: job counts, the scaling signal, broker queue
depths and measured worker throughput, as Prometheus gauges.

A background loop reads the database and the broker every ``interval`` seconds into a
``FleetSnapshot``; scrapes serve the latest snapshot. So the database sees one set of queries per
interval however many Prometheus servers and probes scrape, and a broker that hangs delays the
next refresh, never a scrape.

Each refresh counts only the open jobs (queued, running) and finds each model's oldest queued job:
ranges of the status index, a few milliseconds however many finished jobs the table holds (they
grow with the backlog instead, about 10 ms per 10,000 open jobs). Finished-job counts and
throughput, which
cost a scan of the whole ``(model, status)`` index (about 0.3 s per million jobs on PostgreSQL) and
change no decision, are read again every ``FULL_REFRESH_S``.

What is exported (all gauges):

* ``loopfree_jobs{model,status}``: jobs by stage per model, every stage present (0 when none):
  ``queued``, ``claimed``, ``rendering``, ``succeeded``, ``failed``, ``cancelled``, the words of
  ``storage.progress`` that ``status`` and the web view use.
* ``loopfree_pending_jobs{model}``: queued + running jobs, the scaling signal (see docs/fleet.md).
  Every model with a job in the database gets a series, 0 when idle, so KEDA reads 0, not "no data".
* ``loopfree_queue_depth{queue}``: messages waiting in each model's broker queue; with the broker
  down, ``loopfree_broker_up`` is 0 and this is left out.
* ``loopfree_oldest_queued_age_seconds{model}``: how long the oldest queued job has waited, 0
  when nothing is queued.
* ``loopfree_recommended_workers{model}``: the workers ``loopfree scale`` would recommend (with
  the exporter's ``--target-seconds`` and ``--startup-seconds``, not knowing how many run), so an
  autoscaler can scale on it with a target of 1 worker per worker.
* ``loopfree_worker_throughput_images_per_second{model}``: the median worker's measured rate (see
  ``fleet.scaling``), with ``loopfree_throughput_workers{model}`` saying over how many workers.
* ``loopfree_database_up``, ``loopfree_broker_up``, ``loopfree_exporter_refresh_seconds`` and
  ``loopfree_exporter_refresh_timestamp_seconds``. With the database down, the job gauges are left
  out rather than repeated stale (Prometheus' advice for exporters).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from celery import Celery
from kombu.exceptions import OperationalError as KombuOperationalError
from prometheus_client import CollectorRegistry, generate_latest, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from core.errors import LoopfreeError
from fleet.scaling import (
    DEFAULT_STARTUP_S,
    DEFAULT_TARGET_S,
    Throughput,
    recommend_workers,
    summarize_throughput,
)
from storage.db import Engine, Session, session_scope
from storage.fleet_reads import (
    PENDING_STATUSES,
    THROUGHPUT_LOOKBACK_S,
    THROUGHPUT_SAMPLE_JOBS,
    count_jobs_by_model,
    count_open_jobs,
    oldest_queued_by_model,
    recent_batches,
    rendering_by_model,
)

# ``loopfree scale`` reads one model through these; re-exported so it needs one import.
from storage.fleet_reads import count_pending as count_pending
from storage.fleet_reads import oldest_queued_at as oldest_queued_at
from storage.models import JobStatus, utcnow
from storage.progress import STAGES
from taskqueue.app import queue_depths

log = logging.getLogger(__name__)

DEFAULT_INTERVAL_S = 5.0
"""Seconds between refreshes: a third of Prometheus' and KEDA's usual 15 s, so every scrape sees a
pending count at most a few seconds old."""

FULL_REFRESH_S = 60.0
"""Seconds between full reads (finished-job counts, throughput). Those are for dashboards and the
rate ``loopfree scale`` also measures; a minute old is fresh enough, and it keeps the exporter's
database load flat as the table grows."""


# -- reads (the SQL is in ``storage.fleet_reads``) ---------------------------------------------


def age_s(since: datetime | None, now: datetime) -> float:
    """Seconds from ``since`` to ``now``; 0 for ``None`` (nothing queued) and for a ``since`` in
    the future, which only clock skew between the producer's host and this one makes."""
    if since is None:
        return 0.0
    return max(0.0, (now - since).total_seconds())


def measure_throughput(
    session: Session,
    model: str,
    *,
    sample_jobs: int = THROUGHPUT_SAMPLE_JOBS,
    lookback_s: float = THROUGHPUT_LOOKBACK_S,
    now: datetime | None = None,
) -> Throughput:
    """The median per-worker rate of ``model`` over its recent batches (``fleet.scaling``)."""
    batches = recent_batches(
        session, model, sample_jobs=sample_jobs, lookback_s=lookback_s, now=now
    )
    return summarize_throughput(batches)


# -- one snapshot -------------------------------------------------------------------------------


@dataclass(frozen=True)
class FleetSnapshot:
    """Everything the exporter serves, read at one moment."""

    taken_at: float  # Unix time
    refresh_s: float
    database_up: bool
    full: bool = True  # False: finished-job counts and throughput carried over from an earlier one
    jobs: dict[str, dict[JobStatus, int]] = field(default_factory=dict)
    throughput: dict[str, Throughput] = field(default_factory=dict)
    oldest_queued_age_s: dict[str, float] = field(default_factory=dict)  # 0: nothing queued
    recommended_workers: dict[str, int] = field(default_factory=dict)
    broker_up: bool | None = None  # None: no broker was asked
    queue_depths: dict[str, int] = field(default_factory=dict)
    rendering: dict[str, int] = field(default_factory=dict)  # of the running jobs, per model

    @property
    def pending(self) -> dict[str, int]:
        """Queued + running jobs per model."""
        return {
            model: sum(counts[status] for status in PENDING_STATUSES)
            for model, counts in self.jobs.items()
        }


def collect_fleet_metrics(
    engine: Engine,
    app: Celery | None,
    *,
    models: Sequence[str] = (),
    now: datetime | None = None,
    reuse: FleetSnapshot | None = None,
    target_s: float = DEFAULT_TARGET_S,
    startup_s: float = DEFAULT_STARTUP_S,
) -> FleetSnapshot:
    """Read the database (and the broker, given a Celery ``app``) into a snapshot.

    ``models`` are reported even with no jobs at all (e.g. the model this deployment serves, on
    an empty database). A database or broker that cannot be read is reported as down, not raised.
    With ``reuse``, an earlier snapshot that read the database, only open jobs are counted again;
    finished-job counts, the models known and throughput are carried over from it. The oldest
    queued job is looked up on every refresh, and each model's recommended workers computed with
    ``target_s`` and ``startup_s`` (``fleet.scaling.recommend_workers``; how many workers run is
    not known here, so every one is assumed to start from cold).
    """
    started = time.perf_counter()
    jobs: dict[str, dict[JobStatus, int]] = {}
    throughput: dict[str, Throughput] = {}
    oldest: dict[str, datetime] = {}
    rendering: dict[str, int] = {}
    full = reuse is None or not reuse.database_up
    try:
        with session_scope(engine) as session:
            if reuse is not None and reuse.database_up:
                jobs = _with_open_counts(reuse.jobs, count_open_jobs(session))
                carried = reuse.throughput
            else:
                jobs, carried = count_jobs_by_model(session), {}
            for model in models:
                jobs.setdefault(model, dict.fromkeys(JobStatus, 0))
            for model in jobs:
                if model in carried:
                    throughput[model] = carried[model]
                else:
                    throughput[model] = measure_throughput(session, model, now=now)
            oldest = oldest_queued_by_model(session)
            rendering = rendering_by_model(session)
        database_up = True
    except LoopfreeError as error:  # DatabaseUnavailable, SchemaMissing, DatabaseMisconfigured
        log.warning("cannot read the database: %s", error)
        jobs, throughput, oldest, rendering, database_up = {}, {}, {}, {}, False

    read_at = now or utcnow()
    ages = {model: age_s(oldest.get(model), read_at) for model in jobs}
    recommended = {
        model: recommend_workers(
            sum(counts[status] for status in PENDING_STATUSES),
            throughput[model].per_worker_images_per_s,
            target_s,
            oldest_queued_age_s=ages[model],
            startup_s=startup_s,
        )
        for model, counts in jobs.items()
    }

    broker_up: bool | None = None
    depths: dict[str, int] = {}
    if app is not None:
        broker_up, depths = _read_queue_depths(app, sorted(set(jobs) | set(models)))
    return FleetSnapshot(
        taken_at=time.time(),
        refresh_s=time.perf_counter() - started,
        database_up=database_up,
        full=full and database_up,
        jobs=jobs,
        throughput=throughput,
        oldest_queued_age_s=ages,
        recommended_workers=recommended,
        broker_up=broker_up,
        queue_depths=depths,
        rendering=rendering,
    )


def _with_open_counts(
    earlier: dict[str, dict[JobStatus, int]], open_now: dict[str, dict[JobStatus, int]]
) -> dict[str, dict[JobStatus, int]]:
    """Earlier counts with the open statuses replaced by ``open_now`` (0 where a model has none)."""
    jobs = {}
    for model in earlier.keys() | open_now.keys():
        counts = dict(earlier.get(model, dict.fromkeys(JobStatus, 0)))
        counts.update(open_now.get(model, dict.fromkeys(PENDING_STATUSES, 0)))
        jobs[model] = counts
    return jobs


def _read_queue_depths(app: Celery, models: Sequence[str]) -> tuple[bool, dict[str, int]]:
    connection = app.connection_for_read()
    failures = (KombuOperationalError, OSError, *connection.connection_errors)
    connection.release()
    try:
        return True, queue_depths(app, models)
    except failures as error:
        log.warning("cannot read queue depths from the broker: %s", error)
        return False, {}


# -- Prometheus ---------------------------------------------------------------------------------


def metric_families(snapshot: FleetSnapshot) -> list[Metric]:
    """The snapshot as Prometheus gauge families."""
    families: list[Metric] = [
        _gauge("loopfree_database_up", "1 if the database was read", snapshot.database_up),
        _gauge("loopfree_exporter_refresh_seconds", "Last refresh's duration", snapshot.refresh_s),
        _gauge("loopfree_exporter_refresh_timestamp_seconds", "Last refresh", snapshot.taken_at),
    ]
    if snapshot.broker_up is not None:
        families.append(
            _gauge("loopfree_broker_up", "1 if the broker's queues were read", snapshot.broker_up)
        )
        depth = GaugeMetricFamily(
            "loopfree_queue_depth", "Messages waiting in the broker queue", labels=["queue"]
        )
        for queue, messages in sorted(snapshot.queue_depths.items()):
            depth.add_metric([queue], messages)
        families.append(depth)
    if not snapshot.database_up:
        return families

    jobs = GaugeMetricFamily(
        "loopfree_jobs",
        "Jobs by stage: queued, claimed, rendering, succeeded, failed, cancelled",
        labels=["model", "status"],
    )
    pending = GaugeMetricFamily(
        "loopfree_pending_jobs", "Queued + running jobs: the scaling signal", labels=["model"]
    )
    rate = GaugeMetricFamily(
        "loopfree_worker_throughput_images_per_second",
        "Median worker's images per busy second, over its recent batches",
        labels=["model"],
    )
    workers = GaugeMetricFamily(
        "loopfree_throughput_workers", "Workers the throughput was measured from", labels=["model"]
    )
    oldest = GaugeMetricFamily(
        "loopfree_oldest_queued_age_seconds",
        "Seconds the oldest queued job has waited; 0 when none is queued",
        labels=["model"],
    )
    recommended = GaugeMetricFamily(
        "loopfree_recommended_workers",
        "Workers that drain the pending jobs before the oldest misses the target (loopfree scale)",
        labels=["model"],
    )
    pending_by_model = snapshot.pending
    for model in sorted(snapshot.jobs):
        for stage, count in stage_counts(snapshot, model).items():
            jobs.add_metric([model, stage], count)
        pending.add_metric([model], pending_by_model[model])
        measured = snapshot.throughput.get(model)
        workers.add_metric([model], measured.workers if measured else 0)
        if measured is not None and measured.per_worker_images_per_s is not None:
            rate.add_metric([model], measured.per_worker_images_per_s)
        oldest.add_metric([model], snapshot.oldest_queued_age_s.get(model, 0.0))
        if model in snapshot.recommended_workers:
            recommended.add_metric([model], snapshot.recommended_workers[model])
    families += [jobs, pending, rate, workers, oldest, recommended]
    return families


def stage_counts(snapshot: FleetSnapshot, model: str) -> dict[str, int]:
    """A model's jobs by stage (``storage.progress.STAGES``): its running jobs split into those in
    a sampler call (rendering) and those only claimed."""
    counts = snapshot.jobs[model]
    running = counts[JobStatus.RUNNING]
    rendering = min(snapshot.rendering.get(model, 0), running)
    by_stage = {status.value: count for status, count in counts.items()}
    del by_stage[JobStatus.RUNNING.value]
    by_stage |= {"claimed": running - rendering, "rendering": rendering}
    return {stage: by_stage[stage] for stage in STAGES}


def _gauge(name: str, documentation: str, value: float | bool) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=float(value))


class FleetCollector(Collector):
    """A Prometheus collector serving the latest snapshot; ``refresh()`` takes a new one, a full
    one when the last full read is ``full_every_s`` seconds old. ``target_s`` and ``startup_s``
    are what ``loopfree_recommended_workers`` is computed with."""

    def __init__(
        self,
        engine: Engine,
        app: Celery | None,
        *,
        models: Sequence[str] = (),
        full_every_s: float = FULL_REFRESH_S,
        target_s: float = DEFAULT_TARGET_S,
        startup_s: float = DEFAULT_STARTUP_S,
    ) -> None:
        self.engine = engine
        self.app = app
        self.models = tuple(models)
        self.full_every_s = full_every_s
        self.target_s = target_s
        self.startup_s = startup_s
        self._lock = threading.Lock()
        self._snapshot: FleetSnapshot | None = None
        self._last_full: FleetSnapshot | None = None

    def refresh(self) -> FleetSnapshot:
        reuse = self._snapshot
        if self._last_full is None or time.time() - self._last_full.taken_at >= self.full_every_s:
            reuse = None
        snapshot = collect_fleet_metrics(
            self.engine,
            self.app,
            models=self.models,
            reuse=reuse,
            target_s=self.target_s,
            startup_s=self.startup_s,
        )
        if snapshot.full:
            self._last_full = snapshot
        with self._lock:
            self._snapshot = snapshot
        return snapshot

    @property
    def snapshot(self) -> FleetSnapshot | None:
        with self._lock:
            return self._snapshot

    def collect(self) -> Iterator[Metric]:
        snapshot = self.snapshot
        if snapshot is not None:
            yield from metric_families(snapshot)


def render(snapshot: FleetSnapshot) -> str:
    """A snapshot in the Prometheus text format: what a scrape serving it returns."""

    class _Snapshot(Collector):
        def collect(self) -> Iterator[Metric]:
            yield from metric_families(snapshot)

    registry = CollectorRegistry()
    registry.register(_Snapshot())
    return generate_latest(registry).decode()


def serve(
    collector: FleetCollector,
    *,
    port: int,
    address: str = "0.0.0.0",
    interval_s: float = DEFAULT_INTERVAL_S,
    stop: threading.Event,
) -> None:
    """Refresh, serve ``/metrics`` on ``address:port``, refresh every ``interval_s`` until
    ``stop`` is set, then close the server."""
    collector.refresh()  # the first scrape already has numbers
    registry = CollectorRegistry()
    registry.register(collector)
    server, thread = start_http_server(port, addr=address, registry=registry)
    log.info("serving fleet metrics on %s:%d every %.1f s", address, server.server_port, interval_s)
    try:
        while not stop.wait(interval_s):
            collector.refresh()
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
