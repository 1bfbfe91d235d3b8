"""Throwaway services for tests and benchmarks, written once: PostgreSQL databases and servers, a
moto S3 endpoint, private Redis servers, ``LOOPFREE_*`` environments and the settings they give,
and real ``loopfree`` processes.

The test fixtures (``tests/conftest.py``, ``tests/*/conftest.py``) and the benchmarks
(``bench/*.py``, after they put the repository root on ``sys.path``) both build on this module, so
it imports no pytest: a test turns a missing service into a skip, or a failure under CI, with
``tests.conftest.service_missing``. Everything here is real: real servers, real processes, stopped
the way an operator or a crash would stop them (SIGTERM, SIGKILL, ``pg_ctl stop``).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

if TYPE_CHECKING:
    import psycopg
    import redis
    from moto.server import ThreadedMotoServer

    from core.jobspec import ParsedJob
    from core.settings import Settings
    from storage.jobs import JobResult

REPO_ROOT = Path(__file__).resolve().parents[1]

PG_ADMIN_URL = os.environ.get(
    "LOOPFREE_TEST_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
"""A database on the shared PostgreSQL server to run CREATE DATABASE from."""

S3_TEST_ENV = {
    "AWS_ACCESS_KEY_ID": "loopfree-test",
    "AWS_SECRET_ACCESS_KEY": "loopfree-test-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",  # never wait for an instance-metadata lookup
}
"""Static credentials for the moto server; nothing real is ever signed with them."""


# -- ports and waiting ----------------------------------------------------------------------------


def free_port() -> int:
    """A loopback port nothing listens on (bound and released; fine for tests)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_open(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
    except OSError:
        return False
    return True


def wait_until(
    predicate: Callable[[], object],
    *,
    timeout: float,
    what: str,
    interval: float = 0.25,
    details: Callable[[], str] | None = None,
) -> object:
    """Poll ``predicate`` until it returns something true; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            extra = f"\n{details()}" if details else ""
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}{extra}")
        time.sleep(interval)


# -- environments and settings --------------------------------------------------------------------


class ServedAsgi:
    """An ASGI app served by uvicorn in a thread of the test process, on a free loopback port."""

    def __init__(self, app: Any, *, name: str, what: str, **uvicorn_options: Any) -> None:
        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            app, host="127.0.0.1", port=self.port, log_level="warning", **uvicorn_options
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name=name, daemon=True)
        self.what = what

    def __enter__(self) -> Self:
        self.thread.start()
        wait_until(
            lambda: self.server.started or not self.thread.is_alive(),
            timeout=30,
            what=f"{self.what} to listen",
        )
        assert self.server.started, "uvicorn exited before it listened"
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


@contextmanager
def swapped_environ(changes: Mapping[str, str | None]) -> Iterator[None]:
    """Set each variable of ``changes`` (remove it where the value is None) for the duration;
    the environment is restored exactly afterwards."""
    saved = dict(os.environ)
    try:
        for name, value in changes.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def settings_from(env: Mapping[str, str], *, only: bool = False) -> Settings:
    """The settings a process started with ``env`` would read. ``only``: as if ``env`` held its
    only ``LOOPFREE_*`` variables (a container's), ignoring those of this process."""
    from core.settings import Settings

    changes: dict[str, str | None] = {}
    if only:
        changes = {name: None for name in os.environ if name.upper().startswith("LOOPFREE_")}
    with swapped_environ({**changes, **env}):
        return Settings()


@dataclass(frozen=True)
class Services:
    """Where one run's shared services are: the four URLs a deployment's environment names."""

    database_url: str
    broker_url: str
    storage_url: str
    s3_endpoint: str

    def env(self, *, home: Path, model: Path | str, **settings: object) -> dict[str, str]:
        """``LOOPFREE_*`` variables for a CPU worker or CLI on these services, as a deployment
        sets them; ``settings`` adds more (``max_batch=4`` is ``LOOPFREE_MAX_BATCH=4``)."""
        env = {
            "LOOPFREE_HOME": str(home),
            "LOOPFREE_DATABASE_URL": self.database_url,
            "LOOPFREE_BROKER_URL": self.broker_url,
            "LOOPFREE_STORAGE_URL": self.storage_url,
            "LOOPFREE_S3_ENDPOINT_URL": self.s3_endpoint,
            "LOOPFREE_S3_REGION": "us-east-1",
            "LOOPFREE_MODEL": str(model),
            "LOOPFREE_DEVICE": "cpu",
        }
        env.update({f"LOOPFREE_{name.upper()}": str(value) for name, value in settings.items()})
        return env


def loopfree_env(
    *,
    home: Path,
    database_url: str,
    broker_url: str,
    storage_url: str,
    s3_endpoint: str,
    model: Path | str,
    **settings: object,
) -> dict[str, str]:
    """``Services(...).env(...)`` in one call."""
    services = Services(database_url, broker_url, storage_url, s3_endpoint)
    return services.env(home=home, model=model, **settings)


def parsed_jobs(
    count: int,
    *,
    model: str = "test/tiny",
    size: int = 64,
    start: int = 0,
    prompt: str = "a watercolour fox, variation {position}",
    seed_step: int = 1,
    metadata: Callable[[int], Mapping[str, Any]] | None = None,
    priority: int | None = None,
) -> list[ParsedJob]:
    """Jobs at positions ``start`` to ``start + count - 1`` of a submission, as the producer's
    parser makes them: ``prompt`` formatted with the position, seed ``position * seed_step``,
    ``metadata(position)`` (none by default). One builder, so a new job field changes one place."""
    from core.jobspec import DEFAULT_PRIORITY, JobSpec, ParsedJob

    return [
        ParsedJob(
            JobSpec(
                prompt=prompt.format(position=position),
                seed=position * seed_step,
                height=size,
                width=size,
                steps=4,
                model=model,
                metadata=metadata(position) if metadata else {},
                priority=DEFAULT_PRIORITY if priority is None else priority,
            ),
            line_number=position + 1,
            position=position,
        )
        for position in range(start, start + count)
    ]


def job_result(
    job_id: str, *, sample_s: float = 0.1, upload_s: float = 0.1, gpu_share_s: float = 0.1
) -> JobResult:
    """What a worker records for a stored image, for tests that record outcomes without
    rendering: a 100-byte image at ``file:///{job_id}.png`` with the given timings."""
    from storage.jobs import JobResult

    return JobResult(f"file:///{job_id}.png", 100, "0" * 64, sample_s, upload_s, gpu_share_s)


# -- PostgreSQL -----------------------------------------------------------------------------------


def database_url(admin_url: str, name: str) -> str:
    """The SQLAlchemy (psycopg) URL of database ``name`` on the server of ``admin_url``."""
    from sqlalchemy.engine import make_url

    url = make_url(admin_url).set(drivername="postgresql+psycopg", database=name)
    return url.render_as_string(hide_password=False)


@contextmanager
def throwaway_database(
    admin_url: str = PG_ADMIN_URL,
    *,
    admin: psycopg.Connection | None = None,
    prefix: str = "loopfree_test",
    migrate: bool = True,
) -> Iterator[str]:
    """A new database on the server of ``admin_url`` (through ``admin``, an autocommit connection
    to it, if given), migrated to head unless ``migrate`` is false; yields its SQLAlchemy URL and
    drops it afterwards, even while something is still connected."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with _admin_connection(admin, admin_url) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
        try:
            url = database_url(admin_url, name)
            if migrate:
                from migrations.runner import upgrade

                upgrade(url)
            yield url
        finally:
            # FORCE: a killed worker or an engine nobody disposed must not keep it alive.
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def _admin_connection(
    admin: psycopg.Connection | None, admin_url: str
) -> Iterator[psycopg.Connection]:
    """``admin`` as it is, or a new autocommit connection to ``admin_url``, closed afterwards."""
    if admin is not None:
        yield admin
        return
    import psycopg

    with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as connection:
        yield connection


class PostgresServer:
    """A private PostgreSQL cluster (``initdb`` into a temporary folder, owned by the ``postgres``
    user when the tests run as root), started and stopped with ``pg_ctl``. TCP connections must
    give ``password`` (SCRAM); the socket in the folder is trusted."""

    def __init__(self, password: str, port: int | None = None) -> None:
        self.port = port or free_port()
        self.password = password
        self.bin = _postgres_bin()
        self.folder = Path(tempfile.mkdtemp(prefix="loopfree-pg-"))
        self.data = self.folder / "data"
        self._as_postgres: list[str] = []
        if os.geteuid() == 0:
            # initdb refuses to run as root; the cluster belongs to the postgres user.
            shutil.chown(self.folder, user="postgres")
            self._as_postgres = ["runuser", "-u", "postgres", "--"]
        password_file = self.folder / "password"
        password_file.write_text(password + "\n")
        if self._as_postgres:
            shutil.chown(password_file, user="postgres")
        self._pg([
            self.bin / "initdb", "-D", self.data, "-U", "postgres", "--auth-local=trust",
            "--auth-host=scram-sha-256", f"--pwfile={password_file}", "--no-sync", "-E", "UTF8",
        ])  # fmt: skip

    def url(self, database: str = "postgres", *, password: str | None = None) -> str:
        secret = self.password if password is None else password
        return f"postgresql+psycopg://postgres:{secret}@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c max_connections=200"
        )
        self._pg([
            self.bin / "pg_ctl", "-D", self.data, "-o", options, "-l", self.folder / "server.log",
            "-w", "-t", "60", "start",
        ])  # fmt: skip

    def stop(self) -> None:
        """``pg_ctl stop -m fast``: clients are disconnected, open transactions roll back."""
        self._pg([self.bin / "pg_ctl", "-D", self.data, "-m", "fast", "-w", "stop"])

    def remove(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)

    def _pg(self, command: list[object]) -> None:
        subprocess.run(
            [*self._as_postgres, *map(str, command)],
            check=True,
            capture_output=True,
            timeout=120,
        )


def _postgres_bin() -> Path:
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).parent
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    if not candidates:
        raise FileNotFoundError("no PostgreSQL server binaries (pg_ctl, initdb) found")
    return candidates[-1].parent


# -- S3 -------------------------------------------------------------------------------------------


def aws_test_env(missing_file: str) -> dict[str, str | None]:
    """The changes (for ``swapped_environ``) that point boto3 at the test credentials and at no
    profile, session or config file of the host: ``missing_file`` must not exist."""
    changes: dict[str, str | None] = dict(S3_TEST_ENV)
    changes.update(dict.fromkeys(("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL")))
    changes.update(AWS_CONFIG_FILE=missing_file, AWS_SHARED_CREDENTIALS_FILE=missing_file)
    return changes


class MotoServer:
    """An S3 endpoint (moto) on a loopback port that can be stopped and started again.

    In this process by default: buckets and objects live in moto's in-process state, so they
    survive a restart as they would on a real S3 outage. ``own_process``: the ``moto_server``
    command instead, so serving S3 does not compete with the caller for its GIL (benchmarks); a
    restart then starts empty.
    """

    def __init__(self, port: int | None = None, *, own_process: bool = False) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.own_process = own_process
        self._server: ThreadedMotoServer | None = None
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        if self.own_process:
            self._process = subprocess.Popen(
                [str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p",
                 str(self.port)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )  # fmt: skip
        else:
            from moto.server import ThreadedMotoServer

            logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request
            self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
            self._server.start()
        wait_until(lambda: port_open(self.port), timeout=20, what="the moto S3 endpoint")

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None
        if self._process is not None:
            self._process.terminate()
            self._process.wait(timeout=10)
            self._process = None
        wait_until(lambda: not port_open(self.port), timeout=20, what="the S3 endpoint to close")

    def __enter__(self) -> MotoServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def new_bucket(endpoint: str, *, prefix: str = "test") -> str:
    """A fresh bucket on ``endpoint``; returns the storage URL of a folder (``images``) in it."""
    from storage.stores import open_store

    bucket = f"{prefix}-{uuid.uuid4().hex[:12]}"
    open_store(f"s3://{bucket}", endpoint_url=endpoint, region="us-east-1").ensure_bucket()
    return f"s3://{bucket}/images"


# -- Redis ----------------------------------------------------------------------------------------


class RedisServer:
    """A private ``redis-server`` on its own port and folder, with an append-only file, so a
    graceful restart keeps the queues and ``FLUSHALL`` is the way to lose them."""

    def __init__(self, folder: Path, port: int | None = None) -> None:
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise FileNotFoundError("redis-server is not installed")
        options = {
            "port": str(self.port),
            "bind": "127.0.0.1",
            "dir": str(self.folder),
            "save": "",
            "appendonly": "yes",
            "appendfsync": "always",
            "protected-mode": "no",
        }
        arguments = [part for name, value in options.items() for part in (f"--{name}", value)]
        with (self.folder / "redis.log").open("ab") as output:
            self.process = subprocess.Popen(
                [binary, *arguments], stdout=output, stderr=subprocess.STDOUT
            )
        wait_until(self.ping, timeout=20, what=f"redis-server on port {self.port}")

    def ping(self) -> bool:
        import redis

        try:
            return bool(redis.Redis.from_url(self.url, socket_connect_timeout=0.5).ping())
        except redis.RedisError:
            return False

    def client(self) -> redis.Redis:
        import redis

        return redis.Redis.from_url(self.url, socket_connect_timeout=2)

    def stop(self) -> None:
        """Graceful: Redis writes its data and exits (SIGTERM)."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(30)
        self.process = None

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(30)
        self.process = None


def delete_queue_keys(redis_url: str, queue: str) -> int:
    """Delete the Redis keys of one Celery queue (its priority lists, kombu's binding of it), on
    a Redis other programs may use too; returns how many were deleted."""
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=f"*{queue}*", count=1000))
        return client.delete(*keys) if keys else 0
    finally:
        client.close()


