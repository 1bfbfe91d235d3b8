"""Quotas, the rate limit and many clients at once, on a real server and PostgreSQL: a quota
refuses with 429, Retry-After and the quota's name, and frees up again (jobs finished or
cancelled; the next UTC day); concurrent submits can never pass a quota together; 50 clients
submitting at once lose and duplicate nothing."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import httpx
import pytest

from loopfree_client import Client, QuotaExceeded
from tests.api.conftest import Fleet, ServedApi


def _submit(fleet: Fleet, token: str, body: dict) -> httpx.Response:
    return httpx.post(
        f"{fleet.url}/v1/submissions",
        json=body,
        headers={"Authorization": f"Bearer {token}"},
        timeout=120,
    )


def test_the_queued_quota_refuses_with_429_and_frees_up_when_jobs_are_cancelled(
    fleet: Fleet,
) -> None:
    token = fleet.token("queued-owner", quota_queued=5)
    first = _submit(fleet, token, {"jobs": ["a fox"] * 5})
    assert first.status_code == 201
    refused = _submit(fleet, token, {"jobs": ["one more"]})
    assert refused.status_code == 429
    assert int(refused.headers["Retry-After"]) > 0
    problem = refused.json()
    assert (problem["quota"], problem["limit"], problem["used"], problem["requested"]) == (
        "queued", 5, 5, 1,
    )  # fmt: skip
    assert "quota-queued" in problem["detail"] and "cancel" in problem["detail"]
    assert fleet.count("SELECT count(*) FROM submissions WHERE owner = 'queued-owner'") == 1
    cancelled = httpx.delete(
        f"{fleet.url}/v1/submissions/{first.json()['id']}",
        headers={"Authorization": f"Bearer {token}"},
    )
    assert cancelled.json()["cancelled"] == 5
    assert _submit(fleet, token, {"jobs": ["one more"]}).status_code == 201


def test_the_daily_quota_counts_pixels_times_steps_and_resets_the_next_utc_day(
    fleet: Fleet,
) -> None:
    token = fleet.token("daily-owner", quota_daily_units=8)
    big = _submit(fleet, token, {"jobs": ["a big one"], "height": 1024, "width": 1024, "steps": 8})
    assert big.status_code == 201 and big.json()["intake"]["cost_units"] == 8
    small = {"jobs": ["a small one"], "height": 256, "width": 256}
    refused = _submit(fleet, token, small)
    assert refused.status_code == 429
    problem = refused.json()
    assert (problem["quota"], problem["used"], problem["requested"]) == ("daily_images", 8, 0.25)
    wait = int(refused.headers["Retry-After"])
    assert 0 < wait <= 24 * 3600 and "00:00 UTC" in problem["detail"]
    fleet.clock.shift = timedelta(days=1)
    try:
        accepted = _submit(fleet, token, small)
    finally:
        fleet.clock.shift = timedelta()
    assert accepted.status_code == 201 and accepted.json()["intake"]["cost_units"] == 0.25


def test_concurrent_submits_never_pass_a_quota_together(fleet: Fleet) -> None:
    # 24 requests of 1 unit each race for a daily quota of 10 and 8 open jobs at once: exactly
    # 8 get in (the tighter quota), whatever the interleaving, and the charges add up.
    token = fleet.token("racing-owner", quota_daily_units=10, quota_queued=8)
    start = threading.Barrier(24)

    def one(index: int) -> int:
        start.wait()
        return _submit(
            fleet, token, {"jobs": [f"race {index}"], "height": 512, "width": 512}
        ).status_code

    with ThreadPoolExecutor(24) as pool:
        statuses = list(pool.map(one, range(24)))
    assert sorted(statuses) == [201] * 8 + [429] * 16
    assert fleet.count("SELECT count(*) FROM jobs j JOIN submissions s ON s.id = j.submission_id "
                       "WHERE s.owner = 'racing-owner'") == 8  # fmt: skip
    assert fleet.count("SELECT jobs FROM owner_usage WHERE owner = 'racing-owner'") == 8


def test_an_idempotent_resubmit_is_not_charged_again_nor_refused(fleet: Fleet) -> None:
    token = fleet.token("resubmit-owner", quota_daily_units=1, quota_queued=1)
    body = {"jobs": ["once"], "height": 512, "width": 512}
    headers = {"Authorization": f"Bearer {token}", "Idempotency-Key": "job-of-monday"}
    first = httpx.post(f"{fleet.url}/v1/submissions", json=body, headers=headers, timeout=60)
    again = httpx.post(f"{fleet.url}/v1/submissions", json=body, headers=headers, timeout=60)
    assert (first.status_code, again.status_code) == (201, 200)
    assert first.json()["id"] == again.json()["id"]
    assert fleet.count("SELECT pixel_steps FROM owner_usage WHERE owner = 'resubmit-owner'") == (
        512 * 512 * 4
    )


def test_the_rate_limit_answers_429_with_retry_after_and_the_client_waits_it_out(
    fleet: Fleet,
) -> None:
    # Its own server: bursts of 3, one request per 5 s after that. Ten requests in a row meet
    # the limit unless each takes over 5 s.
    settings = fleet.settings.model_copy(update={"api_rate_per_s": 0.2, "api_rate_burst": 3})
    token = fleet.token("chatty-owner")
    headers = {"Authorization": f"Bearer {token}"}
    with ServedApi(settings) as api:
        statuses = [
            httpx.get(f"{api.url}/v1/models", headers=headers).status_code for _ in range(10)
        ]
        assert statuses[:3] == [200, 200, 200] and 429 in statuses
        refused = httpx.get(f"{api.url}/v1/models", headers=headers)
        assert refused.status_code == 429 and refused.json()["quota"] == "requests"
        assert 1 <= int(refused.headers["Retry-After"]) <= 5
        other = httpx.get(
            f"{api.url}/v1/models", headers={"Authorization": f"Bearer {fleet.token('quiet')}"}
        )
        assert other.status_code == 200  # a bucket per token
        with Client(api.url, token) as client:  # waits for Retry-After instead of failing
            assert isinstance(client.models(), list)


def test_a_quota_refusal_reaches_the_client_as_quota_exceeded(fleet: Fleet) -> None:
    with Client(fleet.url, fleet.token("small-owner", quota_queued=1)) as client:
        client.submit(["the one"])
        with pytest.raises(QuotaExceeded) as refused:
            client.submit(["one too many"])
    assert refused.value.problem["quota"] == "queued" and refused.value.retry_after_s


def test_fifty_clients_submitting_at_once_make_5000_rows_without_a_duplicate(
    fleet: Fleet,
) -> None:
    token = fleet.token("crowd-owner")
    start = threading.Barrier(50)

    def one(index: int) -> str:
        with Client(fleet.url, token, timeout_s=300) as client:
            start.wait()
            prompts = [f"client {index} prompt {n}" for n in range(100)]
            return client.submit(prompts, seed=index * 1000).id

    with ThreadPoolExecutor(50) as pool:
        ids = list(pool.map(one, range(50)))
    assert len(set(ids)) == 50
    owned = "FROM jobs j JOIN submissions s ON s.id = j.submission_id WHERE s.owner = 'crowd-owner'"
    assert fleet.count(f"SELECT count(*) {owned}") == 5000
    assert fleet.count(f"SELECT count(DISTINCT j.prompt) {owned}") == 5000
    assert fleet.count("SELECT count(*) FROM submissions WHERE owner = 'crowd-owner'") == 50
    assert (
        fleet.count("SELECT coalesce(sum(queued), 0) FROM flows WHERE owner = 'crowd-owner'")
        == 5000
    )
