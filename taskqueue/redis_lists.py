"""What this project knows of kombu's Redis lists: publishing into them in bulk, reading which
jobs wait in them, and taking messages back out.

Publishing: Celery's ``apply_async`` costs about 0.8 ms of CPU per message (some 700 Python calls)
plus one Redis round trip; it was 88% of a 100,000-job submission. Yet every ``loopfree.generate``
message for one queue and priority is the same text apart from the job id and kombu's delivery tag.
So:

1. Celery and kombu write one message, for a placeholder job id, through the very ``apply_async``
   call ``publish_jobs`` makes, into kombu's in-memory transport: that message is the template;
2. each job's message is the template with the job's id (and a fresh delivery tag) filled in;
3. one ``LPUSH`` per list carries up to ``MESSAGES_PER_LPUSH`` messages, several per pipeline.

Reading and taking back: a model's lists hold only its window of jobs (``fleet.dispatch``), a few
thousand messages at most, so the reconciler may read them whole to see which window jobs still
have a message (``waiting_job_ids``), and a cancel may remove its jobs' messages
(``take_back``). Nothing here reads kombu's bookkeeping of delivered messages (its ``unacked``
hash): a message a worker holds is vouched for by the worker itself (``jobs.dispatched_at``).

What this relies on from kombu's Redis transport: a message is the JSON of the dict its virtual
channel builds (base64 body, the job id as ``headers.id``), stored with ``LPUSH`` in the queue's
list for the priority step (``<queue><sep><step>``, or ``<queue>`` for step 0), and consumed with
``BRPOP``. Messages go to the default exchange, so no binding table is consulted.
``tests/queue/test_redis_lists.py`` checks the messages and lists against ones kombu itself
wrote, and a real worker consumes them.
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

from taskqueue.redis_client import redis_client

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
        from taskqueue.queues import GENERATE_TASK, model_queue_named

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
    client = redis_client(app)
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
    return accepted


def queue_lists(app: Celery, queue_name: str) -> list[str]:
    """The Redis lists that hold ``queue_name``'s messages, one per priority step."""
    options = app.conf.broker_transport_options
    steps, sep = list(options["priority_steps"]), options["sep"]
    return list(dict.fromkeys(redis_list(queue_name, step, steps, sep) for step in steps))


def waiting_job_ids(app: Celery, queue_name: str) -> set[str]:
    """Ids of the jobs whose messages wait in ``queue_name``'s lists (not yet popped by a
    worker). Workers pop while the lists are read, so one may be missed: the reconciler then
    publishes its job again, which is harmless (only one delivery can claim it)."""
    client = redis_client(app)
    waiting: set[str] = set()
    for key in queue_lists(app, queue_name):
        for start in range(0, client.llen(key), _READ_CHUNK):
            for raw in client.lrange(key, start, start + _READ_CHUNK - 1):
                waiting.add(_safe_job_id(raw))
    waiting.discard("")
    return waiting


def waiting_count(app: Celery, queue_name: str) -> int:
    """Messages waiting in ``queue_name``'s lists (one LLEN per priority step)."""
    client = redis_client(app)
    return sum(int(client.llen(key)) for key in queue_lists(app, queue_name))


def take_back(app: Celery, queue_name: str, job_ids: Iterable[str]) -> int:
    """Remove the waiting messages of ``job_ids`` from ``queue_name``'s lists (a cancel frees the
    broker at once instead of leaving workers to pop and skip them); returns how many. A message a
    worker popped meanwhile is simply not found."""
    wanted = set(job_ids)
    if not wanted:
        return 0
    client = redis_client(app)
    removed = 0
    for key in queue_lists(app, queue_name):
        doomed = [
            raw
            for start in range(0, client.llen(key), _READ_CHUNK)
            for raw in client.lrange(key, start, start + _READ_CHUNK - 1)
            if _safe_job_id(raw) in wanted
        ]
        pipe = client.pipeline(transaction=False)
        for raw in doomed:
            pipe.lrem(key, 1, raw)
        removed += sum(int(n) for n in pipe.execute()) if doomed else 0
    return removed


_READ_CHUNK = 10_000
"""Messages per LRANGE when a list is read."""


def _safe_job_id(raw: bytes | str) -> str:
    """The job id of a stored message; "" for an entry that is not ours (the worker's
    dead-letter path deals with those)."""
    try:
        message = json.loads(raw)
        headers = message.get("headers") if isinstance(message, dict) else None
        return str(headers.get("id") or "") if isinstance(headers, dict) else ""
    except (ValueError, TypeError, AttributeError):
        return ""