# -- loopfree processes ---------------------------------------------------------------------------


class WorkerProcess:
    """A real ``loopfree worker`` child process, logging to ``log``.

    ``module`` runs another entry point with the same arguments (a wrapper that injects a fault);
    ``patch`` runs ``python -c patch`` instead, code that patches the worker and then starts it
    (a benchmark's what-if).
    """

    def __init__(
        self,
        env: Mapping[str, str],
        log: Path,
        *,
        module: str = "loopfree.cli",
        patch: str | None = None,
    ) -> None:
        self.log = log
        self.started = time.time()
        command = ["-c", patch] if patch else ["-m", module, "worker", "--loglevel", "INFO"]
        with log.open("wb") as output:  # the child keeps its own copy of the descriptor
            self.process = subprocess.Popen(
                [sys.executable, *command],
                cwd=REPO_ROOT,
                env={**os.environ, **env},
                stdout=output,
                stderr=subprocess.STDOUT,
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def name(self) -> str:
        """The name the worker records in ``jobs.worker`` (see ``worker.service.worker_name``)."""
        return f"loopfree-{self.pid}@{socket.gethostname()}"

    def alive(self) -> bool:
        return self.process.poll() is None

    def check_alive(self) -> None:
        """Raise (with the log's tail) if the worker has exited: a poll loop's guard."""
        if not self.alive():
            raise AssertionError(
                f"worker exited with {self.process.returncode}:\n{self.log_text()}"
            )

    def log_text(self, tail: int = 4000) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return text[-tail:]

    def wait_ready(self, timeout: float = 120) -> float:
        """Wait for Celery's "ready." line (the model is loaded and the queue is consumed);
        returns the seconds since the process started."""

        def ready() -> bool:
            self.check_alive()
            return " ready." in self.log_text(tail=1_000_000)

        wait_until(
            ready, timeout=timeout, what=f"worker {self.pid} to be ready", details=self.log_text
        )
        return time.time() - self.started

    def cpu_seconds(self) -> float:
        """User + system CPU seconds the worker process has used so far (all its threads)."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM (warm shutdown) and wait; an AssertionError if it does not exit in time."""
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired as error:
            self.process.kill()
            self.process.wait(10)
            raise AssertionError(f"worker ignored SIGTERM; log:\n{self.log_text()}") from error

    def kill(self) -> None:
        """SIGKILL: the process dies at once, whatever it holds."""
        if self.alive():
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(30)

    def __enter__(self) -> WorkerProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.kill()


def run_cli(
    args: list[str], env: Mapping[str, str], *, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run ``loopfree ARGS`` as a separate process and capture what it prints."""
    return subprocess.run(
        [sys.executable, "-m", "loopfree.cli", *args],
        cwd=REPO_ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
