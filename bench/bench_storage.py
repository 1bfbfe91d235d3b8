"""Storage benchmark: bulk job inserts, status counts over 1M jobs, PNG uploads to S3.

    .venv/bin/python bench/bench_storage.py                 # everything, a few minutes
    .venv/bin/python bench/bench_storage.py --only uploads  # one section

Needs PostgreSQL at ``--pg-admin-url`` (it creates and drops its own databases) and the
``moto_server`` command (moto[server]) for the S3 section; both come from ``tests/harness.py``.
Prints a Markdown report.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import numpy as np
import psycopg
from PIL import Image
from sqlalchemy import Engine, text

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _machine import cpu_model, postgres_version  # noqa: E402

from core.jobspec import ParsedJob  # noqa: E402
from migrations.runner import upgrade  # noqa: E402
from storage.db import make_engine, session_scope  # noqa: E402
from storage.models import JobStatus  # noqa: E402
from storage.objects import ObjectStore  # noqa: E402
from storage.queries import count_by_status  # noqa: E402
from storage.stores import open_store  # noqa: E402
from storage.submissions import create_submission, insert_jobs  # noqa: E402
from storage.uploads import UploadPool  # noqa: E402
from tests.harness import (  # noqa: E402
    PG_ADMIN_URL,
    MotoServer,
    aws_test_env,
    parsed_jobs,
    swapped_environ,
    throwaway_database,
)

OPEN = (JobStatus.QUEUED, JobStatus.RUNNING)


# -- helpers ------------------------------------------------------------------------------------


@contextmanager
def sqlite_database() -> Iterator[str]:
    with tempfile.TemporaryDirectory() as folder:
        url = f"sqlite:///{folder}/bench.db"
        upgrade(url)
        yield url


def jobs(count: int) -> list[ParsedJob]:
    """Realistic rows: ~60-character prompts, small caller metadata on every other job. Built
    before the clock starts: validating them is the parser's cost, not the insert's."""
    return parsed_jobs(
        count,
        model="senmaonk/loopfree-sd1.5",
        size=512,
        prompt="a watercolour painting of a red fox in the snow, variation {position}",
        seed_step=7919,
        metadata=lambda position: {"batch": "nightly", "row": position} if position % 2 else {},
    )


def insert_rate(engine: Engine, count: int, *, skip_existing: bool) -> float:
    """Jobs per second for one submission of ``count`` jobs, committed."""
    to_insert = jobs(count)
    started = time.perf_counter()
    with session_scope(engine) as session:
        ref = create_submission(session, source="bench.txt", defaults={}, job_count=count)
        inserted = insert_jobs(session, ref.id, to_insert, skip_existing=skip_existing)
    elapsed = time.perf_counter() - started
    assert inserted == count, (inserted, count)
    return count / elapsed


def timed_ms(function: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Median and max wall time in ms over ``repeats`` calls (after one warm-up call)."""
    function()
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples), max(samples)


# -- sections -----------------------------------------------------------------------------------


def bench_inserts(admin_url: str, count: int) -> list[str]:
    lines = [
        f"### Bulk insert of {count:,} jobs (one submission, one transaction)",
        "",
        "| database | path | jobs/s (runs) |",
        "|---|---|---|",
    ]
    # (database, how to get one, runs, what a new and a resumed submission's insert is there)
    databases: list[tuple[str, Callable[[], AbstractContextManager[str]], int, tuple[str, str]]] = [
        ("PostgreSQL", lambda: throwaway_database(admin_url, prefix="loopfree_bench"), 3,
         ("COPY (new submission)", "COPY + staging + ON CONFLICT (resume)")),
        ("SQLite (WAL)", sqlite_database, 2,
         ("executemany INSERT", "executemany INSERT ON CONFLICT (resume)")),
    ]  # fmt: skip
    for name, database, runs, paths in databases:
        with database() as url:
            engine = make_engine(url)
            for skip_existing, path in zip((False, True), paths, strict=True):
                rates = [
                    insert_rate(engine, count, skip_existing=skip_existing) for _ in range(runs)
                ]
                lines.append(f"| {name} | {path} | {_rates(rates)} |")
            engine.dispose()
    return lines


def _rates(rates: list[float]) -> str:
    return f"**{statistics.median(rates):,.0f}** ({', '.join(f'{r:,.0f}' for r in rates)})"


