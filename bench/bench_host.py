"""Host cost per 512 px image on the whole path a worker takes outside the sampler (claim,
encode, upload to S3 over HTTP, record in PostgreSQL), before and after issue 20, in one run:
CPU of the worker process, GIL-held time sampled with py-spy, and what each part costs; the
upload clients and the encoders side by side; images/s with 16 upload threads; Redis bytes per
waiting job.

    .venv/bin/pip install -c constraints/lock.txt -e ".[test,bench]"    # py-spy, awscrt, obstore
    .venv/bin/python bench/bench_host.py [--images 256] [--rounds 2] [--out FILE.md]

The path: for each delivery of 16 jobs, the worker's own objects do the work: ``Claims``
(``find_suspects``, then ``claim_jobs`` + ``load_jobs`` in one transaction), ``Recorder.upload``
on an upload pool of 8 threads (encode, then ``S3Store.put``), ``Recorder.record`` (one
``mark_batch_succeeded``), and the ``SubmissionFinisher``. In place of sampling, every job's
pixels are one stored 512x512 picture (``--image``, else a photo-like gradient with grain), in
the (B, H, W, 3) uint8 host buffer the sampler hands over. The S3 endpoint is moto in its own
process on loopback and the database a throwaway one on the local PostgreSQL: their CPU is
theirs, not the worker's (moto's is reported beside the throughput). "Before" is today's path
as it was: boto3 ``put_object`` (``TodaysS3Store``) and Pillow's JPEG encoder.

CPU is ``time.process_time`` of this process (every thread, native ones included); a part's CPU
is the CPU clock of the thread that runs it, read around it (claim and record on the delivery
thread, encode and upload on the pool's threads, the finisher on its own), and "other" the rest
(the pool's hand-offs, the delivery loop, the garbage collector). GIL-held is
``bench/_gil_sampler.py``: py-spy samples at 200 Hz which thread holds the GIL; GIL ms/image is
samples / 200 / images, split into the same parts by the frames on the sampled stacks. It is
wall time: a thread holding the GIL while the OS runs something else on its core still holds it,
so on a loaded machine it can exceed the CPU time of the same code.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._gil_sampler import Sampled, part_by_frames  # noqa: E402
from bench._upload_clients import TodaysS3Store, clients  # noqa: E402

SIZE = 512
DELIVERY = 16

PARTS = part_by_frames({
    "claim": ("claim_delivery (",),
    "encode": ("encode_pixels (",),
    "upload": ("S3Store.put (",),
    "record": ("Recorder.record (",),
    "finish": ("SubmissionFinisher._loop (",),
})  # fmt: skip
"""The parts of the path, by the frames on a sampled stack; "other" is the rest (the pool's
hand-offs, the delivery loop, the garbage collector)."""


def picture(path: str | None) -> np.ndarray:
    if path:
        from PIL import Image

        return np.asarray(Image.open(path).convert("RGB").resize((SIZE, SIZE)))
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:SIZE, 0:SIZE]
    base = np.stack([x // 2, y // 2, (x + y) // 4], -1) + 40 * np.sin(x / 23.0)[..., None]
    return np.clip(base + rng.normal(0, 6, (SIZE, SIZE, 3)), 0, 255).astype(np.uint8)


def pillow_bytes(pixels: np.ndarray, fmt: str, **options: Any) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels)).save(buffer, format=fmt, **options)
    return buffer.getvalue()


def pillow_jpeg(pixels: np.ndarray, quality: int) -> bytes:
    """Today's JPEG encoder (before issue 20), for the baseline."""
    return pillow_bytes(pixels, "JPEG", quality=quality)


def per_call(fn: Callable[[], object], calls: int, threads: int = 2) -> dict[str, float]:
    """CPU and GIL-held ms per call of ``fn`` run ``calls`` times on ``threads`` threads."""
    fn()
    with ThreadPoolExecutor(threads) as pool:
        cpu = time.process_time()
        list(pool.map(lambda _: fn(), range(calls)))
        cpu = time.process_time() - cpu
        with Sampled(gil=True) as gil:
            list(pool.map(lambda _: fn(), range(calls)))
    return {"cpu_ms": cpu / calls * 1000, "gil_ms": gil.seconds / calls * 1000}


