"""Every worker serves Prometheus metrics, by default on 9400; workers sharing a host take the
next free ports. Real ``loopfree worker`` processes scraped over HTTP (embedded home: SQLite and
the filesystem broker)."""

from __future__ import annotations

import re
import socket
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest

from core.settings import Settings
from tests.harness import WorkerProcess, free_port
from worker.metrics import PORTS_TRIED, WorkerMetrics

SERVING = re.compile(r"Prometheus metrics on port (\d+)")


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return response.read().decode()


@contextmanager
def held_ports(count: int, free_after: int = 0) -> Iterator[int]:
    """``count`` consecutive ports, each held by a listening socket (another process's, as far
    as a worker can tell), the ``free_after`` ports after them free when looked at; yields the
    first."""
    for _ in range(50):
        first = free_port()
        with ExitStack() as stack:
            try:
                for port in range(first, first + count + free_after):
                    held = stack.enter_context(socket.socket())
                    held.bind(("0.0.0.0", port))
                    held.listen()
                    if port >= first + count:
                        held.close()  # free again: only looked at
            except OSError:
                continue
            yield first
            return
    raise AssertionError(f"found no {count + free_after} consecutive free ports")


def port_of(worker: WorkerProcess) -> int:
    [port] = SERVING.findall(worker.log_text(tail=1_000_000))
    return int(port)


@pytest.fixture()
def env(tmp_path: Path, queue_model_dir: Path) -> dict[str, str]:
    return {
        "LOOPFREE_HOME": str(tmp_path / "home"),
        "LOOPFREE_MODEL": str(queue_model_dir),
        "LOOPFREE_DEVICE": "cpu",
    }


def test_the_default_metrics_port_is_9400() -> None:
    assert Settings.model_fields["metrics_port"].default == 9400


def test_a_worker_serves_metrics_without_being_told_a_port(env, tmp_path: Path) -> None:
    with WorkerProcess(env, tmp_path / "worker.log") as worker:
        worker.wait_ready()
        port = port_of(worker)  # 9400, or the next free one if this host already uses it
        assert 9400 <= port < 9400 + PORTS_TRIED
        assert "loopfree_worker_busy" in scrape(port)


def test_two_workers_on_one_host_take_the_next_free_ports_and_say_so(env, tmp_path: Path) -> None:
    with held_ports(1, free_after=2) as taken:  # e.g. dcgm-exporter, whose default is 9400 too
        env = {**env, "LOOPFREE_METRICS_PORT": str(taken)}
        first = WorkerProcess(env, tmp_path / "first.log")
        second = WorkerProcess(env, tmp_path / "second.log")
        with first, second:
            first.wait_ready()
            second.wait_ready()
            ports = sorted([port_of(first), port_of(second)])
            assert ports == [taken + 1, taken + 2]
            for port in ports:
                assert "loopfree_worker_busy" in scrape(port)
            for worker in (first, second):
                log = worker.log_text(tail=1_000_000)
                assert log.count(f"metrics port {taken} is taken") == 1, log


def test_port_zero_serves_nothing() -> None:
    assert WorkerMetrics().serve(0) is None


def test_a_host_whose_whole_range_is_taken_gets_a_worker_without_metrics(caplog) -> None:
    with held_ports(PORTS_TRIED) as first:
        assert WorkerMetrics().serve(first) is None
    assert f"metrics ports {first}-{first + PORTS_TRIED - 1} are all taken" in caplog.text
