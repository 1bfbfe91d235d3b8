"""Real processes for tests: ``loopfree`` workers and commands, private servers a test may break.

They live in ``tests/harness.py``, shared with the benchmarks; this module keeps the names the
fault and queue tests import from it. Everything there starts an actual process (or a real server
socket) and stops it the way an operator or a crash would: SIGTERM, SIGKILL, ``pg_ctl stop``, a
stopped listener. Fault tests own these servers, so breaking one never disturbs the shared
services other tests use.
"""

from __future__ import annotations

from tests.harness import (
    REPO_ROOT,
    MotoServer,
    PostgresServer,
    RedisServer,
    WorkerProcess,
    port_open,
    run_cli,
    settings_from,
    wait_until,
)

__all__ = [
    "REPO_ROOT",
    "MotoServer",
    "PostgresServer",
    "RedisServer",
    "WorkerProcess",
    "port_open",
    "run_cli",
    "settings_from",
    "wait_until",
]
