"""Benchmark of the queue path on real services: submit, end-to-end overhead, batch fill.

Everything runs on this machine against real servers: PostgreSQL and Redis on loopback, a moto S3
server (HTTP on loopback, in this process) and real ``loopfree worker`` child processes on the CPU.

1. **Submit**: ``submit_file`` on a 100,000-line ``.txt`` file into a fresh PostgreSQL database and
   Redis, end to end (parse + insert + publish), with its stages timed inside the same call
   (``_queue_submit``), and what-if timings of the slow stages done another way. Target:
   >= 10,000 jobs/s.
2. **Overhead**: images/s through Redis + PostgreSQL + S3 + a worker process, from the end of the
   first recorded batch to the end of the last (model load and warm-up excluded), divided by the
   raw sampler's images/s (``encode_text`` + ``TiUESampler.sample`` back to back at the same batch
   size, on the same model, in this process, measured before AND after the worker run, so a change
   in the machine's load shows). Target >= 0.90, goal 0.97. Two models: ``tiny`` (a batch in
   milliseconds: the ratio measures per-job overhead) and ``small`` (a few million parameters at
   128 px: a batch costs CPU-seconds, as sampling does on a GPU).
3. **Batch fill**: mean ``batch_size`` per job recorded in the database, and fill = that / max
   batch, for the burst of (2) and for a steady stream of jobs published one at a time at a
   fraction of the burst's throughput, with ``max_wait_ms`` stated.

CPU caveat: on a CPU worker, PNG encoding, S3 uploads (boto3), database writes and Celery share
the cores that sample; on a GPU worker they run on the host's cores beside the GPU. The raw
sampler has the cores to itself, so the ratio here is a lower bound of what a GPU worker sees.

    .venv/bin/python bench/bench_queue.py                        # everything, ~8-9 min on 2 cores
    .venv/bin/python bench/bench_queue.py --jobs 10000 --models tiny --no-whatif   # quick look
    .venv/bin/python bench/bench_queue.py --json /tmp/queue.json --torch-threads 1
    .venv/bin/python bench/bench_queue.py --jobs 0 --whatif-batching   # + bursts batched as before
    .venv/bin/python bench/bench_queue.py --jobs 0 --models tiny --whatif-batching   # fill, ~4 min

Every database, Redis queue, bucket and model folder it makes is removed again.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
for path in (str(BENCH.parent), str(BENCH)):  # run as a script from anywhere
    if path not in sys.path:
        sys.path.insert(0, path)

from _machine import load_average  # noqa: E402
from _queue_services import (  # noqa: E402
    BATCHING_WHATIFS,
    REDIS_URL,
    machine_info,
    make_bench_model,
    moto_s3,
    worker_env,
)
from _queue_submit import SubmitResult, run_submit  # noqa: E402
from _queue_worker import (  # noqa: E402
    CpuMeter,
    QueueRun,
    RawResult,
    RawSampler,
    read_run,
    run_stream,
    submit_burst,
    wait_done,
)

from tests.harness import (  # noqa: E402
    PG_ADMIN_URL,
    Services,
    WorkerProcess,
    delete_queue_keys,
    new_bucket,
    settings_from,
    throwaway_database,
)

SUBMIT_TARGET = 10_000  # jobs/s, the target for 100,000 prompts
OVERHEAD_TARGET = 0.90  # end-to-end / raw sampler images/s
OVERHEAD_GOAL = 0.97
# Jobs per model in the burst, and raw-sampler batches per way of calling it (before and after):
# the steady window is tens of batches (tiny) or about ten CPU-heavy batches (small), and the
# whole run stays under a quarter of an hour on 2 cores.
BURST_JOBS = {"tiny": 960, "small": 176}
RAW_BATCHES = {"tiny": 12, "small": 3}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    if args.torch_threads is not None:
        torch.set_num_threads(args.torch_threads)
    started = time.perf_counter()
    results: dict[str, Any] = {
        "machine": machine_info(args.redis_url, args.pg_admin_url),
        "args": vars(args),
        "torch_threads": torch.get_num_threads(),
    }
    with tempfile.TemporaryDirectory(prefix="loopfree-bench-queue-") as folder:
        workdir = Path(folder)
        if args.jobs:
            results["submit"] = bench_submit(args, workdir)
            print_submit(results["submit"])
        if args.models:
            results["models"], results["batching_whatifs"] = bench_models(args, workdir)
    results["total_s"] = time.perf_counter() - started
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str), encoding="utf-8")
    print_verdicts(results)
    return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=100_000, help="submit: prompts (0 skips)")
    parser.add_argument(
        "--no-whatif",
        dest="whatif",
        action="store_false",
        help="submit: skip the what-if timings of other ways to do the stages",
    )
    parser.add_argument(
        "--whatif-publish",
        type=int,
        default=5_000,
        help="submit: messages for the (slow) per-message publish what-ifs",
    )
    parser.add_argument(
        "--models", default="tiny,small", help="comma-separated shapes for overhead/fill ('' skips)"
    )
    parser.add_argument("--burst", default=_pairs(BURST_JOBS), help="jobs per model")
    parser.add_argument(
        "--raw-batches",
        default=_pairs(RAW_BATCHES),
        help="raw-sampler batches per model, before and after",
    )
    parser.add_argument("--max-batch", type=int, default=16)
    parser.add_argument(
        "--max-wait-ms",
        type=int,
        default=200,
        help="the worker's LOOPFREE_MAX_WAIT_MS (200 is the default)",
    )
    parser.add_argument(
        "--stream-fraction",
        type=float,
        default=0.5,
        help="stream rate as a fraction of the tiny burst's throughput",
    )
    parser.add_argument("--stream-max-rate", type=float, default=60.0, help="jobs/s cap")
    parser.add_argument("--stream-s", type=float, default=15.0, help="stream duration")
    parser.add_argument(
        "--torch-threads",
        type=int,
        default=None,
        help="torch threads for raw sampler and worker (default: torch's)",
    )
    parser.add_argument("--redis-url", default=REDIS_URL)
    parser.add_argument("--pg-admin-url", default=PG_ADMIN_URL)
    parser.add_argument("--json", help="also write every number to this file")
    parser.add_argument("--keep-logs", help="copy the worker logs into this folder")
    parser.add_argument(
        "--whatif-batching",
        action="store_true",
        help="per model, the burst again batched as before the batch-fill fix (BATCHING_WHATIFS)",
    )
    args = parser.parse_args(argv)
    args.models = [m for m in args.models.split(",") if m]
    args.burst, args.raw_batches = _unpairs(args.burst), _unpairs(args.raw_batches)
    return args


def _pairs(values: dict[str, int]) -> str:
    return ",".join(f"{key}={value}" for key, value in values.items())


def _unpairs(text: str) -> dict[str, int]:
    return {key: int(value) for key, value in (item.split("=") for item in text.split(","))}


# -- 1. submit ------------------------------------------------------------------------------------


def bench_submit(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    from core.settings import Settings
    from taskqueue.app import queue_name

    model = make_bench_model(workdir / "submit-model", "tiny")
    with throwaway_database(args.pg_admin_url, prefix="loopfree_bench") as database_url:
        settings = Settings(
            home=workdir / "submit-home",
            database_url=database_url,
            broker_url=args.redis_url,
            model=str(model),
        )
        try:
            result: SubmitResult = run_submit(
                settings, model, workdir, args.jobs,
                whatif=args.whatif, whatif_publish=args.whatif_publish,
            )  # fmt: skip
        finally:
            deleted = delete_queue_keys(args.redis_url, queue_name(str(model)))
    out = asdict(result)
    out["jobs_per_s"] = result.jobs_per_s
    out["redis_keys_deleted"] = deleted
    return out


def print_submit(submit: dict[str, Any]) -> None:
    print(f"\n## Submit: {submit['jobs']:,} prompts (.txt) -> PostgreSQL + Redis\n")
    print(
        f"end to end: {submit['wall_s']:.2f} s = **{submit['jobs_per_s']:,.0f} jobs/s** "
        f"(process CPU {submit['cpu_s']:.2f} s; load average {submit['load']})\n"
    )
    print("| stage | wall s | share | jobs/s alone | process CPU s |")
    print("|---|---:|---:|---:|---:|")
    for row in submit["stages"]:
        if row.get("part"):
            print(f"| {row['stage']} | {row['wall_s']:.3f} | | | {row['cpu_s']:.2f} |")
            continue
        cpu = "" if row["cpu_s"] is None else f"{row['cpu_s']:.2f}"
        share = row["wall_s"] / submit["wall_s"]
        rate = submit["jobs"] / row["wall_s"] if row["wall_s"] > 0 else float("inf")
        print(f"| {row['stage']} | {row['wall_s']:.3f} | {share:.1%} | {rate:,.0f} | {cpu} |")
    if submit["whatif"]:
        print("\nWhat-ifs (same machine and run; project code unchanged):\n")
        print("| stage | how | jobs | wall s | jobs/s | process CPU s |")
        print("|---|---|---:|---:|---:|---:|")
        for row in submit["whatif"]:
            print(
                f"| {row['stage']} | {row['how']} | {row['jobs']:,} | {row['wall_s']:.3f} | "
                f"{row['jobs_per_s']:,.0f} | {row['cpu_s']:.2f} |"
            )


# -- 2 and 3. overhead and batch fill -------------------------------------------------------------


def bench_models(args: argparse.Namespace, workdir: Path) -> tuple[dict[str, Any], dict]:
    out: dict[str, Any] = {}
    whatifs: dict[str, Any] = {}
    with (
        moto_s3() as endpoint,
        throwaway_database(args.pg_admin_url, prefix="loopfree_bench") as database_url,
    ):
        for shape in args.models:
            bucket = new_bucket(endpoint, prefix="bench")
            services = Services(database_url, args.redis_url, bucket, endpoint)
            out[shape] = bench_model(args, workdir, shape, services)
            print_model(shape, out[shape])
            if args.whatif_batching:
                for index, (label, patch) in enumerate(BATCHING_WHATIFS.items(), start=1):
                    whatifs[f"{shape}: {label}"] = bench_batching(
                        args, workdir, services, shape, label, patch, index
                    )
    return out, whatifs


def bench_batching(
    args: argparse.Namespace,
    workdir: Path,
    services: Services,
    shape: str,
    label: str,
    patch: str,
    index: int,
) -> dict[str, Any]:
    """The burst again with a patched worker (see ``BATCHING_WHATIFS``)."""
    from taskqueue.app import queue_name

    model = workdir / f"model-{shape}"
    env = worker_env(
        services, model, workdir / f"home-{shape}-{index}",
        max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, torch_threads=args.torch_threads,
    )  # fmt: skip
    settings = settings_from(env)
    burst_id = submit_burst(settings, model, workdir, index * 1_000_000, args.burst[shape])
    worker = WorkerProcess(env, workdir / f"worker-{shape}-{index}.log", patch=patch)
    try:
        wait_done(settings, burst_id, 900, worker.check_alive)
        burst = read_run(settings, burst_id, args.max_batch)
    finally:
        worker.stop()
        delete_queue_keys(services.broker_url, queue_name(str(model)))
        if args.keep_logs:
            shutil.copy(worker.log, Path(args.keep_logs) / worker.log.name)
    result = _run(burst)
    print(
        f"\nwhat-if ({shape} burst) {label}: {result['images_per_s']:.2f} images/s; mean "
        f"batch_size {result['mean_batch_size']:.2f}, fill {result['fill']:.2f}; deliveries "
        f"{_sizes(result['deliveries_by_size'])}",
        flush=True,
    )
    return result


def bench_model(
    args: argparse.Namespace, workdir: Path, shape: str, services: Services
) -> dict[str, Any]:
    from storage.stores import open_store
    from taskqueue.app import queue_name

    model = make_bench_model(workdir / f"model-{shape}", shape)
    raw = RawSampler(model)
    raws = measure_raw(raw, shape, "before", args)

    env = worker_env(
        services, model, workdir / f"home-{shape}",
        max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, torch_threads=args.torch_threads,
    )  # fmt: skip
    settings = settings_from(env)
    count = args.burst[shape]
    burst_id = submit_burst(settings, model, workdir, 0, count)
    worker = WorkerProcess(env, workdir / f"worker-{shape}.log")
    stream: QueueRun | None = None
    try:
        load = [load_average()]
        meter = CpuMeter(worker.cpu_seconds)
        wait_done(settings, burst_id, 900, worker.check_alive, meter.sample)
        load.append(load_average())
        burst = read_run(settings, burst_id, args.max_batch)
        burst.load = load
        first_end = burst.extra["first_end"]
        worker_cpu, s3_cpu = meter.between(first_end, first_end + burst.steady_s)
        burst.extra["worker_cpu_per_image_ms"] = 1000 * worker_cpu / burst.steady_images
        burst.extra["s3_server_cpu_per_image_ms"] = 1000 * s3_cpu / burst.steady_images
        burst.extra["first_batch_s"] = first_end - worker.started
        print(f"[{shape}] burst through the queue: {burst.images_per_s:.2f} images/s", flush=True)
        if shape == "tiny":
            rate = min(args.stream_fraction * burst.images_per_s, args.stream_max_rate)
            stream_id, published = run_stream(
                settings, model, workdir, count, rate, args.stream_s, worker.check_alive
            )
            wait_done(settings, stream_id, 300, worker.check_alive)
            stream = read_run(settings, stream_id, args.max_batch)
            stream.load = [load_average()]
            finished = stream.extra["finished_at"]
            stream.latency_s = sorted(finished[j] - t for j, t in published.items())
            stream.extra["rate"] = rate
    finally:
        exit_code = worker.stop()
        deleted = delete_queue_keys(services.broker_url, queue_name(str(model)))
        if args.keep_logs:
            Path(args.keep_logs).mkdir(parents=True, exist_ok=True)
            shutil.copy(worker.log, Path(args.keep_logs) / worker.log.name)
    raws += measure_raw(raw, shape, "after", args)

    store = open_store(services.storage_url, endpoint_url=services.s3_endpoint, region="us-east-1")
    stored = sum(1 for _ in store.list_keys())
    expected = burst.succeeded + (stream.succeeded if stream else 0)
    if burst.succeeded != count or stored != expected:
        raise AssertionError(f"{burst.succeeded}/{count} jobs succeeded, {stored} objects stored")
    # The baseline: the faster way of calling the sampler, averaged over before and after.
    by_mode: dict[str, list[float]] = {}
    for result in raws:
        by_mode.setdefault(result.mode, []).append(result.images_per_s)
    mode, rates = max(by_mode.items(), key=lambda item: statistics.fmean(item[1]))
    baseline = statistics.fmean(rates)
    # CPU seconds per image barely depend on how busy the machine is, unlike wall time: the
    # sampler's share of all the CPU an image costs through the queue (worker + S3 server) is the
    # ratio a CPU worker would reach on a machine of its own.
    raw_cpu = statistics.fmean(r.cpu_per_image_ms for r in raws if r.mode == mode)
    queue_cpu = burst.extra["worker_cpu_per_image_ms"] + burst.extra["s3_server_cpu_per_image_ms"]
    return {
        "model": str(model),
        "size": raw.size,
        "raw": [_raw(result, when) for result, when in zip(raws, RAW_ORDER, strict=True)],
        "raw_images_per_s": baseline,
        "raw_baseline_mode": mode,
        "burst": _run(burst),
        "ratio": burst.images_per_s / baseline,
        "ratio_range": sorted(burst.images_per_s / rate for rate in rates),
        "cpu_ratio": raw_cpu / queue_cpu,
        "stream": _run(stream) if stream else None,
        "worker_exit_code": exit_code,
        "redis_keys_deleted": deleted,
        "objects_stored": stored,
    }


RAW_ORDER = [(when, in_thread) for when in ("before", "after") for in_thread in (False, True)]


def measure_raw(raw: RawSampler, shape: str, when: str, args: argparse.Namespace) -> list:
    results = []
    for in_thread in (False, True):
        result = raw.run(args.raw_batches[shape], args.max_batch, in_thread=in_thread)
        print(f"[{shape}] raw sampler {when}, {result.mode}: {result.images_per_s:.2f} images/s",
              flush=True)  # fmt: skip
        results.append(result)
    return results


def _raw(result: RawResult, when: tuple[str, bool]) -> dict[str, Any]:
    return {
        "when": when[0],
        "mode": result.mode,
        "images_per_s": result.images_per_s,
        "batches": result.batches,
        "batch_size": result.batch_size,
        "batch_s_median": statistics.median(result.seconds),
        "cpu_per_image_ms": result.cpu_per_image_ms,
        "load": result.load,
    }


def _run(run: QueueRun) -> dict[str, Any]:
    sizes = sorted(run.batch_sizes)
    out = {
        "jobs": run.jobs,
        "succeeded": run.succeeded,
        "batches": run.batches,
        "steady_images": run.steady_images,
        "steady_s": run.steady_s,
        "images_per_s": run.images_per_s,
        "mean_batch_size": run.mean_batch,
        "fill": run.fill,
        "max_batch": run.max_batch,
        "batch_size_min_median_max": [sizes[0], statistics.median(sizes), sizes[-1]],
        "deliveries_by_size": dict(sorted(Counter(run.delivery_sizes).items())),
        "sample_s_median": statistics.median(run.sample_s),
        "sampling_share": run.sampling_share,
        "upload_s_median": statistics.median(run.upload_s),
        "load": run.load,
        "first_batch_after_start_s": run.extra.get("first_batch_s"),
        "worker_cpu_per_image_ms": run.extra.get("worker_cpu_per_image_ms"),
        "s3_server_cpu_per_image_ms": run.extra.get("s3_server_cpu_per_image_ms"),
        "rate": run.extra.get("rate"),
    }
    if run.latency_s:
        out["latency_s_p50_p95_max"] = [
            _quantile(run.latency_s, 0.5),
            _quantile(run.latency_s, 0.95),
            run.latency_s[-1],
        ]
    return out


def _quantile(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, int(q * len(values)))]


def print_model(shape: str, result: dict[str, Any]) -> None:
    burst, size = result["burst"], result["size"]
    print(f"\n## {shape} model ({size} px), batch {burst['max_batch']}\n")
    print("| measurement | images/s | batch s (median) | CPU ms per image | load avg |")
    print("|---|---:|---:|---:|---|")
    for raw in result["raw"]:
        label = f"raw sampler {raw['when']}, {raw['mode']}"
        print(
            f"| {label} | {raw['images_per_s']:.2f} | {raw['batch_s_median']:.3f} | "
            f"{raw['cpu_per_image_ms']:.1f} | {raw['load']} |"
        )
    print(
        f"| through the queue, steady state | {burst['images_per_s']:.2f} | "
        f"{burst['sample_s_median']:.3f} (sampler call) | "
        f"{burst['worker_cpu_per_image_ms']:.1f} worker + "
        f"{burst['s3_server_cpu_per_image_ms']:.1f} moto S3 | {burst['load']} |"
    )
    low, high = result["ratio_range"]
    print(
        f"\nratio: **{result['ratio']:.3f}** (baseline: raw sampler in the "
        f"{result['raw_baseline_mode']}, {result['raw_images_per_s']:.2f} images/s; against its "
        f"before/after: {low:.3f}-{high:.3f}); CPU-cost ratio {result['cpu_ratio']:.3f}; "
        f"sampler busy {burst['sampling_share']:.1%} of the steady window; "
        f"{burst['steady_images']} images over {burst['steady_s']:.1f} s in {burst['batches']} "
        f"deliveries; median upload {burst['upload_s_median'] * 1000:.1f} ms per image"
    )
    print(
        "\n| batch fill | jobs | mean batch_size | fill | deliveries by size | publish->recorded "
        "p50/p95 s |"
    )
    print("|---|---:|---:|---:|---|---|")
    for label, run in (("burst (all queued first)", burst), ("stream", result["stream"])):
        if run is None:
            continue
        if run["rate"]:
            label = f"stream at {run['rate']:.1f} jobs/s"
        latency = run.get("latency_s_p50_p95_max")
        latency_text = f"{latency[0]:.2f} / {latency[1]:.2f}" if latency else ""
        print(
            f"| {label} | {run['jobs']} | {run['mean_batch_size']:.2f} | {run['fill']:.2f} | "
            f"{_sizes(run['deliveries_by_size'])} | {latency_text} |"
        )


def _sizes(counts: dict[int, int]) -> str:
    return ", ".join(f"{count}x{size}" for size, count in counts.items())


def print_verdicts(results: dict[str, Any]) -> None:
    print("\n## Verdicts\n")
    if "submit" in results:
        rate = results["submit"]["jobs_per_s"]
        verdict = "MET" if rate >= SUBMIT_TARGET else "NOT MET"
        print(f"- submit: {rate:,.0f} jobs/s vs target {SUBMIT_TARGET:,}: {verdict}")
    for shape, result in results.get("models", {}).items():
        ratio = result["ratio"]
        verdict = (
            "goal met"
            if ratio >= OVERHEAD_GOAL
            else "target met"
            if ratio >= OVERHEAD_TARGET
            else "NOT MET"
        )
        print(
            f"- overhead ({shape}): {ratio:.3f} vs target {OVERHEAD_TARGET} / goal "
            f"{OVERHEAD_GOAL}: {verdict}"
        )
    print(f"- whole run: {results['total_s'] / 60:.1f} min")


if __name__ == "__main__":
    raise SystemExit(main())