# -- encoders ---------------------------------------------------------------------------------


def encoders(pixels: np.ndarray) -> list[str]:
    from worker.imaging import encode_image

    def psnr(data: bytes) -> float:
        from PIL import Image

        decoded = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.float64)
        return 10 * np.log10(255**2 / np.mean((decoded - pixels) ** 2))

    cases: dict[str, tuple[Callable[[], bytes], int]] = {
        "Pillow PNG level 1": (lambda: pillow_bytes(pixels, "PNG", compress_level=1), 40),
        "PNG, numpy Up + ISA-L (ours)": (lambda: encode_image(pixels, "png").data, 200),
        "Pillow JPEG q90 (before)": (lambda: pillow_jpeg(pixels, 90), 400),
        "simplejpeg q90 (ours)": (lambda: encode_image(pixels, "jpeg").data, 400),
        "WebP q90 method 0 (Pillow, ours)": (lambda: encode_image(pixels, "webp").data, 40),
    }
    lines = ["| encoder (512x512, 2 threads) | CPU ms | GIL-held ms | KiB | PSNR dB |",
             "| --- | --- | --- | --- | --- |"]  # fmt: skip
    for name, (fn, calls) in cases.items():
        cost, data = per_call(fn, calls), fn()
        quality = "lossless" if "PNG" in name else f"{psnr(data):.2f}"
        lines.append(f"| {name} | {cost['cpu_ms']:.2f} | {cost['gil_ms']:.2f} | "
                     f"{len(data) / 1024:.0f} | {quality} |")  # fmt: skip
    from PIL import Image

    ours, pillows = (Image.open(io.BytesIO(data)) for data in (
        encode_image(pixels, "jpeg").data, pillow_jpeg(pixels, 90)))  # fmt: skip
    same_tables = ours.quantization == pillows.quantization
    a, b = (np.asarray(image, dtype=np.float64) for image in (ours, pillows))
    lines += ["", f"simplejpeg vs Pillow at q90: PSNR between the two decodes "
              f"{10 * np.log10(255**2 / np.mean((a - b) ** 2)):.1f} dB, same quantization "
              f"tables: {same_tables}."]  # fmt: skip
    return lines


# -- upload clients ----------------------------------------------------------------------------


def upload_clients(endpoint: str, data: bytes, sha256: str, puts: int) -> list[str]:
    import boto3

    bucket = f"bench-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket=bucket)
    lines = [f"| client ({len(data) // 1024} KiB PNG, 8 threads) | CPU ms/PUT | GIL-held ms/PUT | "
             "PUT/s |", "| --- | --- | --- | --- |"]  # fmt: skip
    for name, put in clients(endpoint, bucket, data, sha256).items():
        if isinstance(put, str):
            lines.append(f"| {name} | {put} | | |")
            continue
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(put, [f"warm/{i}.png" for i in range(16)]))
            cpu, wall = time.process_time(), time.perf_counter()
            list(pool.map(put, [f"a/{i}.png" for i in range(puts)]))
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
            with Sampled(gil=True) as gil:
                list(pool.map(put, [f"b/{i}.png" for i in range(puts)]))
        lines.append(f"| {name} | {cpu / puts * 1000:.2f} | {gil.seconds / puts * 1000:.2f} | "
                     f"{puts / wall:.0f} |")  # fmt: skip
    return lines


# -- the whole path ----------------------------------------------------------------------------


