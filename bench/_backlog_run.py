"""Processes and services of ``bench_backlog.py``: a checkout's ``loopfree`` command, run and
measured (wall time, peak RSS, a time limit), and the private Redis + throwaway PostgreSQL
database each checkout runs on.

Every command runs ``python -c 'from loopfree.cli import main; main()' ARGS`` with
``PYTHONPATH=<checkout>`` and the checkout as working directory, so the checkout's packages are
imported, not the editable install of the venv (``Checkout.verify`` proves it before a run).
Byte code is compiled once per run into a cache folder outside the checkouts
(``PYTHONPYCACHEPREFIX``, written even where the environment says ``PYTHONDONTWRITEBYTECODE``),
so a read-only checkout stays untouched and every command starts as an installed one does.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from tests.harness import PG_ADMIN_URL, RedisServer, port_open, throwaway_database, wait_until

RUN_CLI = "from loopfree.cli import main; main()"
# The project's top-level packages (pyproject's packages.find): each must come from the checkout.
PACKAGES = ("core", "taskqueue", "loopfree", "producer", "worker", "status", "fleet", "storage",
            "migrations")  # fmt: skip
# Imported once before measuring, to compile them and the libraries they use into the cache;
# a checkout that has moved one is warmed by its first command instead.
WARM = ["loopfree.cli", "producer.submit", "fleet.reconcile", "status.queries", "status.web.app"]
MODEL = "senmaonk/loopfree-sd1.5"  # a hub id: submitting needs no weights, and no worker runs


@dataclass(frozen=True)
class Checkout:
    """A named checkout of this repository, the interpreter that runs its code and the folder
    its byte code is cached in."""

    name: str
    path: Path
    python: str = sys.executable
    pycache: Path = Path(tempfile.gettempdir()) / "loopfree-bench-backlog-pycache"

    def argv(self, *args: str) -> list[str]:
        return [self.python, "-c", RUN_CLI, *args]

    def env(self, settings: Mapping[str, str]) -> dict[str, str]:
        """This process's environment without its ``LOOPFREE_*`` variables, plus ``settings``
        and the import path of the checkout."""
        env = {k: v for k, v in os.environ.items() if not k.upper().startswith("LOOPFREE_")}
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env.update(settings)
        env.update(
            PYTHONPATH=str(self.path),
            PYTHONPYCACHEPREFIX=str(self.pycache),
            HF_HUB_OFFLINE="1",  # nothing here needs the hub; a lookup would only add noise
        )
        return env

    def verify(self) -> dict[str, str]:
        """Import each project package as the benchmark will and check it comes from the
        checkout; returns the checkout's commit. Raises with what was imported instead."""
        probe = (
            "import contextlib, importlib\n"
            f"for name in {PACKAGES!r}:\n"
            "    print(name, importlib.import_module(name).__file__)\n"
            f"for name in {WARM!r}:\n"
            "    with contextlib.suppress(ImportError):\n"
            "        importlib.import_module(name)\n"
        )
        done = subprocess.run(
            [self.python, "-c", probe],
            cwd=self.path,
            env=self.env({}),
            capture_output=True,
            text=True,
            timeout=120,
        )
        if done.returncode != 0:
            raise SystemExit(f"checkout {self.name}: importing its packages failed:\n{done.stderr}")
        root = self.path.resolve()
        for line in done.stdout.splitlines():
            name, file = line.split(" ", 1)
            if not Path(file).resolve().is_relative_to(root):
                raise SystemExit(
                    f"checkout {self.name}: {name} was imported from {file}, not from {root}; "
                    "is another copy earlier on the path?"
                )
        commit = subprocess.run(
            ["git", "-C", str(self.path), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
        return {"path": str(root), "python": self.python, "commit": commit or "unknown"}


@dataclass
class Measured:
    """One command's run: wall seconds, peak resident memory, how it ended, what it printed."""

    wall_s: float
    peak_rss_mib: float
    returncode: int
    timed_out: bool
    limit_s: float
    stdout: str = ""
    stderr: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out

    def check(self, what: str) -> Measured:
        """Raise ``StepFailed`` unless it exited 0 in time; a time-out is not a failure here,
        the step reports it as "> limit"."""
        if self.returncode != 0 and not self.timed_out:
            raise StepFailed(f"{what} exited {self.returncode}: {self.stderr.strip()[-400:]}")
        return self


class StepFailed(Exception):
    """A step could not be measured; the runner records the message and goes on."""


# Peak RSS comes from GNU time (``%M``: ``ru_maxrss`` of the command it waits for) and the time
# limit from coreutils' timeout, not from this process: Linux counts in a child's ``ru_maxrss``
# the memory of the process it was forked from (``exec`` records the old address space's high
# water mark), so a child of this benchmark (~120 MiB of imports) could never show less.
# ``--foreground`` keeps timeout in our process group, so one killpg stops all three.
TIME = "/usr/bin/time"
KILLED = 128 + signal.SIGKILL


def check_tools() -> None:
    """Fail early, with what to install, where GNU time or timeout is missing."""
    if not Path(TIME).is_file() or shutil.which("timeout") is None:
        raise SystemExit(f"{TIME} (GNU time) and timeout (coreutils) are needed to measure")


def _wrapped(checkout: Checkout, args: list[str], limit_s: float, rss_file: Path) -> list[str]:
    """``time -f %M -o RSS_FILE timeout --foreground -s KILL LIMIT <the checkout's loopfree>``."""
    measure = [TIME, "-f", "%M", "-o", str(rss_file)]
    limit = ["timeout", "--foreground", "-s", "KILL", f"{limit_s:g}"]
    return [*measure, *limit, *checkout.argv(*args)]


def kill_group(pid: int) -> None:
    """SIGKILL the process group ``pid`` leads (the commands run in their own session)."""
    with suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


def _finish(
    process: subprocess.Popen[Any], rss_file: Path, started: float, limit_s: float
) -> tuple[int, float, bool, float]:
    """Wait for the wrapped command: exit status, peak RSS (MiB), whether the limit cut it, wall
    seconds. A backstop kills the group if timeout itself hangs; Ctrl-C kills it too."""
    try:
        returncode = process.wait(limit_s + 60)
    except subprocess.TimeoutExpired:
        returncode = KILLED
    finally:
        kill_group(process.pid)
    wall = time.perf_counter() - started
    report = rss_file.read_text().split() if rss_file.exists() else []
    peak = int(report[-1]) / 1024 if report and report[-1].isdigit() else float("nan")
    timed_out = returncode in (KILLED, 124) and wall >= limit_s * 0.99
    return returncode, peak, timed_out, wall


def run_measured(
    checkout: Checkout,
    args: list[str],
    settings: Mapping[str, str],
    *,
    limit_s: float,
    count_output: bool = False,
) -> Measured:
    """Run ``loopfree ARGS`` of ``checkout`` to the end or to ``limit_s`` (then SIGKILL).
    Output goes to temporary files (no pipe can fill up); with ``count_output`` (a listing of
    gigabytes) stdout is read, counted into ``extra["stdout_bytes"]`` and dropped: a cut
    listing then shows how far it got."""
    with tempfile.TemporaryDirectory(prefix="loopfree-bench-cmd-") as folder:
        rss_file, out_path, err_path = (Path(folder) / name for name in ("rss", "out", "err"))
        with out_path.open("wb") as out, err_path.open("wb") as err:
            started = time.perf_counter()
            process = subprocess.Popen(
                _wrapped(checkout, args, limit_s, rss_file),
                cwd=checkout.path,
                env=checkout.env(settings),
                stdout=subprocess.PIPE if count_output else out,
                stderr=err,
                start_new_session=True,
            )
            counted: list[int] = []
            if count_output:
                counter = threading.Thread(target=_count, args=(process.stdout, counted))
                counter.start()
            returncode, peak, timed_out, wall = _finish(process, rss_file, started, limit_s)
            if count_output:
                counter.join()
        measured = Measured(
            wall,
            peak,
            returncode,
            timed_out,
            limit_s,
            out_path.read_text(errors="replace"),
            err_path.read_text(errors="replace"),
        )
        if counted:
            measured.extra["stdout_bytes"] = counted[0]
        return measured


def _count(stream: IO[bytes], counted: list[int]) -> None:
    """Read ``stream`` to its end; append how many bytes it gave."""
    total = 0
    while chunk := stream.read(1 << 16):
        total += len(chunk)
    stream.close()
    counted.append(total)


def run_first_line(
    checkout: Checkout, args: list[str], settings: Mapping[str, str], *, limit_s: float
) -> Measured:
    """``loopfree ARGS | head -1``: read one line, close the pipe, wait for the command to
    exit; ``extra["first_line_s"]`` is when the line came, ``wall_s`` when the pipeline ended."""
    with tempfile.TemporaryDirectory(prefix="loopfree-bench-cmd-") as folder:
        rss_file = Path(folder) / "rss"
        started = time.perf_counter()
        process = subprocess.Popen(
            _wrapped(checkout, args, limit_s, rss_file),
            cwd=checkout.path,
            env=checkout.env(settings),
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            assert process.stdout is not None
            line = process.stdout.readline()
            first = time.perf_counter() - started
            process.stdout.close()  # as head does: the command's next write fails
        finally:
            returncode, peak, timed_out, wall = _finish(process, rss_file, started, limit_s)
    # A closed pipe ends the command with EPIPE/SIGPIPE: that is how `| head -1` ends, not a fault.
    ended = returncode == 0 or (bool(line) and not timed_out)
    measured = Measured(
        wall, peak, 0 if ended else returncode, timed_out, limit_s, line.decode(errors="replace")
    )
    measured.extra["first_line_s"] = first
    return measured


@contextmanager
def serving(
    checkout: Checkout, settings: Mapping[str, str], port: int, log: Path
) -> Iterator[dict[str, float]]:
    """``loopfree ui --port PORT`` of ``checkout``, listening; yields a dict that holds the
    server's peak RSS (MiB; ``VmHWM`` of its own address space, read before it stops)."""
    usage: dict[str, float] = {}
    with log.open("wb") as output:
        process = subprocess.Popen(
            checkout.argv("ui", "--port", str(port)),
            cwd=checkout.path,
            env=checkout.env(settings),
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:

        def listening() -> bool:
            if process.poll() is not None:
                raise StepFailed(f"`loopfree ui` exited: {log.read_text(errors='replace')[-400:]}")
            return port_open(port)

        wait_until(listening, timeout=120, what=f"`loopfree ui` of {checkout.name} to listen")
        yield usage
        usage["peak_rss_mib"] = _high_water_mib(process.pid)
    finally:
        if process.poll() is None:
            process.terminate()
            with suppress(subprocess.TimeoutExpired):
                process.wait(30)
        kill_group(process.pid)
        process.wait()


def _high_water_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# -- services -------------------------------------------------------------------------------------


@dataclass
class Backend:
    """The services of one checkout at one size: a private Redis server and a database."""

    redis: RedisServer
    database_url: str
    home: Path
    redis_before_bytes: int = 0  # used_memory before the big submission (or when empty)

    def settings(self) -> dict[str, str]:
        """The ``LOOPFREE_*`` variables of every command (a local folder store: no job has an
        image, and ``results`` only needs one to exist)."""
        return {
            "LOOPFREE_HOME": str(self.home),
            "LOOPFREE_DATABASE_URL": self.database_url,
            "LOOPFREE_BROKER_URL": self.redis.url,
            "LOOPFREE_STORAGE_URL": (self.home / "store").as_uri(),
            "LOOPFREE_MODEL": MODEL,
        }

    def redis_memory(self) -> dict[str, int]:
        """``used_memory`` now, above ``redis_before_bytes``, and the messages in its lists."""
        client = self.redis.client()
        try:
            used = int(client.info("memory")["used_memory"])
            waiting = sum(
                client.llen(key)
                for key in client.scan_iter(count=1000)
                if client.type(key) == b"list"
            )
        finally:
            client.close()
        return {
            "used_bytes": used,
            "above_before_bytes": used - self.redis_before_bytes,
            "messages_in_lists": waiting,
        }


@contextmanager
def backend(folder: Path, pg_admin_url: str = PG_ADMIN_URL) -> Iterator[Backend]:
    """A private ``redis-server`` (append-only, fsync every second as in docker/compose.yaml)
    and an empty PostgreSQL database (the checkout migrates it: its schema may differ); both
    removed afterwards, whatever happens."""
    server = RedisServer(folder / "redis")
    server.start()
    try:
        client = server.client()
        client.config_set("appendfsync", "everysec")
        empty = int(client.info("memory")["used_memory"])
        client.close()
        database = throwaway_database(pg_admin_url, prefix="loopfree_bench_backlog", migrate=False)
        with database as url:
            home = folder / "home"
            home.mkdir(parents=True, exist_ok=True)
            yield Backend(server, url, home, empty)
    finally:
        server.kill()
