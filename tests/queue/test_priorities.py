"""Job priorities on the broker: one mirror in, the same mirror out."""

from __future__ import annotations

from celery_batches import SimpleRequest

from core.jobspec import DEFAULT_PRIORITY, MAX_PRIORITY, MIN_PRIORITY, PRIORITY_LEVELS
from taskqueue.app import broker_priority, job_priority
from taskqueue.batches import jobs_from

JOB_IDS = [f"00000000-0000-4000-8000-00000000000{i}" for i in range(4)]


def request(job_id: str, delivery_info: dict) -> SimpleRequest:
    return SimpleRequest(
        id=job_id, name="loopfree.generate", args=(job_id,), kwargs={},
        delivery_info=delivery_info, hostname="test", ignore_result=True, reply_to=None,
        correlation_id=None, request_dict=None,
    )  # fmt: skip


def test_high_priority_jobs_are_served_first_on_the_broker() -> None:
    high, normal, low = (broker_priority(PRIORITY_LEVELS[n]) for n in ("high", "normal", "low"))
    assert high == 0 < normal < low  # Redis serves the lowest number first


def test_job_priority_undoes_broker_priority_over_the_whole_range() -> None:
    for priority in range(MIN_PRIORITY, MAX_PRIORITY + 1):
        assert job_priority(broker_priority(priority)) == priority


def test_a_priority_out_of_range_is_held_at_the_nearest_end() -> None:
    assert broker_priority(MAX_PRIORITY + 5) == broker_priority(MAX_PRIORITY)
    assert job_priority(-3) == job_priority(MIN_PRIORITY) == MAX_PRIORITY


def test_delivered_messages_carry_their_jobs_priority_back() -> None:
    delivered = [
        request(JOB_IDS[0], {"priority": broker_priority(PRIORITY_LEVELS["high"])}),
        request(JOB_IDS[1], {"priority": broker_priority(PRIORITY_LEVELS["low"])}),
        request(JOB_IDS[2], {}),  # the filesystem broker has no priorities
        request(JOB_IDS[3], {"priority": broker_priority(7)}),
    ]
    assert jobs_from(delivered) == {
        JOB_IDS[0]: PRIORITY_LEVELS["high"],
        JOB_IDS[1]: PRIORITY_LEVELS["low"],
        JOB_IDS[2]: DEFAULT_PRIORITY,
        JOB_IDS[3]: 7,
    }