class WholePath:
    """The worker's host path over a real PostgreSQL database and S3 endpoint."""

    def __init__(self, database_url: str, endpoint: str, pixels: np.ndarray) -> None:
        import torch

        from storage.db import make_engine
        from worker.sampler import HostImages

        self.engine = make_engine(database_url)
        self.endpoint = endpoint
        self.bucket = f"bench-path-{uuid.uuid4().hex[:8]}"
        # The sampler's output for one delivery: (B, H, W, 3) uint8, contiguous, in host memory.
        batch = np.ascontiguousarray(np.broadcast_to(pixels, (DELIVERY, *pixels.shape)))
        self.host = HostImages(torch.from_numpy(batch))

    def run(self, fmt: str, *, before: bool, images: int, threads: int,
            sampler: Sampled | None = None, transport: str = "auto") -> dict[str, Any]:  # fmt: skip
        """Claim, encode, upload and record ``images`` new jobs: CPU (and CPU by part) per image,
        and images/s. Each part's CPU is its threads' own CPU clock read around it (not in a run
        that ``sampler`` samples)."""
        import worker.imaging
        import worker.recording
        from core.jobspec import JobSpec, ParsedJob
        from storage import jobs as job_store
        from storage.db import session_scope
        from storage.s3 import S3Store
        from storage.submissions import create_submission, insert_jobs, job_id_for
        from storage.uploads import UploadPool
        from worker.batch import BatchReport
        from worker.claiming import Claims
        from worker.finisher import SubmissionFinisher
        from worker.metrics import WorkerMetrics
        from worker.recording import Recorder
        from worker.rendering import Rendered

        quality = None if fmt == "png" else 90
        with session_scope(self.engine) as session:
            ref = create_submission(session, source="bench", defaults={}, job_count=images)
            spec = JobSpec(prompt="a replayed photo", seed=0, model="bench/model", height=SIZE,
                           width=SIZE, image_format=fmt, image_quality=quality)  # fmt: skip
            insert_jobs(session, ref.id, [ParsedJob(spec, 1, i) for i in range(images)])
        ids = [job_id_for(ref.id, i) for i in range(images)]
        parts: dict[str, float] = dict.fromkeys(("claim", "encode", "upload", "record"), 0.0)
        lock = threading.Lock()

        def timed(part: str, fn: Callable[..., Any]) -> Callable[..., Any]:
            if sampler is not None:
                # Not while the GIL is sampled: a thread's clock is read by a system call, and the
                # kernel preempts a thread on its way out of one, GIL and all, when cores are busy.
                return fn

            def run_timed(*args: Any, **kwargs: Any) -> Any:
                started = time.thread_time()
                try:
                    return fn(*args, **kwargs)
                finally:
                    with lock:
                        parts[part] += time.thread_time() - started

            return run_timed

        store = (TodaysS3Store if before else S3Store)(
            self.bucket,
            "path",
            endpoint_url=self.endpoint,
            region="us-east-1",
            transport=transport,  # type: ignore[arg-type]
        )
        store.ensure_bucket()
        store.put = timed("upload", store.put)  # type: ignore[method-assign]
        settings = {"record_timeout_s": 30.0}
        claims = Claims(self.engine, worker_name="bench", publish=lambda j, s: None,
                        stuck_after_s=30, **settings)  # fmt: skip
        finisher = SubmissionFinisher(self.engine, **settings)
        finisher_clock = time.pthread_getcpuclockid(finisher._thread.ident or 0)
        saved = worker.imaging.jpeg_bytes, worker.recording.encode_pixels
        if before:
            worker.imaging.jpeg_bytes = pillow_jpeg
        worker.recording.encode_pixels = timed("encode", worker.recording.encode_pixels)
        try:
            with UploadPool(threads) as pool:
                recorder = Recorder(self.engine, store, pool, worker_name="bench",
                                    publish=lambda j, s: None, max_attempts=3,
                                    metrics=WorkerMetrics.disabled(), **settings)  # fmt: skip

                def claim_delivery(chunk: list[str], report: BatchReport) -> list[Any]:
                    suspects = claims.find_suspects(chunk)
                    assert not suspects
                    return claims.claim(chunk, job_store.Owner("bench", report.batch_id))

                claim = timed("claim", claim_delivery)
                record = timed("record", recorder.record)

                def deliveries() -> None:
                    for start in range(0, images, DELIVERY):
                        report = BatchReport(batch_id=uuid.uuid4().hex[:16])
                        jobs = claim(ids[start : start + DELIVERY], report)
                        pending = [(r, recorder.upload(r)) for r in (
                            Rendered(job, self.host, i, 0.1, 0.01, len(jobs))
                            for i, job in enumerate(jobs))]  # fmt: skip
                        record(pending, report)
                        claims.release_hold(jobs)
                        finisher.finish([ref.id])
                        assert len(report.succeeded) == len(jobs) == DELIVERY, report
                    finisher.flush()

                finish = time.clock_gettime(finisher_clock)
                cpu, wall = time.process_time(), time.perf_counter()
                if sampler is None:
                    deliveries()
                else:
                    with sampler:
                        deliveries()
                cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
                parts["finish"] = time.clock_gettime(finisher_clock) - finish
        finally:
            worker.imaging.jpeg_bytes, worker.recording.encode_pixels = saved
            finisher.close()
        parts["other"] = cpu - sum(parts.values())
        return {"cpu_ms": cpu / images * 1000, "images_per_s": images / wall,
                "cpu_parts": {k: v / images * 1000 for k, v in parts.items()}}  # fmt: skip


