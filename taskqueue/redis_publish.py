"""Publishing job messages straight into kombu's Redis lists, a thousand per round trip.

Celery's ``apply_async`` costs about 0.8 ms of CPU per message (some 700 Python calls) plus one
Redis round trip; it was 88% of a 100,000-job submission. Yet every ``loopfree.generate`` message
for one queue and priority is the same text apart from the job id and kombu's delivery tag. So:

1. Celery and kombu write one message, for a placeholder job id, through the very ``apply_async``
   call ``publish_jobs`` makes, into kombu's in-memory transport: that message is the template;
2. each job's message is the template with the job's id (and a fresh delivery tag) filled in;
3. one ``LPUSH`` per list carries up to ``MESSAGES_PER_LPUSH`` messages, several per pipeline.

What this relies on from kombu's Redis transport: a message is the JSON of the dict its virtual
channel builds (base64 body), stored with ``LPUSH`` in the queue's list for the priority step
(``<queue>:<step>``, or ``<queue>`` for step 0), and consumed with ``BRPOP``. Messages go to the
default exchange, so no binding table is consulted. ``tests/queue/test_redis_publish.py`` checks
the messages and lists against ones kombu itself wrote, and a real worker consumes them.
"""

from __future__ import annotations

import base64
import json
import re
import uuid
from bisect import bisect
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from kombu.utils.json import dumps

if TYPE_CHECKING:
    from celery import Celery

# A UUID no job has: job ids are version 5 (storage.submissions.job_id_for), this is version 4.
PLACEHOLDER_ID = "00000000-0000-4000-8000-000000000000"
_BODY_MARK = "@@loopfree-body@@"
_TAG_MARK = "@@loopfree-delivery-tag@@"
_SLOTS = re.compile("|".join(re.escape(mark) for mark in (PLACEHOLDER_ID, _BODY_MARK, _TAG_MARK)))

MESSAGES_PER_LPUSH = 1_000
LPUSHES_PER_PIPELINE = 10

REDIS_SCHEMES = ("redis://", "rediss://")


def supports(broker_url: str) -> bool:
    """Whether ``broker_url`` is a plain Redis server this module can write to."""
    return broker_url.startswith(REDIS_SCHEMES)


def redis_list(queue: str, broker_priority: int, steps: list[int], sep: str) -> str:
    """The list kombu's Redis transport keeps ``queue``'s messages of ``broker_priority`` in."""
    step = steps[bisect(steps, broker_priority) - 1]
    return f"{queue}{sep}{step}" if step else queue


@dataclass(frozen=True)
class MessageTemplate:
    """The JSON text of one message with its job-specific parts left as ``%s`` slots."""

    text: str  # '%'-escaped JSON, with one %s per slot
    slots: tuple[str, ...]  # "id", "body" or "tag", in the order they appear
    body_around: tuple[bytes, bytes]  # the decoded body before and after the job id

    @classmethod
    def capture(cls, app: Celery, queue_name: str, broker_priority: int) -> MessageTemplate:
        """Have Celery publish a placeholder job to ``queue_name`` over kombu's in-memory
        transport, the way ``publish_jobs`` does, and turn the message into a template."""
        from taskqueue.app import GENERATE_TASK, model_queue_named

        queue = model_queue_named(queue_name)
        # transport= as well: the app's broker_transport (taskqueue.dead_letters) would win.
        with app.connection_for_write("memory://", transport="memory") as connection:
            channel = connection.default_channel
            queue(channel).declare()
            app.signature(GENERATE_TASK).clone(args=(PLACEHOLDER_ID,)).apply_async(
                connection=connection,
                queue=queue,
                priority=broker_priority,
                task_id=PLACEHOLDER_ID,
            )
            message = channel.basic_get(queue_name, no_ack=True)
            if message is None:
                raise RuntimeError(f"kombu's memory transport lost the template of {queue_name}")
            envelope = message.serializable()
            queue(channel).delete()
        return cls.from_envelope(envelope)

    @classmethod
    def from_envelope(cls, envelope: dict) -> MessageTemplate:
        properties = envelope["properties"]
        if properties.get("body_encoding") != "base64":
            raise RuntimeError(f"unexpected body encoding {properties.get('body_encoding')!r}")
        body = base64.b64decode(envelope["body"])
        before, found, after = body.partition(PLACEHOLDER_ID.encode())
        if not found or PLACEHOLDER_ID.encode() in after:
            raise RuntimeError("the job id is not exactly once in the message body")
        marked = {
            **envelope,
            "body": _BODY_MARK,
            "properties": {**properties, "delivery_tag": _TAG_MARK},
        }
        text = dumps(marked)
        pieces = _SLOTS.split(text)
        slots = tuple(
            {PLACEHOLDER_ID: "id", _BODY_MARK: "body", _TAG_MARK: "tag"}[mark]
            for mark in _SLOTS.findall(text)
        )
        escaped = "%s".join(piece.replace("%", "%%") for piece in pieces)
        return cls(escaped, slots, (before, after))

    def render(self, job_id: str) -> str:
        before, after = self.body_around
        values = {
            "id": job_id,
            "body": base64.b64encode(before + job_id.encode() + after).decode(),
            "tag": str(uuid.uuid4()),
        }
        return self.text % tuple(values[slot] for slot in self.slots)