# 1M jobs in a realistic mix: mostly done, a backlog, a few running and failed.
_STATUS_SQL = """CASE WHEN g % 100 < 85 THEN 'succeeded' WHEN g % 100 < 97 THEN 'queued'
    WHEN g % 100 < 98 THEN 'failed' WHEN g % 100 < 99 THEN 'cancelled' ELSE 'running' END"""


def fill_pg(url: str, rows: int, submissions: int) -> None:
    """Server-side fill (generate_series): we measure counting here, not inserting."""
    per = rows // submissions
    with psycopg.connect(url.replace("+psycopg", ""), autocommit=True) as connection:
        for s in range(submissions):
            sid = str(uuid.UUID(int=s + 1))
            connection.execute(
                "INSERT INTO submissions (id, created_at, source, defaults, job_count) "
                "VALUES (%s, now(), 'bench', '{}', %s)",
                (sid, per),
            )
            connection.execute(
                f"""INSERT INTO jobs (id, submission_id, position, line_number, prompt, seed,
                    height, width, steps, model, metadata, status, created_at)
                SELECT gen_random_uuid(), %s, g, g + 1, 'a red fox ' || g, g, 512, 512, 4,
                    'senmaonk/loopfree-sd1.5', '{{}}', {_STATUS_SQL.replace("%", "%%")}, now()
                FROM generate_series(0, %s) AS g""",
                (sid, per - 1),
            )
        # Index-only scans need an up-to-date visibility map; autovacuum would do it eventually.
        connection.execute("VACUUM ANALYZE jobs")


def fill_sqlite(url: str, rows: int, submissions: int) -> None:
    per = rows // submissions
    engine = make_engine(url)
    with engine.begin() as connection:
        for s in range(submissions):
            sid = uuid.UUID(int=s + 1).hex  # SQLAlchemy stores UUIDs as 32 hex chars on SQLite
            connection.execute(
                text(
                    "INSERT INTO submissions (id, created_at, source, defaults, job_count) "
                    "VALUES (:sid, '2026-01-01 00:00:00.000000', 'bench', '{}', :per)"
                ),
                {"sid": sid, "per": per},
            )
            connection.execute(
                text(
                    f"""WITH RECURSIVE c(g) AS (SELECT 0 UNION ALL SELECT g + 1 FROM c
                        WHERE g + 1 < :per)
                    INSERT INTO jobs (id, submission_id, position, line_number, prompt, seed,
                        height, width, steps, model, metadata, status, created_at)
                    SELECT lower(hex(randomblob(16))), :sid, g, g + 1, 'a red fox ' || g, g, 512,
                        512, 4, 'senmaonk/loopfree-sd1.5', '{{}}', {_STATUS_SQL},
                        '2026-01-01 00:00:00.000000'
                    FROM c"""
                ),
                {"sid": sid, "per": per},
            )
    with engine.connect() as connection:
        connection.exec_driver_sql("ANALYZE")
    engine.dispose()


def bench_counts(admin_url: str, rows: int) -> list[str]:
    submissions = 10
    lines = [
        f"### Status counts over {rows:,} jobs ({submissions} submissions)",
        "",
        "`count_by_status` through a session, median and max of 20 calls after a warm-up.",
        "",
        "| database | query | median ms | max ms |",
        "|---|---|---|---|",
    ]
    some_submission = str(uuid.UUID(int=1))
    for name, database, fill in (
        ("PostgreSQL", lambda: throwaway_database(admin_url, prefix="loopfree_bench"), fill_pg),
        ("SQLite (WAL)", sqlite_database, fill_sqlite),
    ):
        with database() as url:
            started = time.perf_counter()
            fill(url, rows, submissions)
            print(f"  filled {name} in {time.perf_counter() - started:.0f} s", file=sys.stderr)
            engine = make_engine(url)

            def all_jobs(engine: Engine = engine) -> object:
                with session_scope(engine) as session:
                    return count_by_status(session)

            def one_submission(engine: Engine = engine) -> object:
                with session_scope(engine) as session:
                    return count_by_status(session, submission_id=some_submission)

            def open_work(engine: Engine = engine) -> object:
                with session_scope(engine) as session:
                    return count_by_status(session, statuses=OPEN)

            per = f"one submission ({rows // submissions:,} jobs)"
            queries = (("all statuses", all_jobs), (per, one_submission),
                       ("queued + running only (13% of rows)", open_work))  # fmt: skip
            for label, query in queries:
                median, worst = timed_ms(query, repeats=20)
                lines.append(f"| {name} | {label} | **{median:.1f}** | {worst:.1f} |")
            engine.dispose()
    return lines


