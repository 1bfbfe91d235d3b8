"""Export benchmark: ``loopfree export`` of 10,000 images stored in S3 (moto), in each format.

    .venv/bin/python bench/bench_export.py                    # 10,000 images, 256 px, SQLite
    .venv/bin/python bench/bench_export.py --images 2000 --database postgresql

What is real: the S3 endpoint (``moto_server`` in its own process, over HTTP on loopback), the
database (SQLite file, or a throwaway PostgreSQL database), and every measured command, run as
its own ``loopfree`` process as a user runs it (interpreter start included). What is synthetic:
the rows and images. One submission of ``--images`` jobs is bulk-inserted through
``storage.submissions`` and moved to ``succeeded`` through ``storage.jobs``; each job's image is
a real PNG (``--size`` px, a smooth colour field with grain, ~130 KB at 256 px, 64 distinct ones
reused) uploaded to its job's key in the source bucket before the clock starts.

The baseline, in the same run on the same data: ``loopfree results ID --download DIR``, the way
to get the images out before ``export`` (one GET at a time, one file per image). The ceiling:
every image fetched 16 at a time by this process and dropped, what moto serves on this machine.
Each other row is one command; MB are of image bytes (10^6), shards/s counts the shards written.
Peak RSS is the exporting process's own (``getrusage``). Left out: network latency (moto is on
loopback, so S3's real round trips, which parallel fetches hide, are not in the figures) and
S3's own throughput. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _machine import cpu_model, load_average  # noqa: E402

from migrations.runner import upgrade  # noqa: E402
from storage import jobs as transitions  # noqa: E402
from storage.db import make_engine, session_scope  # noqa: E402
from storage.jobs import JobResult  # noqa: E402
from storage.objects import sha256_hex  # noqa: E402
from storage.stores import open_store  # noqa: E402
from storage.submissions import create_submission, insert_jobs, job_id_for  # noqa: E402
from tests.harness import (  # noqa: E402
    PG_ADMIN_URL,
    REPO_ROOT,
    MotoServer,
    aws_test_env,
    parsed_jobs,
    swapped_environ,
    throwaway_database,
)

CHUNK = 1_000
DISTINCT_IMAGES = 64
MAXRSS = re.compile(r"^MAXRSS (\d+)$", re.MULTILINE)


def png(seed: int, size: int) -> bytes:
    """A smooth random colour field with a little grain: compresses like a picture."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    field = np.asarray(Image.fromarray(small).resize((size, size), Image.Resampling.BICUBIC))
    grain = rng.integers(-12, 13, field.shape)
    pixels = np.clip(field.astype(np.int16) + grain, 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def populate(database_url: str, storage_url: str, endpoint: str, count: int, size: int) -> str:
    """One submission of ``count`` succeeded jobs with their images in the store."""
    engine = make_engine(database_url)
    store = open_store(storage_url, endpoint_url=endpoint, region="us-east-1")
    store.ensure_bucket()
    images = [png(seed, size) for seed in range(DISTINCT_IMAGES)]
    digests = [sha256_hex(image) for image in images]
    with session_scope(engine) as session:
        ref = create_submission(session, source="bench-export.jsonl", defaults={}, job_count=count)
        insert_jobs(
            session,
            ref.id,
            parsed_jobs(
                count, model="senmaonk/loopfree-sd1.5", size=size,
                prompt="a watercolour painting of a red fox in the snow, variation {position}",
                metadata=lambda position: {"batch": "nightly", "row": position},
            ),
            skip_existing=False,
        )  # fmt: skip

    def upload(position: int) -> tuple[str, JobResult]:
        job_id = job_id_for(ref.id, position)
        data = images[position % DISTINCT_IMAGES]
        stored = store.put(
            store.key_for(ref.id, job_id),
            data,
            content_type="image/png",
            sha256=digests[position % DISTINCT_IMAGES],
            metadata={},
        )
        return job_id, JobResult(stored.uri, stored.size, stored.sha256, 0.1, 0.01, 0.01)

    with ThreadPoolExecutor(16) as pool:
        for start in range(0, count, CHUNK):
            positions = range(start, min(start + CHUNK, count))
            results = list(pool.map(upload, positions))
            with session_scope(engine) as session:
                ids = [job_id for job_id, _ in results]
                transitions.claim_jobs(session, ids, worker="bench", batch_id=str(start),
                                       batch_size=len(ids))  # fmt: skip
                transitions.mark_batch_succeeded(session, results)
    engine.dispose()
    return ref.id


def run(args: list[str], env: dict[str, str]) -> tuple[float, int, str]:
    """``loopfree ARGS`` as its own process: (wall seconds, peak RSS in KB, stdout)."""
    program = (
        "import atexit, resource, sys\n"
        "atexit.register(lambda: print('MAXRSS', resource.getrusage(resource.RUSAGE_SELF)"
        ".ru_maxrss, file=sys.stderr))\n"
        "from loopfree.cli import main\n"
        f"sys.argv = ['loopfree', *{args!r}]\n"
        "main()\n"
    )
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", program], cwd=REPO_ROOT, env={**os.environ, **env},
        capture_output=True, text=True,
    )  # fmt: skip
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"loopfree {' '.join(args)} failed:\n{done.stdout}{done.stderr}")
    match = MAXRSS.search(done.stderr)
    return seconds, int(match.group(1)) if match else 0, done.stdout