def measure_path(path: WholePath, fmt: str, before: bool, images: int,
                 transport: str = "auto") -> dict[str, Any]:  # fmt: skip
    """One configuration: CPU, CPU by part and images/s (no sampler), then GIL by part."""
    plain = path.run(fmt, before=before, images=images, threads=8, transport=transport)
    gil = Sampled(gil=True)
    path.run(fmt, before=before, images=images, threads=8, sampler=gil, transport=transport)
    gil_parts = {k: v / gil.rate_hz / images * 1000 for k, v in gil.by_part(PARTS).items()}
    return {**plain, "gil_ms": gil.seconds / images * 1000, "gil_parts": gil_parts,
            "sampler_behind": gil.behind}  # fmt: skip


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of another process (the S3 endpoint), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def throughput(path: WholePath, moto_pid: int, data: bytes, sha256: str,
               images: int) -> list[str]:  # fmt: skip
    """16 upload threads: images/s of the whole path and of the uploads alone, and what the S3
    endpoint's process spent per image meanwhile."""
    from storage.s3 import S3Store

    lines = ["| 16 upload threads, 512 px PNG | images/s | worker CPU ms/image | "
             "S3 endpoint (moto) CPU ms/image |", "| --- | --- | --- | --- |"]  # fmt: skip
    moto = process_cpu_s(moto_pid)
    result = path.run("png", before=False, images=images, threads=16)
    moto = process_cpu_s(moto_pid) - moto
    lines.append(f"| whole path (claim, encode, upload, record) | {result['images_per_s']:.0f} | "
                 f"{result['cpu_ms']:.2f} | {moto / images * 1000:.2f} |")  # fmt: skip
    store = S3Store(path.bucket, "uploads", endpoint_url=path.endpoint, region="us-east-1")
    metadata = {"job-id": "x", "seed": "0"}
    with ThreadPoolExecutor(16) as pool:
        put = lambda i: store.put(f"{i}.png", data, content_type="image/png",  # noqa: E731
                                  sha256=sha256, metadata=metadata)  # fmt: skip
        list(pool.map(put, range(32)))
        moto, cpu, wall = process_cpu_s(moto_pid), time.process_time(), time.perf_counter()
        list(pool.map(put, range(images)))
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        moto = process_cpu_s(moto_pid) - moto
    lines.append(f"| uploads alone (encoded once) | {images / wall:.0f} | "
                 f"{cpu / images * 1000:.2f} | {moto / images * 1000:.2f} |")  # fmt: skip
    return lines


def redis_bytes_per_job(url: str, jobs: int = 1000) -> float | None:
    import redis

    from core.settings import Settings
    from taskqueue.app import make_celery, publish_jobs

    client = redis.Redis.from_url(url)
    try:
        client.ping()
    except redis.RedisError:
        return None
    client.flushdb()
    app = make_celery(Settings(broker_url=url, home=Path(tempfile.mkdtemp())))
    ids = [f"0b8e1c1e-0000-5000-8000-{i:012d}" for i in range(jobs)]
    publish_jobs(app, [(i, "senmaonk/loopfree-sd1.5", 5) for i in ids])
    (key,) = [k for k in client.scan_iter() if client.type(k) == b"list"]
    per_job = client.memory_usage(key, samples=0) / jobs
    client.flushdb()
    return per_job