class PublishInterrupted(Exception):
    """Redis failed part-way; ``accepted`` messages had gone out before it did."""

    def __init__(self, accepted: int, error: Exception) -> None:
        super().__init__(str(error))
        self.accepted, self.error = accepted, error


def publish(app: Celery, jobs: Iterable[tuple[str, str, int]]) -> int:
    """LPUSH a message for each ``(job_id, queue_name, broker_priority)``, in order within each
    list; returns how many Redis accepted, or raises ``PublishInterrupted`` saying so."""
    import redis

    options = app.conf.broker_transport_options
    steps, sep = list(options["priority_steps"]), options["sep"]
    templates: dict[tuple[str, int], MessageTemplate] = {}
    lists: dict[str, list[tuple[MessageTemplate, str]]] = {}
    for job_id, queue_name, broker_priority in jobs:
        template = templates.get((queue_name, broker_priority))
        if template is None:
            template = MessageTemplate.capture(app, queue_name, broker_priority)
            templates[queue_name, broker_priority] = template
        key = redis_list(queue_name, broker_priority, steps, sep)
        lists.setdefault(key, []).append((template, job_id))

    accepted = pending = 0
    client = _client(app)
    try:
        pipe = client.pipeline(transaction=False)
        for key, messages in lists.items():
            for start in range(0, len(messages), MESSAGES_PER_LPUSH):
                chunk = messages[start : start + MESSAGES_PER_LPUSH]
                # LPUSH puts each value at the head in turn and BRPOP takes from the tail, so
                # the chunk's first job is served first.
                pipe.lpush(key, *[template.render(job_id) for template, job_id in chunk])
                pending += len(chunk)
                if len(pipe) >= LPUSHES_PER_PIPELINE:
                    pipe.execute()
                    accepted, pending = accepted + pending, 0
        if pending:
            pipe.execute()
            accepted, pending = accepted + pending, 0
    except redis.RedisError as error:
        raise PublishInterrupted(accepted, error) from error
    finally:
        client.close()
    return accepted


def job_ids_in_broker(app: Celery, queue_names: Iterable[str]) -> set[str]:
    """Ids of the jobs that have a message in Redis: waiting in one of ``queue_names``' lists, or
    delivered to a worker and not acknowledged yet (kombu restores those to their queue if the
    worker dies). The reconciler publishes only queued jobs that are in neither.

    Workers pop and producers push while the lists are read, so a message can be missed; its job
    then gets a second message, which is harmless (only one delivery can claim it)."""
    options = app.conf.broker_transport_options
    steps, sep = list(options["priority_steps"]), options["sep"]
    unacked_key = options.get("unacked_key", "unacked")
    ids: set[str] = set()
    client = _client(app)
    try:
        for queue in queue_names:
            for key in dict.fromkeys(redis_list(queue, step, steps, sep) for step in steps):
                for start in range(0, client.llen(key), 10_000):
                    for raw in client.lrange(key, start, start + 9_999):
                        ids.add(_job_id(json.loads(raw)))
        for _tag, raw in client.hscan_iter(unacked_key, count=10_000):
            message, _exchange, _routing_key = json.loads(raw)
            ids.add(_job_id(message))
    finally:
        client.close()
    ids.discard("")
    return ids


