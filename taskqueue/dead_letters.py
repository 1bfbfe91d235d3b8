"""A bad entry never stops a worker: it is logged once and set aside in a dead-letter list.

kombu's Redis channel pops an entry and parses it (``json.loads``, then base64 and the message
object) in ``Channel._brpop_read``/``_get``, before Celery sees a message, so Celery's refusal path
(pickles, unknown tasks) never gets the chance: one non-JSON string on a model queue made the
worker exit with ``Unrecoverable error: JSONDecodeError``, three workers out of three. So the
worker's broker transport is :class:`Transport`, kombu's Redis transport with a channel that checks
each entry first (:func:`problem_with`) and moves a bad one, raw, onto ``DEAD_LETTERS_KEY``:

- not JSON, or JSON that is not an object with ``body``/``headers``/``properties`` objects;
- a body that is not valid base64, or a compression we do not use, or a compressed body that
  would decompress past ``MAX_BODY_BYTES`` (decompression is bounded, never done in full);
- larger than ``MAX_ENTRY_BYTES`` as stored;
- any task other than ``loopfree.generate`` (``celery.chord_unlock``, ``celery.starmap``, ...),
  which Celery would otherwise run.

Our own messages carry a job id and are a few hundred bytes; the limits are two orders of
magnitude above that. ``loopfree dead-letters`` lists the list and ``--clear`` empties it.
This subclasses kombu internals named in ``taskqueue.versions``.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import time
import zlib
from typing import TYPE_CHECKING, Any

from kombu.transport import redis as kombu_redis
from kombu.utils.encoding import bytes_to_str

from taskqueue.redis_client import redis_client

if TYPE_CHECKING:
    from celery import Celery

log = logging.getLogger(__name__)

DEAD_LETTERS_KEY = "loopfree.dead-letters"
"""The Redis list bad entries are moved to, newest first, as they were stored."""

MAX_ENTRY_BYTES = 64 * 1024
"""An entry as stored (the compressed size, if compressed). Ours are well under 2 KB."""

MAX_BODY_BYTES = 64 * 1024
"""A message body after base64 and any decompression: bounds the memory one entry can take (a
400 KB entry once decompressed to 400 MB and raised a worker's memory by 800 MB)."""

KEPT_DEAD_LETTERS = 10_000
"""The list is trimmed to this many entries, so a flood of bad entries cannot fill Redis."""

_GENERATE_TASK = "loopfree.generate"  # taskqueue.app.GENERATE_TASK; app imports this module
_QUEUE_PREFIX = "loopfree."  # taskqueue.app.QUEUE_PREFIX: the model queues workers consume
_DECOMPRESSORS = {
    "application/x-gzip": lambda: zlib.decompressobj(),
    "application/zlib": lambda: zlib.decompressobj(),
}


def problem_with(raw: bytes | str) -> str | None:
    """Why this stored entry must not reach the worker, or None if it may."""
    size = len(raw)
    if size > MAX_ENTRY_BYTES:
        return f"entry of {size} bytes exceeds the limit of {MAX_ENTRY_BYTES}"
    try:
        message = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as error:
        return f"not JSON ({error})"
    if not isinstance(message, dict):
        return f"JSON {type(message).__name__}, not a message object"
    headers, properties = message.get("headers"), message.get("properties")
    if not isinstance(headers, dict) or not isinstance(properties, dict):
        return "no headers/properties objects"
    if not isinstance(message.get("body"), str):
        return "body is not a string"
    if not isinstance(properties.get("delivery_info", {}), dict):
        return "delivery_info is not an object"
    task = headers.get("task")
    if task != _GENERATE_TASK:
        return f"task {task!r} is not {_GENERATE_TASK!r}"
    if properties.get("body_encoding") != "base64":
        return f"body encoding {properties.get('body_encoding')!r}, not base64"
    try:
        body = base64.b64decode(message["body"], validate=True)
    except (binascii.Error, ValueError) as error:
        return f"body is not valid base64 ({error})"
    compression = headers.get("compression")
    if compression is None:
        if len(body) > MAX_BODY_BYTES:
            return f"body of {len(body)} bytes exceeds the limit of {MAX_BODY_BYTES}"
        return None
    make = _DECOMPRESSORS.get(compression)
    if make is None:
        return f"compression {compression!r} is not accepted"
    try:
        inflated = make().decompress(body, MAX_BODY_BYTES + 1)
    except zlib.error as error:
        return f"body does not decompress ({error})"
    if len(inflated) > MAX_BODY_BYTES:
        return f"body decompresses past the limit of {MAX_BODY_BYTES} bytes"
    return None


class Channel(kombu_redis.Channel):
    """kombu's Redis channel, checking each entry before it is parsed and delivered."""

    def _brpop_read(self, **options: Any) -> bool:
        try:
            try:
                dest__item = self.client.parse_response(self.client.connection, "BRPOP", **options)
            except self.connection_errors:
                self.client.connection.disconnect()
                raise
            if not dest__item:
                raise kombu_redis.Empty()
            dest, item = dest__item
            dest = bytes_to_str(dest).rsplit(self.sep, 1)[0]
            self._queue_cycle.rotate(dest)
            if self._set_aside(item, dest):
                return True  # consumed: the event loop polls again
            self.connection._deliver(kombu_redis.loads(bytes_to_str(item)), dest)
            return True
        finally:
            self._in_poll = None
            self._flush_brpop_reauth()

    def _get(self, queue: str) -> dict:
        with self.conn_or_acquire() as client:
            for pri in self.priority_steps:
                while item := client.rpop(self._q_for_pri(queue, pri)):
                    self._maybe_update_queues_expire(client, queue)
                    if not self._set_aside(item, queue):
                        return kombu_redis.loads(bytes_to_str(item))
            self._maybe_update_queues_expire(client, queue)
            raise kombu_redis.Empty()

    def _set_aside(self, item: bytes, queue: str) -> bool:
        if not queue.startswith(_QUEUE_PREFIX):
            # Not a model queue: a client's own reply queue (`celery -A taskqueue.app inspect`,
            # `<uuid>.reply.celery.pidbox`) carries Celery's control replies, which are no tasks.
            return False
        reason = problem_with(item)
        if reason is None:
            return False
        log.error(
            "set aside a bad broker entry from %s (%s); moved to the Redis list %s, see "
            "`loopfree dead-letters`",
            queue,
            reason,
            DEAD_LETTERS_KEY,
        )
        record = _record(queue, reason, _printable(item))
        try:
            with self.conn_or_acquire() as client:
                client.pipeline().lpush(DEAD_LETTERS_KEY, record).ltrim(
                    DEAD_LETTERS_KEY, 0, KEPT_DEAD_LETTERS - 1
                ).execute()
        except self.connection_errors as error:
            log.warning("could not store the dead letter (%s); it is dropped", error)
        return True


class Transport(kombu_redis.Transport):
    """kombu's Redis transport with the checking :class:`Channel`: the worker's broker transport
    for ``redis://`` URLs (``taskqueue.app.make_celery``)."""

    Channel = Channel


def _printable(item: bytes | str) -> str:
    text = item.decode("utf-8", "replace") if isinstance(item, bytes) else item
    return text[:MAX_ENTRY_BYTES]


def list_dead_letters(app: Celery, *, limit: int = 100) -> list[dict]:
    """The newest ``limit`` dead letters: queue, reason, time (epoch s) and the entry's text."""
    raws = redis_client(app).lrange(DEAD_LETTERS_KEY, 0, limit - 1)
    return [json.loads(raw) for raw in raws]


def count_dead_letters(app: Celery) -> int:
    return int(redis_client(app).llen(DEAD_LETTERS_KEY))


def clear_dead_letters(app: Celery) -> int:
    """Empty the list; returns how many entries it held."""
    pipe = redis_client(app).pipeline()
    count, _ = pipe.llen(DEAD_LETTERS_KEY).delete(DEAD_LETTERS_KEY).execute()
    return int(count)


def set_aside(app: Celery, queue: str, reason: str, entry: str) -> None:
    """Put an entry the worker received but cannot use on the dead-letter list, as the
    transport does with entries it cannot parse (a message for a job no database row has)."""
    record = _record(queue, reason, entry[:MAX_ENTRY_BYTES])
    redis_client(app).pipeline().lpush(DEAD_LETTERS_KEY, record).ltrim(
        DEAD_LETTERS_KEY, 0, KEPT_DEAD_LETTERS - 1
    ).execute()


def _record(queue: str, reason: str, entry: str) -> str:
    """A dead letter as the list keeps it: where it came from, why, when, and the entry."""
    return json.dumps({"queue": queue, "reason": reason, "at": time.time(), "entry": entry})
