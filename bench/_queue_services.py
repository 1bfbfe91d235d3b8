"""Real services for ``bench_queue.py``: a throwaway PostgreSQL database, the Redis keys of one
queue, a moto S3 server, model folders and ``loopfree worker`` child processes.

The services and processes come from ``tests/harness.py``, shared with the tests; what is here is
the benchmark's own: which Redis database it uses, the worker's environment, the what-ifs.
Everything made is removed again: the database is dropped, the queue's Redis keys deleted, the
moto server stopped, the model folders live in a temporary folder the caller deletes.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path

import redis
from _machine import cpu_model, postgres_version, redis_version

from tests.harness import MotoServer, Services, aws_test_env, swapped_environ

# Not the tests' database (15, flushed by every Redis test) and not the default (0) that other
# tools on this machine may use; only the keys of our own queues are deleted afterwards.
REDIS_URL = "redis://127.0.0.1:6379/13"


# -- Redis ----------------------------------------------------------------------------------------


def queue_length(redis_url: str, queue: str) -> int:
    """Messages waiting in all priority lists of ``queue``."""
    client = redis.Redis.from_url(redis_url)
    try:
        return sum(
            client.llen(key)
            for key in client.scan_iter(match=f"{queue}*", count=1000)
            if client.type(key) == b"list"
        )
    finally:
        client.close()


# -- S3 -------------------------------------------------------------------------------------------


@contextmanager
def moto_s3() -> Iterator[str]:
    """A moto S3 server on a free loopback port, with test credentials (and no AWS profile of the
    host) in this process's environment, which the worker processes inherit; yields its URL."""
    with swapped_environ(aws_test_env("/nonexistent")), MotoServer() as server:
        yield server.url


# -- models ---------------------------------------------------------------------------------------


def make_bench_model(folder: Path, shape: str) -> Path:
    """A random-weight model folder of ``worker.tiny``'s ``tiny`` or ``small`` shape."""
    from worker.tiny import make_model

    if shape not in ("tiny", "small"):
        raise ValueError(f"unknown model shape {shape!r}: use tiny or small")
    return make_model(folder, shape=shape, seed=1).resolve()


# -- the worker process ---------------------------------------------------------------------------


def worker_env(
    services: Services,
    model: Path,
    home: Path,
    *,
    max_batch: int,
    max_wait_ms: int,
    torch_threads: int | None,
) -> dict[str, str]:
    """``LOOPFREE_*`` variables for a CPU worker, as a deployment would set them (the S3
    credentials come from ``moto_s3``'s environment)."""
    env = services.env(home=home, model=model, max_batch=max_batch, max_wait_ms=max_wait_ms)
    if torch_threads is not None:
        env["OMP_NUM_THREADS"] = str(torch_threads)
    return env


# What-if of the worker's batching, as a ``python -c`` launcher of ``loopfree worker`` that patches
# it first (project code is not changed): the batching as it was before issue 4's batch-fill fix,
# for a before/after in one run. celery-batches' own ``Batches`` flushes its buffer on a PERIODIC
# timer (every max_wait from the first message after an empty buffer) whatever the age of the
# messages in it, and 3 pool threads x ceil(max_batch x 4 / 3) = 66 prefetched messages (at
# max_batch 16) is 4 batches + 2. Now ``taskqueue.batches.MaxWaitBatches`` flushes a partial batch
# when its oldest message has waited max_wait, and ``worker.service.pool_options`` holds exactly
# PIPELINE_DEPTH (4) batches.
_BEFORE_THE_FIX = """
import math
import celery_batches
import worker.service as service
import worker.tasks as tasks
options = tasks.batch_task_options
def periodic_flush(**kwargs):
    return {**options(**kwargs), "base": celery_batches.Batches}
def window_with_remainder(max_batch):
    return dict(pool_cls="threads", concurrency=3, prefetch_multiplier=math.ceil(max_batch * 4 / 3))
tasks.batch_task_options = periodic_flush
service.pool_options = window_with_remainder
"""
_RUN_WORKER = """
import sys
sys.argv = ["loopfree", "worker", "--loglevel", "INFO"]
from loopfree.cli import main
main()
"""
BATCHING_WHATIFS = {
    "before the fix (periodic flush, 3 threads x ceil(4/3 batch) prefetch)": _BEFORE_THE_FIX
    + _RUN_WORKER,
}


# -- the machine ----------------------------------------------------------------------------------

PACKAGES = (
    "torch", "diffusers", "transformers", "celery", "kombu", "celery-batches", "redis",
    "sqlalchemy", "psycopg", "boto3", "moto", "pillow",
)  # fmt: skip


def machine_info(redis_url: str, pg_admin_url: str) -> dict[str, object]:
    """CPU model and cores, Python, package and server versions."""
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "packages": {name: _version(name) for name in PACKAGES},
        "redis": redis_version(redis_url),
        "postgresql": postgres_version(pg_admin_url),
    }


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"