@dataclass(frozen=True)
class BrokerView:
    """What Redis holds for the reconciler: ids with a message waiting in a queue, and the
    delivered-but-unacknowledged messages per job id as ``(delivery tag, delivered at)``."""

    waiting: set[str]
    unacked: dict[str, list[tuple[str, float]]]

    def has_live_message(self, job_id: str, *, delivered_after: float) -> bool:
        """Whether ``job_id`` has a message that can still reach a worker: one waiting, or one
        delivered after ``delivered_after`` (its worker may still be working through it).

        An older unacknowledged message counts as lost: kombu returns it to the queue only after
        the visibility timeout (an hour), and the reconciler cannot tell a dead worker's entry
        from a slow live one's. Publishing again is safe either way (claims are guarded)."""
        if job_id in self.waiting:
            return True
        return any(at > delivered_after for _tag, at in self.unacked.get(job_id, ()))

    def stale_tags(self, job_ids: Iterable[str], *, delivered_before: float) -> list[str]:
        """Delivery tags of the unacknowledged messages of ``job_ids`` delivered before then."""
        return [
            tag
            for job_id in job_ids
            for tag, at in self.unacked.get(job_id, ())
            if at <= delivered_before
        ]


def read_broker(app: Celery, queue_names: Iterable[str]) -> BrokerView:
    """The messages of ``queue_names`` waiting in Redis, and every unacknowledged one with the
    time kombu delivered it (its ``unacked_index`` score). Entries that are not ours (not JSON,
    no job id) are skipped: the worker's dead-letter path deals with those."""
    options = app.conf.broker_transport_options
    steps, sep = list(options["priority_steps"]), options["sep"]
    unacked_key = options.get("unacked_key", "unacked")
    index_key = options.get("unacked_index_key", "unacked_index")
    waiting: set[str] = set()
    unacked: dict[str, list[tuple[str, float]]] = {}
    client = _client(app)
    try:
        for queue in queue_names:
            for key in dict.fromkeys(redis_list(queue, step, steps, sep) for step in steps):
                for start in range(0, client.llen(key), 10_000):
                    for raw in client.lrange(key, start, start + 9_999):
                        waiting.add(_safe_job_id(raw, envelope=False))
        delivered = {
            tag.decode() if isinstance(tag, bytes) else tag: at
            for tag, at in client.zrange(index_key, 0, -1, withscores=True)
        }
        for tag, raw in client.hscan_iter(unacked_key, count=10_000):
            tag = tag.decode() if isinstance(tag, bytes) else tag
            job_id = _safe_job_id(raw, envelope=True)
            if job_id:
                # No index entry: kombu writes both in one pipeline, so treat it as just delivered.
                unacked.setdefault(job_id, []).append((tag, delivered.get(tag, float("inf"))))
    finally:
        client.close()
    waiting.discard("")
    return BrokerView(waiting, unacked)


def forget_unacked(app: Celery, tags: Iterable[str]) -> int:
    """Drop unacknowledged entries whose jobs were published again, so kombu does not restore a
    second copy after the visibility timeout (harmless, but it would keep the broker from
    draining). A live worker acking a forgotten entry later deletes nothing, which kombu allows."""
    options = app.conf.broker_transport_options
    unacked_key = options.get("unacked_key", "unacked")
    index_key = options.get("unacked_index_key", "unacked_index")
    tags = list(tags)
    if not tags:
        return 0
    client = _client(app)
    try:
        pipe = client.pipeline(transaction=False)
        for start in range(0, len(tags), 1_000):
            chunk = tags[start : start + 1_000]
            pipe.hdel(unacked_key, *chunk)
            pipe.zrem(index_key, *chunk)
        results = pipe.execute()
    finally:
        client.close()
    return int(sum(results[0::2]))


def _safe_job_id(raw: bytes | str, *, envelope: bool) -> str:
    try:
        message = json.loads(raw)
        if envelope:
            message = message[0]
        return _job_id(message) if isinstance(message, dict) else ""
    except (ValueError, TypeError, IndexError, KeyError, AttributeError):
        return ""


def _client(app: Celery):
    import redis

    return redis.Redis.from_url(app.conf.broker_url, socket_connect_timeout=5)


def _job_id(message: dict) -> str:
    headers = message.get("headers") or {}
    return str(headers.get("id") or "")
