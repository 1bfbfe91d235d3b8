"""``loopfree tokens`` and ``loopfree api`` as an operator runs them: a token is printed once and
only its hash is stored; list shows ids, never secrets; a revoked token stops working at once;
the API will not listen beyond loopback before a token exists."""

from __future__ import annotations

import json
from pathlib import Path

import httpx

from tests.api.conftest import Fleet
from tests.harness import run_cli


def test_a_token_is_shown_once_stored_as_a_hash_listed_by_id_and_revoked_at_once(
    fleet: Fleet,
) -> None:
    made = run_cli(
        ["tokens", "create", "--owner", "carol", "--quota-queued", "10", "--expires", "30d"],
        fleet.env,
    )
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    assert token.startswith("lf_") and len(token) > 50
    token_id = token.split("_")[1]
    dump = json.dumps([list(map(str, row)) for row in _rows(fleet, "SELECT * FROM api_tokens")])
    assert token not in dump and token.split("_", 2)[2] not in dump
    listed = run_cli(["tokens", "list", "--json"], fleet.env)
    records = [json.loads(line) for line in listed.stdout.splitlines()]
    mine = next(record for record in records if record["id"] == f"lf_{token_id}")
    assert (mine["owner"], mine["quota_queued"], mine["admin"]) == ("carol", 10, False)
    assert token not in listed.stdout
    auth = {"Authorization": f"Bearer {token}"}
    assert httpx.get(f"{fleet.url}/v1/submissions", headers=auth).status_code == 200
    revoked = run_cli(["tokens", "revoke", f"lf_{token_id}"], fleet.env)
    assert revoked.returncode == 0, revoked.stderr
    assert httpx.get(f"{fleet.url}/v1/submissions", headers=auth).status_code == 401
    wrong = run_cli(["tokens", "revoke", "lf_000000000000"], fleet.env)
    assert wrong.returncode == 2 and "tokens list" in wrong.stderr


def test_the_api_refuses_to_listen_beyond_loopback_while_no_token_exists(tmp_path: Path) -> None:
    env = {"LOOPFREE_HOME": str(tmp_path / "home")}
    refused = run_cli(["api", "--host", "0.0.0.0", "--port", "1"], env, timeout=60)
    assert refused.returncode == 2
    assert "tokens create" in refused.stderr and "Traceback" not in refused.stderr


def _rows(fleet: Fleet, sql: str) -> list[tuple]:
    from sqlalchemy import text

    from storage.db import session_scope

    with session_scope(fleet.engine) as session:
        return [tuple(row) for row in session.execute(text(sql))]
