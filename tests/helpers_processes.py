"""Real processes for tests: ``loopfree`` workers and commands, private servers a test may break.

Everything here starts an actual process (or a real server socket) and stops it the way an
operator or a crash would: SIGTERM, SIGKILL, ``pg_ctl stop``, a stopped listener. Fault tests
own these servers, so breaking one never disturbs the shared services other tests use.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from core.settings import Settings
from tests.conftest import free_port

REPO_ROOT = Path(__file__).resolve().parents[1]


def settings_from(env: dict[str, str]) -> Settings:
    """The settings a process started with ``env`` would read."""
    saved = dict(os.environ)
    os.environ.update(env)
    try:
        return Settings()
    finally:
        os.environ.clear()
        os.environ.update(saved)


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


class WorkerProcess:
    """A real ``loopfree worker`` child process (or ``module``, a wrapper that injects a fault)."""

    def __init__(self, env: dict[str, str], log: Path, *, module: str = "loopfree.cli") -> None:
        self.log = log
        with log.open("wb") as output:  # the child keeps its own copy of the descriptor
            self.process = subprocess.Popen(
                [sys.executable, "-m", module, "worker", "--loglevel", "INFO"],
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

    def log_text(self, tail: int = 4000) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return text[-tail:]

    def wait_ready(self, timeout: float = 120) -> None:
        """Wait for Celery's "ready." line: the model is loaded and the queue is consumed."""

        def ready() -> bool:
            if not self.alive():
                raise AssertionError(
                    f"worker exited with {self.process.returncode}:\n{self.log_text()}"
                )
            return " ready." in self.log_text(tail=1_000_000)

        wait_until(
            ready, timeout=timeout, what=f"worker {self.pid} to be ready", details=self.log_text
        )

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
    args: list[str], env: dict[str, str], *, timeout: float = 120
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


def port_open(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
    except OSError:
        return False
    return True


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
        with (self.folder / "redis.log").open("ab") as output:
            self.process = subprocess.Popen(
                [
                    binary,
                    "--port",
                    str(self.port),
                    "--bind",
                    "127.0.0.1",
                    "--dir",
                    str(self.folder),
                    "--save",
                    "",
                    "--appendonly",
                    "yes",
                    "--appendfsync",
                    "always",
                    "--protected-mode",
                    "no",
                ],
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        wait_until(self.ping, timeout=20, what=f"redis-server on port {self.port}")

    def ping(self) -> bool:
        import redis

        try:
            return bool(redis.Redis.from_url(self.url, socket_connect_timeout=0.5).ping())
        except redis.RedisError:
            return False

    def client(self):
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
        self._pg(
            [
                self.bin / "initdb",
                "-D",
                self.data,
                "-U",
                "postgres",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                f"--pwfile={password_file}",
                "--no-sync",
                "-E",
                "UTF8",
            ]
        )

    def url(self, database: str = "postgres", *, password: str | None = None) -> str:
        secret = self.password if password is None else password
        return f"postgresql+psycopg://postgres:{secret}@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c max_connections=200"
        )
        self._pg(
            [
                self.bin / "pg_ctl",
                "-D",
                self.data,
                "-o",
                options,
                "-l",
                self.folder / "server.log",
                "-w",
                "-t",
                "60",
                "start",
            ]
        )

    def stop(self) -> None:
        """``pg_ctl stop -m fast``: clients are disconnected, open transactions roll back."""
        self._pg([self.bin / "pg_ctl", "-D", self.data, "-m", "fast", "-w", "stop"])

    def remove(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)

    def _pg(self, command: list) -> None:
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


class MotoServer:
    """An S3 endpoint (moto, in this process) on a fixed port that can be stopped and started
    again. Buckets and objects live in moto's in-process state, so they survive a restart as
    they would on a real S3 outage."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._server = None

    def start(self) -> None:
        from moto.server import ThreadedMotoServer

        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self._server.start()
        wait_until(lambda: port_open(self.port), timeout=20, what="the moto S3 endpoint")

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None
        wait_until(lambda: not port_open(self.port), timeout=20, what="the S3 endpoint to close")
