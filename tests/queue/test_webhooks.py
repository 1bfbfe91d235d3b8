"""Webhooks from the outbox to a real HTTP receiver on loopback: signed, retried, cut at their
deadline, refused for internal addresses, durable across a sender restart, owed on cancel and
again after `requeue --failed`. Embedded SQLite (the outbox itself runs on both backends in
tests/storage/test_webhook_outbox.py)."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time

import pytest
from sqlalchemy import update

from core.errors import UserError
from core.jobspec import JobSpec, ParsedJob
from core.webhooks import WebhookPolicy, WebhookRefused, check_webhook_url, redact_url
from notify.post import body_of, post, signed_headers
from notify.sender import WebhookConfig, WebhookSender
from storage import jobs as job_store
from storage import webhooks as outbox
from storage.db import make_engine, session_scope
from storage.models import WebhookDelivery, utcnow
from storage.submissions import (
    create_submission,
    insert_jobs,
    job_id_for,
    mark_submission_finished,
)
from tests.harness import run_cli
from tests.webhook_receiver import webhook_receiver

LOOPBACK = WebhookPolicy.parse("127.0.0.1")
SECRET = "whsec-test"


def verify(secret: str, headers: dict[str, str], body: bytes, tolerance_s: int = 300) -> bool:
    """The receiver's check, as README's "Webhooks" shows it."""
    timestamp = headers["X-Loopfree-Timestamp"]
    expected = (
        "sha256="
        + hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    )
    fresh = abs(time.time() - int(timestamp)) <= tolerance_s
    return fresh and hmac.compare_digest(expected, headers["X-Loopfree-Signature"])


@pytest.fixture()
def engine(embedded_settings):
    engine = make_engine(embedded_settings.resolved_database_url)
    yield engine
    engine.dispose()


def submission(engine, url: str, count: int = 1) -> tuple[str, list[str]]:
    with session_scope(engine) as session:
        ref = create_submission(
            session, source="hooked.txt", defaults={}, job_count=count, webhook_url=url
        )
        insert_jobs(
            session,
            ref.id,
            [
                ParsedJob(
                    JobSpec(prompt=f"p{i}", seed=i, height=64, width=64, model="t/tiny"),
                    line_number=i + 1,
                    position=i,
                )
                for i in range(count)
            ],  # fmt: skip
        )
    return ref.id, [job_id_for(ref.id, i) for i in range(count)]


def finished(engine, url: str) -> str:
    """A one-job submission whose job failed and which is marked finished (owes a webhook)."""
    submission_id, ids = submission(engine, url)
    with session_scope(engine) as session:
        job_store.claim_jobs(session, ids, worker="w", batch_id="b", batch_size=1)
        job_store.mark_failed(session, ids[0], "boom")
        assert mark_submission_finished(session, submission_id)
    return submission_id


def delivery(engine, submission_id: str) -> WebhookDelivery:
    with session_scope(engine) as session:
        (row,) = outbox.deliveries_of(session, submission_id)
        session.expunge(row)
    return row


def make_due(engine) -> None:
    with session_scope(engine) as session:
        session.execute(update(WebhookDelivery).values(next_attempt_at=utcnow()))


def sender(engine, **config) -> WebhookSender:
    config.setdefault("policy", LOOPBACK)
    return WebhookSender(engine, WebhookConfig(**config), start=False)


def test_a_delivery_is_signed_so_the_receiver_can_verify_it(engine) -> None:
    with webhook_receiver([204]) as receiver:
        submission_id = finished(engine, receiver.url)
        hooks = sender(engine, secret=SECRET)
        assert hooks.send_due() == 1
        hooks.close()
    (request,) = receiver.received
    assert verify(SECRET, request.headers, request.body)
    assert not verify("another secret", request.headers, request.body)
    payload = json.loads(request.body)
    assert payload["submission_id"] == submission_id and payload["event"] == "finished"
    assert request.headers["X-Loopfree-Delivery"] == delivery(engine, submission_id).id
    row = delivery(engine, submission_id)
    assert row.status == outbox.SENT and row.attempts == 1 and row.sent_at is not None


def test_a_server_error_is_retried_and_sent_is_recorded_only_on_2xx(engine) -> None:
    with webhook_receiver([503, 204]) as receiver:
        submission_id = finished(engine, receiver.url)
        hooks = sender(engine)
        assert hooks.send_due() == 1
        row = delivery(engine, submission_id)
        assert row.status == outbox.PENDING and row.last_error == "HTTP 503"
        assert 5 < (row.next_attempt_at - utcnow()).total_seconds() <= 10  # first backoff: 10 s
        assert hooks.send_due() == 0  # not due yet
        make_due(engine)
        assert hooks.send_due() == 1
        hooks.close()
    row = delivery(engine, submission_id)
    assert row.status == outbox.SENT and row.attempts == 2 and receiver.count() == 2


@pytest.mark.parametrize(
    ("status", "final"), [(404, outbox.GAVE_UP), (302, outbox.GAVE_UP), (429, outbox.PENDING)]
)
def test_a_refusal_gives_up_at_once_but_too_many_requests_is_retried(engine, status, final):
    with webhook_receiver([status]) as receiver:
        submission_id = finished(engine, receiver.url)
        hooks = sender(engine)
        hooks.send_due()
        hooks.close()
    assert delivery(engine, submission_id).status == final


def test_a_trickling_receiver_is_cut_at_the_deadline(engine) -> None:
    # One byte every 0.2 s of a 10 kB answer: without a total deadline this attempt would take
    # half an hour, and httpx's per-read timeout never fired on it.
    with webhook_receiver(trickle_s=0.2) as receiver:
        submission_id = finished(engine, receiver.url)
        hooks = sender(engine, timeout_s=1.0)
        started = time.monotonic()
        assert hooks.send_due() == 1
        took = time.monotonic() - started
        hooks.close()
    row = delivery(engine, submission_id)
    assert row.status == outbox.PENDING and row.last_error == "no complete answer within 1 s"
    assert took < 10  # the deadline (1 s) plus slack for a loaded machine, not 2,000 s


def test_a_loopback_receiver_is_refused_at_send_time_without_the_allow_list(engine) -> None:
    with webhook_receiver([204]) as receiver:
        submission_id = finished(engine, receiver.url)
        hooks = sender(engine, policy=WebhookPolicy())
        hooks.send_due()
        hooks.close()
    row = delivery(engine, submission_id)
    assert receiver.count() == 0
    assert row.status == outbox.GAVE_UP and "LOOPFREE_WEBHOOK_ALLOW" in row.last_error


def test_a_name_that_resolves_to_an_internal_address_at_send_time_is_refused() -> None:
    """DNS rebinding: public at submit, loopback when the POST connects."""
    answers = iter([["93.184.216.34"], ["127.0.0.1"]])

    def rebinding(host, port):
        return next(answers)

    url = "http://hooks.example.com/done"
    assert check_webhook_url(url, WebhookPolicy(), rebinding) == url
    outcome = post(url, b"{}", {}, policy=WebhookPolicy(), deadline_s=2, resolve=rebinding)
    assert not outcome.sent and not outcome.retry
    assert "127.0.0.1" in outcome.detail and "loopback" in outcome.detail


def test_a_host_lookup_that_hangs_ends_the_attempt_at_its_deadline() -> None:
    release = threading.Event()

    def hanging(host, port):
        release.wait(30)  # a resolver that never answers, until the test ends
        return ["93.184.216.34"]

    started = time.monotonic()
    try:
        outcome = post(
            "http://hooks.example.com/done",
            b"{}",
            {},
            policy=WebhookPolicy(),
            deadline_s=1,
            resolve=hanging,
        )
    finally:
        release.set()
    assert time.monotonic() - started < 5, "the attempt waited for the lookup"
    assert not outcome.sent and outcome.retry and "within 1 s" in outcome.detail


def test_a_delivery_left_by_a_stopped_sender_is_sent_by_the_next_one(engine) -> None:
    with webhook_receiver([204]) as receiver:
        first = finished(engine, receiver.url)
        stopped = sender(engine)  # never started: stopped before it sent anything
        stopped.close()
        second = finished(engine, receiver.url)
        with session_scope(engine) as session:  # a sender that died mid-attempt: its lease
            outbox.claim_due(session, limit=1, lease_s=0.5)
        restarted = WebhookSender(engine, WebhookConfig(policy=LOOPBACK), poll_s=0.2)
        try:
            deadline = time.monotonic() + 30
            while receiver.count() < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            restarted.close()
    assert {json.loads(r.body)["submission_id"] for r in receiver.received} == {first, second}
    assert delivery(engine, first).status == delivery(engine, second).status == outbox.SENT


def test_cancelling_the_last_open_jobs_finishes_the_submission_and_owes_its_webhook(
    engine, embedded_settings
) -> None:
    from status.queries import cancel
    from taskqueue.app import make_celery

    app = make_celery(embedded_settings)
    with webhook_receiver([204]) as receiver:
        submission_id, ids = submission(engine, receiver.url, count=2)
        assert cancel(engine, app, ids[0]).cancelled == 1
        with session_scope(engine) as session:
            assert outbox.deliveries_of(session, submission_id) == []  # one job still queued
        assert cancel(engine, app, submission_id).cancelled == 1
        hooks = sender(engine)
        assert hooks.send_due() == 1
        hooks.close()
    (request,) = receiver.received
    assert json.loads(request.body)["counts"] == {"cancelled": 2}


def test_requeue_failed_reopens_the_submission_and_its_next_finish_owes_a_new_webhook(
    engine, embedded_settings
) -> None:
    from fleet.reconcile import reconcile
    from taskqueue.app import make_celery

    submission_id = finished(engine, "https://hooks.example.com/x")
    reconcile(engine, make_celery(embedded_settings), stuck_after_s=30, stuck=False, failed=True)
    with session_scope(engine) as session:
        assert mark_submission_finished(session, submission_id) is False  # its job is queued
    job_id = job_id_for(submission_id, 0)
    with session_scope(engine) as session:
        job_store.claim_jobs(session, [job_id], worker="w", batch_id="c", batch_size=1)
        job_store.mark_failed(session, job_id, "boom again")
        assert mark_submission_finished(session, submission_id)
        assert [d.generation for d in outbox.deliveries_of(session, submission_id)] == [1, 2]


@pytest.mark.parametrize(
    ("url", "named"),
    [
        ("http://127.0.0.1:8080/hook", "127.0.0.1 is a loopback address"),
        ("http://169.254.169.254/latest/meta-data/", "cloud metadata"),
        ("http://[fd00:ec2::254]/", "cloud metadata"),
        ("http://10.1.2.3/hook", "private"),
        ("http://localhost/hook", "loopback"),
        ("ftp://hooks.example.com/x", "only http:// and https://"),
    ],
)
def test_internal_and_non_http_urls_are_refused_with_a_reason(url, named) -> None:
    with pytest.raises(WebhookRefused, match=named):
        check_webhook_url(url, WebhookPolicy())


def test_the_allow_list_opens_hosts_addresses_and_networks() -> None:
    policy = WebhookPolicy.parse("localhost, 10.0.0.0/8,127.0.0.1")
    for url in ("http://localhost:9/x", "http://10.9.8.7/x", "http://127.0.0.1/x"):
        assert check_webhook_url(url, policy) == url
    with pytest.raises(UserError, match="not a CIDR"):
        WebhookPolicy.parse("10.0.0.0/99")


def test_urls_are_masked_in_logs() -> None:
    assert redact_url("https://user:pw@hooks.example.com:8443/t/abc?token=x") == (
        "https://hooks.example.com:8443/…"
    )


def test_signed_headers_carry_the_timestamp_the_signature_covers() -> None:
    body = body_of({"b": 1, "a": 2})
    headers = signed_headers(body, secret=SECRET, event="finished", delivery_id="d", now=1_700_000)
    assert body == b'{"a":2,"b":1}' and headers["X-Loopfree-Timestamp"] == "1700000"
    assert "X-Loopfree-Signature" not in signed_headers(
        body, secret=None, event="finished", delivery_id="d"
    )


def test_submit_refuses_a_metadata_webhook_in_one_line(tmp_path, queue_model_dir) -> None:
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red cube\n")
    env = {"LOOPFREE_HOME": str(tmp_path / "home"), "LOOPFREE_MODEL": str(queue_model_dir)}
    done = run_cli(
        ["submit", str(prompts), "--webhook", "http://169.254.169.254/latest/meta-data/"], env
    )
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "169.254.169.254" in lines[0], done.stderr
    assert "LOOPFREE_WEBHOOK_ALLOW" in lines[0] and "Traceback" not in done.stderr
    listed = run_cli(["submissions", "--json"], env)
    assert json.loads(listed.stdout or "[]") == []  # nothing was queued


def test_without_a_secret_each_worker_warns_once_at_its_first_unsigned_webhook(
    engine, monkeypatch, caplog
) -> None:
    import notify.sender as webhook_sender

    monkeypatch.setattr(webhook_sender, "_warned_unsigned", False)
    with caplog.at_level("WARNING", logger="notify.sender"):
        sender(engine).close()  # nothing to send: nothing to warn about
        assert not [r for r in caplog.records if "LOOPFREE_WEBHOOK_SECRET" in r.message]
        with webhook_receiver([204, 204]) as receiver:
            for _ in range(2):
                finished(engine, receiver.url)
                hooks = sender(engine)
                assert hooks.send_due() == 1
                hooks.close()
    warnings = [r.message for r in caplog.records if "LOOPFREE_WEBHOOK_SECRET" in r.message]
    assert len(warnings) == 1 and "unsigned" in warnings[0]