def path_table(results: dict[str, list[dict[str, Any]]]) -> list[str]:
    parts = ("claim", "encode", "upload", "record", "finish", "other")
    lines = ["| path | format | CPU ms/image | GIL-held ms/image (min-max) | images/s (8 thr.) | "
             + " | ".join(f"{p} CPU / GIL" for p in parts) + " |",
             "| --- " * (5 + len(parts)) + "|"]  # fmt: skip
    for label, runs in results.items():

        def median(key: str, runs: list[dict[str, Any]] = runs) -> float:
            return statistics.median(run[key] for run in runs)

        def part(kind: str, name: str, runs: list[dict[str, Any]] = runs) -> float:
            return statistics.median(run[kind].get(name, 0.0) for run in runs)

        when, fmt = label.split(" ")
        gil = sorted(run["gil_ms"] for run in runs)
        lines.append(f"| {when} | {fmt} | {median('cpu_ms'):.2f} | {median('gil_ms'):.2f} "
                     f"({gil[0]:.2f}-{gil[-1]:.2f}) | "
                     f"{median('images_per_s'):.0f} | " + " | ".join(
                         f"{part('cpu_parts', p):.2f} / {part('gil_parts', p):.2f}" for p in parts)
                     + " |")  # fmt: skip
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", help="a photo to use instead of the synthetic picture")
    parser.add_argument("--images", type=int, default=256, help="jobs per measured run")
    parser.add_argument("--rounds", type=int, default=4, help="alternating rounds per config")
    parser.add_argument("--formats", default="png,jpeg", help="formats of the whole path "
                        "(webp: ~20 images/s, slow to measure)")  # fmt: skip
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/11")
    parser.add_argument("--out")
    args = parser.parse_args()

    from tests.harness import MotoServer, aws_test_env, swapped_environ, throwaway_database
    from worker.imaging import encode_image

    pixels = picture(args.image)
    png = encode_image(pixels, "png")
    digest = hashlib.sha256(pixels.tobytes()).hexdigest()[:12]
    print(f"image sha256 {digest}, load {os.getloadavg()[0]:.1f}", flush=True)
    lines = ["## Encoders", "", *encoders(pixels)]
    print("\n".join(lines), flush=True)
    with (
        swapped_environ(aws_test_env("/nonexistent")),
        MotoServer(own_process=True) as moto,
        throwaway_database(prefix="loopfree_bench_host") as database_url,
    ):
        clients_table = upload_clients(moto.url, png.data, png.sha256, args.images)
        print("\n".join(clients_table), flush=True)
        path = WholePath(database_url, moto.url, pixels)
        for when in ("before", "after"):  # first statements, connections, clients: not measured
            path.run("jpeg", before=when == "before", images=4 * DELIVERY, threads=8)
        results: dict[str, list[dict[str, Any]]] = {}
        # (label, format, transport): "after-signed" is the store's fallback transport.
        configs = [
            ("before", "png", "auto"), ("after", "png", "auto"), ("after-signed", "png", "signed"),
            ("before", "jpeg", "auto"), ("after", "jpeg", "auto"),
            ("before", "webp", "auto"), ("after", "webp", "auto"),
        ]  # fmt: skip
        configs = [config for config in configs if config[1] in args.formats.split(",")]
        for round_ in range(args.rounds):
            for when, fmt, transport in configs if round_ % 2 == 0 else configs[::-1]:
                run = measure_path(path, fmt, when == "before", args.images, transport)
                results.setdefault(f"{when} {fmt}", []).append(run)
                print(f"round {round_ + 1}: {when} {fmt}: {run['cpu_ms']:.2f} ms CPU, "
                      f"{run['gil_ms']:.2f} ms GIL, {run['images_per_s']:.0f}/s, "
                      f"load {os.getloadavg()[0]:.1f}", flush=True)  # fmt: skip
        assert moto._process is not None
        flow = throughput(path, moto._process.pid, png.data, png.sha256, 2 * args.images)
        path.engine.dispose()
    per_job = redis_bytes_per_job(args.redis)
    lines += ["", "## Upload clients", "", *clients_table, "", "## The whole path", "",
              *path_table(results), "", "## Throughput", "", *flow, "",
              f"Redis memory per waiting job: {per_job:.0f} bytes" if per_job else
              "Redis not reachable: bytes per job not measured",
              "", f"load average at the end: {os.getloadavg()[0]:.1f}"]  # fmt: skip
    text = "\n".join(lines)
    print(text)
    if args.out:
        raw = json.dumps(results, indent=1)
        Path(args.out).write_text(f"{text}\n\n```json\n{raw}\n```\n")


if __name__ == "__main__":
    main()