def raw_gets(database_url: str, storage_url: str, endpoint: str, submission: str) -> float:
    """Seconds to GET every image of the submission, 16 at a time, keeping nothing: what the
    store can serve on this machine, the ceiling of any export from it."""
    from storage.selections import iter_selected

    engine = make_engine(database_url)
    uris = [job.image_uri for job in iter_selected(engine, submission)]
    engine.dispose()
    store = open_store(storage_url, endpoint_url=endpoint, region="us-east-1")
    started = time.perf_counter()
    with ThreadPoolExecutor(16) as pool:
        for _ in pool.map(lambda uri: len(store.get(uri)), uris):
            pass
    return time.perf_counter() - started


@contextmanager
def database(kind: str, folder: Path) -> Iterator[str]:
    if kind == "sqlite":
        url = f"sqlite:///{folder}/bench.db"
        upgrade(url)
        yield url
        return
    with throwaway_database(PG_ADMIN_URL, prefix="bench_export") as url:
        yield url


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--size", type=int, default=256, help="image side, px")
    parser.add_argument("--database", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    options = parser.parse_args()

    with (
        tempfile.TemporaryDirectory(prefix="bench-export-") as tmp,
        swapped_environ(aws_test_env(f"{tmp}/no-aws-config")),
        MotoServer(own_process=True) as moto,
        database(options.database, Path(tmp)) as url,
    ):
        folder = Path(tmp)
        source = f"s3://bench-src-{uuid.uuid4().hex[:8]}/images"
        dest_bucket = f"bench-dest-{uuid.uuid4().hex[:8]}"
        open_store(f"s3://{dest_bucket}", endpoint_url=moto.url, region="us-east-1").ensure_bucket()
        started = time.perf_counter()
        submission = populate(url, source, moto.url, options.images, options.size)
        print(f"populated {options.images} jobs in {time.perf_counter() - started:.0f} s",
              file=sys.stderr)  # fmt: skip
        env = {
            "LOOPFREE_HOME": str(folder / "home"),
            "LOOPFREE_DATABASE_URL": url,
            "LOOPFREE_STORAGE_URL": source,
            "LOOPFREE_S3_ENDPOINT_URL": moto.url,
            "LOOPFREE_S3_REGION": "us-east-1",
            "HF_HUB_OFFLINE": "1",
        }
        cases = [
            ("`results --download` (baseline)", ["results", submission, "--download",
                                                  str(folder / "download")]),
            ("webdataset -> folder", ["export", submission, str(folder / "wds")]),
            ("webdataset -> folder, --parallel 1", ["export", submission, str(folder / "wds1"),
                                                    "--parallel", "1"]),
            ("webdataset -> s3://", ["export", submission, f"s3://{dest_bucket}/wds"]),
            ("parquet -> folder", ["export", submission, str(folder / "pq"), "--format",
                                   "parquet"]),
            ("parquet -> s3://", ["export", submission, f"s3://{dest_bucket}/pq", "--format",
                                  "parquet"]),
            ("imagefolder -> folder", ["export", submission, str(folder / "if"), "--format",
                                       "imagefolder"]),
        ]  # fmt: skip
        rows = []
        megabytes = None
        seconds = raw_gets(url, source, moto.url, submission)
        ceiling = {"command": "ceiling: 16 parallel GETs, bytes dropped (in-process)",
                   "seconds": seconds, "images_per_s": options.images / seconds,
                   "shards_per_s": None, "peak_rss_mb": 0.0}  # fmt: skip
        for name, args in cases:
            seconds, rss_kb, stdout = run(args, env)
            if megabytes is None:  # the baseline downloads every image: count their bytes
                megabytes = sum(p.stat().st_size for p in (folder / "download").glob("*.png")) / 1e6
            shards = re.search(r"This run: (\d+) shard", stdout)
            rows.append({
                "command": name, "seconds": seconds, "images_per_s": options.images / seconds,
                "mb_per_s": megabytes / seconds,
                "shards_per_s": int(shards.group(1)) / seconds if shards else None,
                "peak_rss_mb": rss_kb / 1024,
            })  # fmt: skip
            print(f"{name}: {seconds:.1f} s", file=sys.stderr)
    ceiling["mb_per_s"] = megabytes / ceiling["seconds"]
    rows.append(ceiling)
    base = rows[0]["seconds"]
    print(
        f"\n{options.images:,} images of {options.size} px ({megabytes:.0f} MB of PNG), "
        f"{options.database}, moto_server on loopback; {cpu_model()}, load {load_average()}\n"
    )
    print("| command | s | images/s | MB/s | shards/s | vs baseline | peak RSS MB |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        shards = f"{row['shards_per_s']:.2f}" if row["shards_per_s"] is not None else "–"
        print(f"| {row['command']} | {row['seconds']:.1f} | {row['images_per_s']:.0f} | "
              f"{row['mb_per_s']:.1f} | {shards} | {base / row['seconds']:.2f}x | "
              f"{row['peak_rss_mb']:.0f} |")  # fmt: skip
    if options.json:
        options.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
