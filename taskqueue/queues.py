"""What a loopfree queue is called and how priorities map onto it: one queue per model, named
so that two models never share one, with job priorities flipped to the Redis transport's."""

from __future__ import annotations

import hashlib
import re

from kombu import Exchange, Queue

from core.jobspec import MAX_PRIORITY, MIN_PRIORITY

GENERATE_TASK = "loopfree.generate"
QUEUE_PREFIX = "loopfree."
# Celery's Redis transport groups priorities 0-9 into these steps; 0 is served first.
PRIORITY_STEPS = [0, 3, 6, 9]
# kombu's default Redis separator (``kombu.transport.redis.Channel.sep``): a priority step's list
# is ``queue + REDIS_SEP + step``, e.g. ``loopfree.m\x06\x163``.
REDIS_SEP = "\x06\x16"


# Characters kept of the model's name, for people reading queue names; the hash makes it unique.
QUEUE_LABEL_CHARS = 80


def queue_name(model: str) -> str:
    """The queue that workers of ``model`` consume: ``loopfree.senmaonk-loopfree-sd1.5.1b4c…``.

    A readable label of the model plus a hash of its exact name: the label alone would give the
    hub id ``models/x-tiny`` and the folder ``models/x/tiny`` one queue, and each would then take
    the other's jobs (and fail them).
    """
    label = re.sub(r"[^A-Za-z0-9._-]+", "-", model).strip("-.")[-QUEUE_LABEL_CHARS:]
    digest = hashlib.sha256(model.encode()).hexdigest()[:12]
    return f"{QUEUE_PREFIX}{label}.{digest}"


def broker_priority(job_priority: int) -> int:
    """A job priority (``MAX_PRIORITY`` = high) as the Redis transport's (0 = served first)."""
    return _mirror(job_priority)


def job_priority(delivered_priority: int) -> int:
    """The inverse of ``broker_priority``: a delivered message's priority as the job's."""
    return _mirror(delivered_priority)


def _mirror(priority: int) -> int:
    # Both scales span MIN_PRIORITY..MAX_PRIORITY in opposite directions, so one mirror maps each
    # onto the other. A value outside (a message published elsewhere) is held at the nearest end.
    return MIN_PRIORITY + MAX_PRIORITY - max(MIN_PRIORITY, min(MAX_PRIORITY, priority))


def model_queue(model: str) -> Queue:
    return model_queue_named(queue_name(model))


def model_queue_named(name: str) -> Queue:
    """The queue ``name`` on the default exchange, which routes by queue name.

    Not a named exchange: on Redis, kombu routes a named exchange through a binding set it keeps
    in Redis but declares only once per process, so after Redis lost its data a long-lived
    publisher (a worker handing jobs back) would route into nothing, silently.
    """
    return Queue(name, Exchange(""), routing_key=name, max_priority=MAX_PRIORITY)
