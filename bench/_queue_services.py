"""Real services for ``bench_queue.py``: a throwaway PostgreSQL database, the Redis keys of one
queue, a moto S3 server, model folders and ``loopfree worker`` child processes.

Everything made here is removed again: the database is dropped, the queue's Redis keys deleted,
the moto server stopped, the model folders live in a temporary folder the caller deletes.
"""

from __future__ import annotations

import logging
import os
import platform
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import psycopg
import redis

REPO = Path(__file__).resolve().parents[1]

PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
# Not the tests' database (15, flushed by every Redis test) and not the default (0) that other
# tools on this machine may use; only the keys of our own queues are deleted afterwards.
REDIS_URL = "redis://127.0.0.1:6379/13"

# Static credentials for the moto server; nothing real is ever signed with them.
S3_ENV = {
    "AWS_ACCESS_KEY_ID": "loopfree-bench",
    "AWS_SECRET_ACCESS_KEY": "loopfree-bench-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}


# -- PostgreSQL -----------------------------------------------------------------------------------


@contextmanager
def fresh_database(admin_url: str = PG_ADMIN_URL) -> Iterator[str]:
    """A new PostgreSQL database migrated to head; yields its SQLAlchemy URL, drops it after."""
    from sqlalchemy.engine import make_url

    from migrations.runner import upgrade

    name = f"loopfree_bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            url = make_url(admin_url).set(drivername="postgresql+psycopg", database=name)
            rendered = url.render_as_string(hide_password=False)
            upgrade(rendered)
            yield rendered
        finally:
            # FORCE: a worker killed mid-transaction must not keep the database alive.
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# -- Redis ----------------------------------------------------------------------------------------


def delete_queue_keys(redis_url: str, queue: str) -> int:
    """Delete the keys of one Celery queue (priority lists, kombu bindings); returns how many."""
    client = redis.Redis.from_url(redis_url)
    try:
        keys = [
            *client.scan_iter(match=f"{queue}*", count=1000),
            *client.scan_iter(match=f"_kombu.binding*{queue}", count=1000),
        ]
        return client.delete(*keys) if keys else 0
    finally:
        client.close()


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
    """A moto S3 server on a free loopback port; yields its endpoint URL."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    os.environ.update(S3_ENV)
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
        os.environ.pop(name, None)
    os.environ["AWS_CONFIG_FILE"] = os.environ["AWS_SHARED_CREDENTIALS_FILE"] = "/nonexistent"
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def new_bucket(endpoint: str) -> str:
    """A fresh bucket on ``endpoint``; returns the storage URL of a prefix in it."""
    from storage.objects import open_store

    url = f"s3://bench-{uuid.uuid4().hex[:10]}/images"
    open_store(url, endpoint_url=endpoint, region="us-east-1").ensure_bucket()
    return url


# -- models ---------------------------------------------------------------------------------------


def make_bench_model(folder: Path, shape: str) -> Path:
    """A random-weight model folder of ``worker.tiny``'s ``tiny`` or ``small`` shape."""
    from worker.tiny import make_model

    if shape not in ("tiny", "small"):
        raise ValueError(f"unknown model shape {shape!r}: use tiny or small")
    return make_model(folder, shape=shape, seed=1).resolve()


# -- the worker process ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Services:
    database_url: str
    redis_url: str
    storage_url: str
    s3_endpoint: str


def worker_env(
    services: Services,
    model: Path,
    home: Path,
    *,
    max_batch: int,
    max_wait_ms: int,
    torch_threads: int | None,
) -> dict[str, str]:
    """``LOOPFREE_*`` variables for a CPU worker, as a deployment would set them."""
    env = {
        **S3_ENV,
        "AWS_CONFIG_FILE": "/nonexistent",
        "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
        "LOOPFREE_HOME": str(home),
        "LOOPFREE_DATABASE_URL": services.database_url,
        "LOOPFREE_BROKER_URL": services.redis_url,
        "LOOPFREE_STORAGE_URL": services.storage_url,
        "LOOPFREE_S3_ENDPOINT_URL": services.s3_endpoint,
        "LOOPFREE_S3_REGION": "us-east-1",
        "LOOPFREE_MODEL": str(model),
        "LOOPFREE_DEVICE": "cpu",
        "LOOPFREE_MAX_BATCH": str(max_batch),
        "LOOPFREE_MAX_WAIT_MS": str(max_wait_ms),
    }
    if torch_threads is not None:
        env["OMP_NUM_THREADS"] = str(torch_threads)
    return env


def settings_for(env: Mapping[str, str]):
    """The ``Settings`` a process with ``env`` would read."""
    from core.settings import Settings

    saved = dict(os.environ)
    os.environ.update(env)
    try:
        return Settings()
    finally:
        os.environ.clear()
        os.environ.update(saved)


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


class WorkerProcess:
    """A real ``loopfree worker`` child process, logging to a file."""

    def __init__(self, env: Mapping[str, str], log: Path, *, patch: str | None = None) -> None:
        self.log = log
        self.started = time.time()
        command = ["-c", patch] if patch else ["-m", "loopfree.cli", "worker", "--loglevel", "INFO"]
        self.process = subprocess.Popen(
            [sys.executable, *command],
            cwd=REPO,
            env={**os.environ, **env},
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
        )

    def wait_ready(self, timeout_s: float = 300) -> float:
        """Seconds from start until Celery logs ``ready``; raises if the worker dies first."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.check_alive()
            if b" ready." in self.log.read_bytes():
                return time.time() - self.started
            time.sleep(0.1)
        raise TimeoutError(f"worker not ready after {timeout_s}s; log:\n{self.tail()}")

    def cpu_seconds(self) -> float:
        """User + system CPU seconds the worker process has used so far (all its threads)."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            raise RuntimeError(f"worker exited with {self.process.returncode}:\n{self.tail()}")

    def tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:]

    def stop(self, timeout_s: float = 60) -> int:
        """SIGTERM (warm shutdown), then SIGKILL if it does not exit in time."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()


# -- the machine ----------------------------------------------------------------------------------

PACKAGES = (
    "torch", "diffusers", "transformers", "celery", "kombu", "celery-batches", "redis",
    "sqlalchemy", "psycopg", "boto3", "moto", "pillow",
)  # fmt: skip


def machine_info() -> dict[str, object]:
    """CPU model and cores, Python, package and server versions."""
    cpu = "unknown"
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                cpu = line.split(":", 1)[1].strip()
    except OSError:
        pass
    info: dict[str, object] = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "packages": {name: _version(name) for name in PACKAGES},
    }
    try:
        client = redis.Redis.from_url(REDIS_URL)
        info["redis"] = client.info("server")["redis_version"]
        client.close()
    except redis.RedisError as error:
        info["redis"] = f"unreachable ({error})"
    try:
        with psycopg.connect(PG_ADMIN_URL, connect_timeout=5) as connection:
            info["postgresql"] = connection.execute("SHOW server_version").fetchone()[0]
    except psycopg.Error as error:
        info["postgresql"] = f"unreachable ({error})"
    return info


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def load_average() -> float:
    """The 1-minute load average: this machine is shared, so every phase records it."""
    return round(os.getloadavg()[0], 2)
