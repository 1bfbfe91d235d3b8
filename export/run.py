"""The export: walk the plan's jobs in order, fill shards, commit each, record it, resume.

    jobs (keyset pages) -> fetch_in_order (bounded parallel GETs, sha256 checked)
        -> shard writer (staged locally) -> committer thread: destination.commit, progress file

A shard is closed when it holds ``shard_size`` samples, or before a sample would take it past
``shard_bytes``; the jobs without an image met on the way are counted in the shard they fall in.
Memory is one page of rows, the fetch window and one row group at most; nothing grows with the
export's size. Killed at any point, the next run with the same options finds the progress file,
drops what was staged, keeps every shard it names untouched and goes on after the last one.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from core.errors import UserError
from core.settings import Settings
from export.destination import Destination, StoreDestination, open_destination
from export.fetch import DEFAULT_PARALLEL, MAX_PARALLEL, fetch_in_order
from export.plan import Cursor, ExportOptions, ExportPlan
from export.samples import Sample, sample_key
from export.state import STATE_FILE, STATS_FILE, ExportState, ShardRecord
from export.writers import WRITERS, ShardWriter, check_format_available
from storage.db import Engine, make_engine
from storage.models import utcnow
from storage.stores import store_for

Progress = Callable[[int, int, int], None]
"""Called after each job with (jobs looked at, samples written, image bytes) of this run."""
PlanHook = Callable[[int | None, "ExportState"], None]
"""Called once before the first fetch with the number of jobs to look at (None: unknown) and
the state the run resumes from."""


@dataclass
class ExportReport:
    destination: str
    shards_kept: int  # finished by an earlier run, left as they were
    shards_written: int
    samples: int  # in the whole export
    bytes: int  # of images, in the whole export
    skipped: dict[str, int]  # jobs without an image in the export, by reason
    seconds: float  # this run
    bytes_written: int = 0  # of images, by this run
    already_complete: bool = False
    stats: dict[str, object] = field(default_factory=dict)


@dataclass
class _OpenShard:
    name: str
    writer: ShardWriter
    samples: int = 0
    bytes: int = 0
    skipped: Counter[str] = field(default_factory=Counter)


def run_export(
    settings: Settings,
    options: ExportOptions,
    dest: str,
    *,
    parallel: int = DEFAULT_PARALLEL,
    progress: Progress | None = None,
    on_plan: PlanHook | None = None,
) -> ExportReport:
    """Export what ``options`` select to ``dest``, or finish the export found there.

    ``on_plan`` hears the number of jobs to look at (None if unknown) and the state resumed
    from, before the first image is fetched (a progress bar's total)."""
    if not 1 <= parallel <= MAX_PARALLEL:
        raise UserError(f"--parallel {parallel} must be between 1 and {MAX_PARALLEL}")
    check_format_available(options.format)
    destination = open_destination(settings, dest)
    engine = make_engine(settings.resolved_database_url)
    try:
        export = _Export(settings, engine, options, destination, parallel, progress, on_plan)
        return export.run()
    finally:
        engine.dispose()
        if isinstance(destination, StoreDestination):
            destination.close()


class _Export:
    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        options: ExportOptions,
        destination: Destination,
        parallel: int,
        progress: Progress | None,
        on_plan: PlanHook | None,
    ) -> None:
        self.options = options
        self.destination = destination
        self.parallel = parallel
        self.progress = progress or (lambda looked, samples, size: None)
        self.on_plan = on_plan
        self.engine = engine
        self.store = store_for(settings)
        self.writer_class = WRITERS[options.format]
        self.state = self._load_or_start()
        self.plan = ExportPlan(options, self.state.as_of)
        self._committer: ThreadPoolExecutor
        self._pending: Future[None] | None = None
        self._skipped: Counter[str] = Counter()

    def run(self) -> ExportReport:
        started = time.monotonic()
        kept = len(self.state.shards)
        if self.state.complete:
            return self._report(kept, 0, 0, started, already_complete=True)
        if self.on_plan is not None:
            self.on_plan(self.plan.total(self.engine), self.state)
        self.destination.clear_staging()
        with ThreadPoolExecutor(1, thread_name_prefix="export-commit") as self._committer:
            written_bytes = self._fill_shards()
            self._wait_for_commit()
        self.state.tail = dict(self._skipped)
        self.state.complete = True
        self.destination.write(STATS_FILE, _json_bytes(self.state.stats()))
        self.destination.write(STATE_FILE, self.state.encode())
        self.destination.clear_staging()
        written = len(self.state.shards) - kept
        return self._report(kept, written, written_bytes, started)

    def _fill_shards(self) -> int:
        """Every job past the cursor into shards, each handed to the committer when full;
        returns the image bytes written. Jobs without an image before the first sample are
        left in ``self._skipped`` for the state's tail."""
        ordinal = first = self.state.samples
        index = len(self.state.shards)
        written_bytes = 0
        shard: _OpenShard | None = None
        skipped: Counter[str] = Counter()  # before the open shard's first sample
        last: Cursor | None = None
        jobs = self.plan.jobs(self.engine, self.state.cursor)
        fetched = fetch_in_order(self.store, jobs, as_of=self.state.as_of, parallel=self.parallel)
        for looked, item in enumerate(fetched, start=1):
            if item.data is not None:
                if shard is not None and self._full(shard, len(item.data)):
                    assert last is not None
                    self._finish(shard, last)
                    shard = None
                if shard is None:
                    shard = self._open(index, skipped)
                    index += 1
                    skipped = Counter()
                shard.writer.add(Sample(sample_key(ordinal), item.job, item.data))
                ordinal += 1
                shard.samples += 1
                shard.bytes += len(item.data)
                written_bytes += len(item.data)
            else:
                assert item.reason is not None
                (shard.skipped if shard is not None else skipped)[item.reason] += 1
            last = Cursor(item.job.submission_id, item.job.position)
            self.progress(looked, ordinal - first, written_bytes)
        if shard is not None:
            assert last is not None
            self._finish(shard, last)
        self._skipped = skipped
        return written_bytes

    def _load_or_start(self) -> ExportState:
        where = f"{self.destination.url}/{STATE_FILE}"
        wanted = self.options.as_record()
        data = self.destination.read(STATE_FILE)
        if data is not None:
            state = ExportState.decode(data, where)
            state.check_options(wanted, where)
            return state
        if not self.destination.is_empty():
            raise UserError(
                f"{self.destination.url} is not empty and holds no loopfree export "
                f"({STATE_FILE}); export into an empty folder or prefix"
            )
        state = ExportState(options=wanted, as_of=utcnow())
        self.destination.write(STATE_FILE, state.encode())
        return state

    def _full(self, shard: _OpenShard, size: int) -> bool:
        return shard.samples >= self.options.shard_size or (
            shard.samples > 0 and shard.bytes + size > self.options.shard_bytes
        )

    def _open(self, index: int, skipped: Counter[str]) -> _OpenShard:
        name = f"{index:05d}{self.writer_class.suffix}"
        writer = self.writer_class(self.destination.staging(name))
        return _OpenShard(name, writer, skipped=Counter(skipped))

    def _finish(self, shard: _OpenShard, last: Cursor) -> None:
        """Close the shard and hand it to the committer, which uploads it while the next one
        fills (on S3, a shard's upload would otherwise stall the fetches). One commit at a
        time, in shard order, so the progress file only ever names shards that are there."""
        shard.writer.close()
        record = ShardRecord(shard.name, shard.samples, shard.bytes, dict(shard.skipped), last)
        self._wait_for_commit()
        self._pending = self._committer.submit(self._commit, record)

    def _commit(self, record: ShardRecord) -> None:
        self.destination.commit(record.name)
        self.state.shards.append(record)
        self.destination.write(STATE_FILE, self.state.encode())

    def _wait_for_commit(self) -> None:
        """Wait for the shard being committed, if any; its error is raised here."""
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()

    def _report(
        self,
        kept: int,
        written: int,
        written_bytes: int,
        started: float,
        *,
        already_complete: bool = False,
    ) -> ExportReport:
        stats = self.state.stats()
        return ExportReport(
            destination=self.destination.url,
            shards_kept=kept,
            shards_written=written,
            samples=stats["successes"],
            bytes=stats["bytes"],
            skipped={k: v for k, v in stats["status_dict"].items() if k != "success"},
            seconds=time.monotonic() - started,
            bytes_written=written_bytes,
            already_complete=already_complete,
            stats=stats,
        )


def _json_bytes(data: dict[str, object]) -> bytes:
    return (json.dumps(data, indent=1) + "\n").encode()