def make_pngs(count: int) -> list[bytes]:
    """512x512 RGB: a colour gradient plus Gaussian noise (sigma 3), about 400 KB each as PNG,
    close to a real 512-pixel diffusion output (pure noise would be ~790 KB, a gradient ~30 KB)."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:512, 0:512]
    base = np.stack([x / 2, y / 2, (x + y) / 4], axis=-1)
    images = []
    for _ in range(count):
        pixels = np.clip(base + rng.normal(0, 3, base.shape), 0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, "PNG")
        images.append(buffer.getvalue())
    return images


def upload_all(store: ObjectStore, pngs: list[bytes], count: int, pool: UploadPool | None) -> float:
    """Uploads per second for ``count`` uploads (keys unique per run)."""
    run = uuid.uuid4().hex[:8]
    started = time.perf_counter()
    if pool is None:
        for i in range(count):
            store.put_png(f"{run}/{i}.png", pngs[i % len(pngs)], metadata={"seed": str(i)})
    else:
        futures = [
            pool.put_png(store, f"{run}/{i}.png", pngs[i % len(pngs)], metadata={"seed": str(i)})
            for i in range(count)
        ]
        for future in futures:
            future.result()
    return count / (time.perf_counter() - started)


def bench_uploads(count: int) -> list[str]:
    pngs = make_pngs(16)
    mean_kb = statistics.mean(len(p) for p in pngs) / 1024
    lines = [
        f"### Uploads of 512x512 PNGs to moto S3 on loopback ({count} per run, {mean_kb:.0f} KB)",
        "",
        "Each upload: SHA-256 + MD5 on the client, PUT with Content-MD5 and x-amz-checksum-sha256,",
        "ETag check of the reply. Image: gradient + Gaussian noise (sigma 3).",
        "",
        "| mode | uploads/s | MB/s |",
        "|---|---|---|",
    ]
    # A ``moto_server`` process of its own: serving S3 must not compete for this process's GIL.
    with (
        swapped_environ(aws_test_env("/nonexistent")),
        MotoServer(own_process=True) as server,
    ):
        store = open_store("s3://bench/outputs", endpoint_url=server.url, region="us-east-1")
        store.ensure_bucket()
        upload_all(store, pngs, 8, None)  # warm the connection pool
        modes: list[tuple[str, UploadPool | None]] = [("serial (caller's thread)", None)]
        modes += [(f"UploadPool, {n} threads", UploadPool(max_workers=n)) for n in (4, 8)]
        for label, pool in modes:
            rate = upload_all(store, pngs, count, pool)
            lines.append(f"| {label} | **{rate:.1f}** | {rate * mean_kb / 1024:.1f} |")
            if pool is not None:
                pool.close()
    return lines


def machine(admin_url: str) -> str:
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    pg = postgres_version(admin_url)
    import sqlite3

    return (
        f"{os.cpu_count()} vCPUs ({cpu_model()}), {memory:.0f} GiB RAM, {platform.system()} "
        f"{platform.release()}; Python {platform.python_version()}, PostgreSQL {pg} (default "
        f"config, same machine), SQLite {sqlite3.sqlite_version}; load average before the run: "
        f"{os.getloadavg()[0]:.1f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pg-admin-url", default=PG_ADMIN_URL)
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--count-rows", type=int, default=1_000_000)
    parser.add_argument("--uploads", type=int, default=200)
    parser.add_argument("--only", choices=["inserts", "counts", "uploads"])
    args = parser.parse_args()

    report = ["## Storage", "", f"Machine: {machine(args.pg_admin_url)}.", ""]
    sections = {
        "inserts": lambda: bench_inserts(args.pg_admin_url, args.jobs),
        "counts": lambda: bench_counts(args.pg_admin_url, args.count_rows),
        "uploads": lambda: bench_uploads(args.uploads),
    }
    for name, section in sections.items():
        if args.only in (None, name):
            print(f"running {name} ...", file=sys.stderr)
            report += section() + [""]
    report.append(f"Load average after the run: {os.getloadavg()[0]:.1f}.")
    print("\n".join(report))


if __name__ == "__main__":
    main()
