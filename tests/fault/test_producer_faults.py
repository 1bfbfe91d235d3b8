"""The producer's side: submitting while the broker or the database is down, a model path that
escapes the allowed roots, and passwords that must never be printed. Nothing is half-queued."""

from __future__ import annotations

import json
import os

import pytest
from sqlalchemy import func, select

from core.errors import BrokerUnavailable, DatabaseUnavailable
from storage.db import session_scope
from storage.models import Job, Submission
from taskqueue.app import PRIORITY_STEPS, REDIS_SEP, queue_name
from tests.conftest import free_port
from tests.fault.fleet import rows
from tests.helpers_processes import run_cli

BROKER_PASSWORD = "broker-Secret-99"
DATABASE_PASSWORD = "db-Secret-42"


def write_prompts(path, prompt_rows) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in prompt_rows), encoding="utf-8")
    return str(path)


def recorded(fleet) -> tuple[int, int]:
    with session_scope(fleet.engine) as session:
        submissions = session.scalar(select(func.count()).select_from(Submission))
        jobs = session.scalar(select(func.count()).select_from(Job))
    return submissions, jobs


def messages_waiting(redis_server, model: str) -> int:
    name = queue_name(model)
    client = redis_server.client()
    lists = [name] + [f"{name}{REDIS_SEP}{step}" for step in PRIORITY_STEPS[1:]]
    return sum(client.llen(key) for key in lists)


def test_submit_while_the_broker_is_down_fails_cleanly_and_records_nothing(make_fleet, tmp_path):
    fleet = make_fleet(broker_url=f"redis://:{BROKER_PASSWORD}@127.0.0.1:{free_port()}/0")
    with pytest.raises(BrokerUnavailable) as refused:
        fleet.submit(rows(3))
    message = str(refused.value)
    assert "broker" in message and "nothing was submitted" in message
    assert BROKER_PASSWORD not in message and "redis://:***@127.0.0.1" in message

    done = run_cli(["submit", write_prompts(tmp_path / "p.jsonl", rows(3))], fleet.env)
    assert done.returncode == 75, done.stderr  # EX_TEMPFAIL: trying again later may work
    assert done.stderr.startswith("error: the broker at redis://:***@127.0.0.1:")
    assert "nothing was submitted" in done.stderr
    assert BROKER_PASSWORD not in done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    assert recorded(fleet) == (0, 0)


def test_submit_while_the_database_is_down_fails_whole_names_it_and_queues_nothing(
    make_fleet, redis_server, tmp_path
):
    database_url = (
        f"postgresql+psycopg://loopfree:{DATABASE_PASSWORD}@127.0.0.1:{free_port()}/loopfree"
    )
    fleet = make_fleet(broker_url=redis_server.url, database_url=database_url)
    with pytest.raises(DatabaseUnavailable) as refused:
        fleet.submit(rows(3))
    assert "Cannot use the database at postgresql+psycopg://loopfree:***@" in str(refused.value)

    done = run_cli(["submit", write_prompts(tmp_path / "p.jsonl", rows(3))], fleet.env)
    assert done.returncode == 75, done.stderr
    assert done.stderr.startswith("error: Cannot use the database at postgresql+psycopg://")
    assert DATABASE_PASSWORD not in done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    assert messages_waiting(redis_server, fleet.settings.model) == 0


def test_a_model_path_outside_the_allowed_roots_is_refused_at_submit_and_nothing_is_queued(
    make_fleet, redis_server, tmp_path, fault_model_dir, request
):
    roots = fault_model_dir.parent
    outside = tmp_path / "outside-model"
    outside.mkdir()
    escape = roots / f"escape-{os.getpid()}"
    escape.symlink_to(outside)  # inside the root by name, outside once resolved
    request.addfinalizer(escape.unlink)
    fleet = make_fleet(broker_url=redis_server.url, model_roots=json.dumps([str(roots)]))
    prompts = [
        {"prompt": "allowed", "model": str(fault_model_dir)},
        {"prompt": "climbs out", "model": f"{roots}/../{outside.parent.name}/outside-model"},
        {"prompt": "absolute", "model": str(outside)},
        {"prompt": "a symlink", "model": str(escape)},
    ]
    done = run_cli(["submit", write_prompts(tmp_path / "p.jsonl", prompts)], fleet.env)
    assert done.returncode == 2, done.stderr
    for line in (2, 3, 4):
        assert f"line {line}" in done.stderr
    assert done.stderr.count("outside the allowed model roots") == 3
    assert "Traceback" not in done.stderr
    assert recorded(fleet) == (0, 0)
    assert messages_waiting(redis_server, fleet.settings.model) == 0
