"""Host CPU per 512 px image outside the sampler: encoders side by side, the worker's real
store + record path (a REPLAY of one stored image in place of sampling), images/s of one worker
process on 1 and 2 cores, and Redis bytes per waiting job.

    .venv/bin/python bench/bench_host.py [--image photo.png] [--images 256] [--out FILE.md]

Replay: every "rendered" image is the same 512x512 picture (``--image``, else a photo-like
gradient with grain), handed to ``worker.recording.Recorder`` exactly as the sampler would hand
it (a contiguous uint8 tensor); encoding, the upload pool, the local store (fsync + rename) and
the one-statement record into SQLite all run for real. CPU is ``time.process_time`` (all threads)
per image. "GIL-held" is an upper bound: process CPU minus the CPU of the compressor calls that
release the GIL (ISA-L deflate, libjpeg, libwebp), measured alone on the same image.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SIZE = 512


def picture(path: str | None) -> np.ndarray:
    if path:
        from PIL import Image

        return np.asarray(Image.open(path).convert("RGB").resize((SIZE, SIZE)))
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:SIZE, 0:SIZE]
    base = np.stack([x // 2, y // 2, (x + y) // 4], -1) + 40 * np.sin(x / 23.0)[..., None]
    return np.clip(base + rng.normal(0, 6, (SIZE, SIZE, 3)), 0, 255).astype(np.uint8)


def cpu_ms(fn, repeats: int = 20) -> tuple[float, int]:
    fn()
    started = time.process_time()
    for _ in range(repeats):
        size = len(fn())
    return (time.process_time() - started) / repeats * 1000, size


def encoders(pixels: np.ndarray) -> list[tuple[str, float, float]]:
    import io

    from isal import isal_zlib
    from PIL import Image

    from worker.imaging import encode_image

    def pillow(fmt: str, **options: object):
        def run() -> bytes:
            buffer = io.BytesIO()
            Image.fromarray(pixels).save(buffer, format=fmt, **options)
            return buffer.getvalue()

        return run

    def up_filtered() -> np.ndarray:
        rows = pixels.reshape(SIZE, SIZE * 3)
        out = np.empty((SIZE, SIZE * 3 + 1), np.uint8)
        out[:, 0] = 2
        out[0, 1:] = rows[0]
        np.subtract(rows[1:], rows[:-1], out=out[1:, 1:])
        return out

    cases = {
        "Pillow PNG level 0": pillow("PNG", compress_level=0),
        "Pillow PNG level 1": pillow("PNG", compress_level=1),
        "Pillow PNG level 6": pillow("PNG", compress_level=6),
        "numpy Up + zlib level 1": lambda: zlib.compress(up_filtered(), 1),
        "numpy Up + ISA-L level 1 (ours, whole PNG)": lambda: encode_image(pixels, "png").data,
        "Up + ISA-L deflate (GIL released)": lambda: isal_zlib.compress(up_filtered(), 1),
        "Pillow JPEG q95": pillow("JPEG", quality=95),
        "Pillow JPEG q90 (ours)": lambda: encode_image(pixels, "jpeg").data,
        "WebP q95 method 0": pillow("WEBP", quality=95, method=0),
        "WebP q90 method 0 (ours)": lambda: encode_image(pixels, "webp").data,
    }
    return [(name, *cpu_ms(fn)) for name, fn in cases.items()]


def replay(pixels: np.ndarray, fmt: str, images: int, threads: int) -> dict[str, float]:
    """The worker's store + record path for ``images`` jobs, in deliveries of 16."""
    import torch

    from core.jobspec import JobSpec, ParsedJob
    from migrations.runner import upgrade
    from storage import jobs as job_store
    from storage.db import make_engine, session_scope
    from storage.local import LocalStore
    from storage.queries import load_jobs
    from storage.submissions import create_submission, insert_jobs, job_id_for
    from storage.uploads import UploadPool
    from worker.batch import BatchReport
    from worker.metrics import WorkerMetrics
    from worker.recording import Recorder
    from worker.rendering import Rendered
    from worker.sampler import HostImages

    home = Path(tempfile.mkdtemp(prefix="bench-host-"))
    url = f"sqlite:///{home / 'db.sqlite'}"
    upgrade(url)
    engine = make_engine(url)
    quality = None if fmt == "png" else 90
    with session_scope(engine) as session:
        ref = create_submission(session, source="bench", defaults={}, job_count=images)
        spec = JobSpec(prompt="a replayed photo", seed=0, model="bench/model", height=SIZE,
                       width=SIZE, image_format=fmt, image_quality=quality)  # fmt: skip
        insert_jobs(session, ref.id, [ParsedJob(spec, 1, i) for i in range(images)])
    ids = [job_id_for(ref.id, i) for i in range(images)]
    tensor = torch.from_numpy(pixels.copy())
    store = LocalStore(home / "outputs")
    with UploadPool(threads) as pool:
        recorder = Recorder(engine, store, pool, worker_name="bench", publish=lambda j, s: None,
                            max_attempts=3, record_timeout_s=30, metrics=WorkerMetrics.disabled())
        cpu0, wall0, main0 = time.process_time(), time.perf_counter(), time.thread_time()
        for start in range(0, images, 16):
            chunk = ids[start : start + 16]
            report = BatchReport(batch_id=f"b{start}")
            with session_scope(engine) as session:
                job_store.claim_jobs(session, chunk, worker="bench", batch_id=report.batch_id,
                                     batch_size=len(chunk))
                jobs = load_jobs(session, chunk)
            host = HostImages(tensor.expand(len(jobs), -1, -1, -1).contiguous())
            pending = [(r, recorder.upload(r)) for r in
                       (Rendered(job, host, i, 0.1, 0.01, len(jobs)) for i, job in enumerate(jobs))]
            recorder.record(pending, report)
            assert len(report.succeeded) == len(chunk), report
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        main = time.thread_time() - main0
    engine.dispose()
    return {"cpu_ms": cpu / images * 1000, "main_thread_ms": main / images * 1000,
            "images_per_s": images / wall}  # fmt: skip


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image")
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/11")
    parser.add_argument("--out")
    args = parser.parse_args()
    pixels = picture(args.image)
    print(f"image sha256 {hashlib.sha256(pixels.tobytes()).hexdigest()[:12]}, "
          f"load {os.getloadavg()[0]:.1f}")  # fmt: skip
    lines = ["| encoder (512x512) | CPU ms | KiB |", "| --- | --- | --- |"]
    table = encoders(pixels)
    lines += [f"| {name} | {ms:.1f} | {size / 1024:.0f} |" for name, ms, size in table]
    released = {"png": table[5][1], "jpeg": table[7][1], "webp": table[9][1]}
    lines += ["", "| format | cores | CPU ms/image (all threads) | of it delivery thread | "
              "GIL-held upper bound | outside encoding | images/s |", "| --- | --- | --- | --- | "
              "--- | --- | --- |"]  # fmt: skip
    encode_ms = {"png": table[4][1], "jpeg": table[7][1], "webp": table[9][1]}
    results = {}
    for fmt in ("png", "jpeg", "webp"):
        for cores in (1, 2):
            os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[:cores]))
            r = replay(pixels, fmt, args.images, threads=8)
            results[f"{fmt}-{cores}"] = r
            lines.append(
                f"| {fmt} | {cores} | {r['cpu_ms']:.1f} | {r['main_thread_ms']:.1f} | "
                f"{r['cpu_ms'] - released[fmt]:.1f} | {r['cpu_ms'] - encode_ms[fmt]:.1f} | "
                f"{r['images_per_s']:.0f} |"
            )
        os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))
    per_job = redis_bytes_per_job(args.redis)
    lines += ["", f"Redis memory per waiting job: {per_job:.0f} bytes" if per_job else
              "Redis not reachable: bytes per job not measured"]  # fmt: skip
    text = "\n".join(lines)
    print(text)
    if args.out:
        raw = json.dumps(results, indent=1)
        Path(args.out).write_text(f"{text}\n\n```json\n{raw}\n```\n")


if __name__ == "__main__":
    main()
