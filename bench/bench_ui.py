"""Web view benchmark: serving the first page of a 10,000-job submission (target < 300 ms).

    .venv/bin/python bench/bench_ui.py                          # SQLite and PostgreSQL
    .venv/bin/python bench/bench_ui.py --databases sqlite --requests 100

What is synthetic: the rows. One submission of ``--jobs`` jobs is bulk-inserted through
``storage.submissions`` and moved through ``storage.jobs`` the way workers move them: 95%
succeeded, 1% failed with an error, 1% running, the rest queued (so the page is "live"). The
first ``--images`` succeeded jobs get real PNGs (512 px, smooth random colour fields) in a local
folder store; the other succeeded rows point at images that do not exist (the page never fetches
them). What is real: the app (``status.web.app.create_app``) served by uvicorn on a loopback port,
requests over HTTP with httpx, in this process (client time is included; it is ~1 ms).

Prints a Markdown table: median and p95 over ``--requests`` sequential requests per page, after
three warm-up requests. PostgreSQL comes from ``tests/harness.py`` (a throwaway database).
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _machine import cpu_model, load_average, postgres_version  # noqa: E402

from core.settings import Settings  # noqa: E402
from migrations.runner import upgrade  # noqa: E402
from status.web.app import create_app  # noqa: E402
from storage import jobs as transitions  # noqa: E402
from storage.db import make_engine, session_scope  # noqa: E402
from storage.stores import open_store  # noqa: E402
from storage.submissions import create_submission, insert_jobs, job_id_for  # noqa: E402
from tests.harness import (  # noqa: E402
    PG_ADMIN_URL,
    free_port,
    parsed_jobs,
    throwaway_database,
    wait_until,
)
from tests.storage.helpers import mark_succeeded  # noqa: E402

TARGET_MS = 300.0
CHUNK = 1_000


def png(seed: int, size: int = 512) -> bytes:
    """A real 512 px PNG: a smooth random colour field (compresses like a picture, not noise)."""
    small = np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    image = Image.fromarray(small).resize((size, size), Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def populate(url: str, store_url: str, count: int, images: int) -> str:
    """One submission in the shapes described in the module docstring; returns its id."""
    engine = make_engine(url)
    store = open_store(store_url)
    store.ensure_bucket()
    with session_scope(engine) as session:
        ref = create_submission(session, source="bench-10k.txt", defaults={}, job_count=count)
        insert_jobs(
            session,
            ref.id,
            parsed_jobs(
                count,
                model="senmaonk/loopfree-sd1.5",
                size=512,
                prompt="a watercolour painting of a red fox in the snow, variation {position}",
                seed_step=7919,
            ),
            skip_existing=False,
        )
    ids = [job_id_for(ref.id, position) for position in range(count)]
    succeeded, failed, running = int(count * 0.95), count // 100, count // 100
    claimed = ids[: succeeded + failed + running]
    for start in range(0, len(claimed), CHUNK):
        chunk = claimed[start : start + CHUNK]
        with session_scope(engine) as session:
            transitions.claim_jobs(
                session, chunk, worker="bench-worker", batch_id=f"b{start}", batch_size=16
            )
            for offset, job_id in enumerate(chunk):
                index = start + offset
                if index < succeeded:
                    key = store.key_for(ref.id, job_id)
                    uri = store.uri_for(key)
                    size, digest = 0, f"{index:064x}"
                    if index < images:
                        stored = store.put_png(key, png(index), metadata={})
                        uri, size, digest = stored.uri, stored.size, stored.sha256
                    result = transitions.JobResult(uri, size, digest, 0.5, 0.02, 0.5)
                    mark_succeeded(session, job_id, result)
                elif index < succeeded + failed:
                    transitions.mark_failed(session, job_id, "sampler failed: synthetic error")
    engine.dispose()
    return ref.id


@contextmanager
def serving(settings: Settings) -> Iterator[str]:
    import uvicorn

    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started, timeout=30, what="the web view to listen")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)


def measure(
    client: httpx.Client, path: str, requests: int, *, warmups: int = 3
) -> dict[str, float]:
    """Median and p95 (ms) of ``requests`` sequential GETs of ``path``, after ``warmups``."""
    for _ in range(warmups):
        client.get(path).raise_for_status()
    samples = []
    for _ in range(requests):
        started = time.perf_counter()
        answer = client.get(path)
        samples.append((time.perf_counter() - started) * 1000)
        answer.raise_for_status()
    samples.sort()
    return {
        "median_ms": statistics.median(samples),
        "p95_ms": samples[min(len(samples) - 1, round(0.95 * (len(samples) - 1)))],
        "bytes": len(answer.content),
    }


def bench_database(name: str, url: str, args: argparse.Namespace) -> list[dict[str, object]]:
    with tempfile.TemporaryDirectory() as folder:
        store_url = (Path(folder) / "store").as_uri()
        started = time.perf_counter()
        submission = populate(url, store_url, args.jobs, args.images)
        print(
            f"{name}: {args.jobs:,} jobs ready in {time.perf_counter() - started:.1f}s",
            file=sys.stderr,
        )
        settings = Settings(home=Path(folder) / "home", database_url=url, storage_url=store_url)
        last = -(-args.jobs // 100)
        pages = {
            "submission page 1 (HTML, 100 tiles)": f"/submissions/{submission}",
            "submission page 1 (API, 100 jobs)": f"/api/submissions/{submission}/jobs",
            f"submission page {last} (HTML, the last)": f"/submissions/{submission}?page={last}",
            "failed jobs (HTML)": f"/submissions/{submission}?status=failed",
            "text filter (HTML, scans the prompts)": f"/submissions/{submission}?q=variation 12",
            "submissions list (HTML)": "/",
            "submission summary (API)": f"/api/submissions/{submission}",
        }
        rows = []
        with serving(settings) as base, httpx.Client(base_url=base, timeout=60) as client:
            for label, path in pages.items():
                rows.append(
                    {"database": name, "page": label, **measure(client, path, args.requests)}
                )
            thumbs = [f"/jobs/{job_id_for(submission, p)}/thumb.webp" for p in range(args.images)]
            started = time.perf_counter()
            for path in thumbs:
                client.get(path).raise_for_status()
            made = (time.perf_counter() - started) * 1000 / len(thumbs)
            first = "thumbnail, first request (512 px PNG -> 256 px WebP), mean"
            rows.append({"database": name, "page": first, "median_ms": made, "p95_ms": None})
            cached = measure(client, thumbs[0], args.requests)
            rows.append({"database": name, "page": "thumbnail, cached", **cached})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--images", type=int, default=100, help="succeeded jobs with a real PNG")
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--databases", default="sqlite,postgresql")
    parser.add_argument("--pg-admin-url", default=PG_ADMIN_URL)
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    args = parser.parse_args()

    rows: list[dict[str, object]] = []
    load_before = load_average()
    for name in args.databases.split(","):
        if name == "sqlite":
            with tempfile.TemporaryDirectory() as folder:
                url = f"sqlite:///{folder}/bench.db"
                upgrade(url)
                rows += bench_database("SQLite", url, args)
        elif name == "postgresql":
            with throwaway_database(args.pg_admin_url, prefix="loopfree_bench_ui") as url:
                rows += bench_database(
                    f"PostgreSQL {postgres_version(args.pg_admin_url).split()[0]}", url, args
                )
        else:
            parser.error(f"unknown database {name!r}: use sqlite and/or postgresql")

    print(f"### Web view, one submission of {args.jobs:,} jobs ({args.requests} requests each)\n")
    print(f"{cpu_model()}; load average {load_before} before, {load_average()} after.\n")
    print("| database | page | median ms | p95 ms | bytes | < 300 ms |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        worst = row["p95_ms"] if row["p95_ms"] is not None else row["median_ms"]
        cells = [
            row["database"],
            row["page"],
            f"{row['median_ms']:.1f}",
            "–" if row["p95_ms"] is None else f"{row['p95_ms']:.1f}",
            f"{row.get('bytes', 0):,}",
            "yes" if worst < TARGET_MS else "no",
        ]
        print("| " + " | ".join(cells) + " |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
