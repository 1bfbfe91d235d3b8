"""A webhook receiver that trickles its answer (one byte every 5 s) parks nothing.

Before the outbox, webhooks ran in the upload pool with a per-read timeout: eight submissions
pointing at such a receiver left the next 100 jobs with no success after two minutes. Now the
POSTs leave from the worker's webhook sender, each attempt cut at its 10 s deadline (the default),
so the jobs render as if there were no webhooks (the throughput figure is measured by
bench/bench_webhooks.py, not asserted here) and the deliveries wait, pending, for their retries.
"""

from __future__ import annotations

import pytest
from sqlalchemy import select

from storage import webhooks as outbox
from storage.db import session_scope
from storage.models import WebhookDelivery
from tests.fault.fleet import rows
from tests.fault.reconcile import assert_reconciled
from tests.webhook_receiver import webhook_receiver

pytestmark = pytest.mark.slow

HOOKED = 8
JOBS = 100


def deliveries(fleet) -> list[WebhookDelivery]:
    with session_scope(fleet.engine) as session:
        found = list(session.scalars(select(WebhookDelivery)))
        session.expunge_all()
    return found


def test_a_trickling_receiver_blocks_neither_rendering_nor_the_other_deliveries(
    make_fleet, redis_server
):
    with webhook_receiver(trickle_s=5.0) as receiver:
        fleet = make_fleet(broker_url=redis_server.url, webhook_allow="127.0.0.1")
        worker = fleet.start_worker()
        worker.wait_ready()
        hooked = [fleet.submit(rows(1, seed=i), webhook_url=receiver.url) for i in range(HOOKED)]
        hooked_ids = [report.submission_id for report in hooked]
        # Their deliveries are owed once they finish; the sender starts trickling with them.
        fleet.wait_settled(*hooked_ids, timeout=120)
        fleet.wait(lambda: receiver.count() >= 1, timeout=60, what="a first POST")
        bulk = fleet.submit(rows(JOBS, seed=1000))

        fleet.wait_settled(bulk.submission_id, timeout=300)
        outcome = assert_reconciled(fleet, bulk.submission_id, submitted=JOBS)
        assert outcome.counts["succeeded"] == JOBS, dict(outcome.counts)
        assert_reconciled(fleet, *hooked_ids, submitted=HOOKED)

        # Every delivery was attempted and cut at its deadline; none counts as sent (no 2xx ever
        # arrived), and each waits for its retry, for an hour.
        fleet.wait(
            lambda: (
                all(d.attempts >= 1 and d.last_error for d in deliveries(fleet))
                and len(deliveries(fleet)) == HOOKED
            ),
            timeout=120,
            what="every delivery attempted",
        )
    owed = deliveries(fleet)
    assert sorted(d.submission_id for d in owed) == sorted(hooked_ids)
    for delivery in owed:
        assert delivery.status == outbox.PENDING and delivery.sent_at is None, delivery
        assert delivery.last_error == "no complete answer within 10 s", delivery.last_error
    assert worker.alive()
