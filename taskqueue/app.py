"""The Celery app shared by producers and workers: JSON messages, one queue per model.

A message carries a job id and nothing else: the database row is the source of truth, so a message
can be lost (the reconciler re-publishes from the database) or delivered twice (the worker's guarded
status updates make the second delivery a no-op) without changing the outcome.

Priorities: on Redis, Celery emulates them with one list per priority step and serves the lowest
number first; job priorities (``core.jobspec.PRIORITY_LEVELS``, higher first) are flipped on the
way in (``broker_priority``) and back on the way out (``job_priority``). The embedded filesystem
broker has no priorities: there jobs run in submission order.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from celery import Celery
from kombu import Queue

from core.errors import BrokerUnavailable
from core.jobspec import DEFAULT_PRIORITY, MAX_PRIORITY
from core.settings import Settings, mask_url
from taskqueue import lean_message
from taskqueue.queues import (  # noqa: F401 - the names every caller of the app uses
    GENERATE_TASK,
    PRIORITY_STEPS,
    QUEUE_PREFIX,
    REDIS_SEP,
    broker_priority,
    job_priority,
    model_queue,
    model_queue_named,
    queue_name,
)

# Every loopfree.generate message this process publishes leaves out the headers a worker reads
# with a default: under 1 KiB of Redis per waiting job (``taskqueue.lean_message``).
lean_message.connect(GENERATE_TASK)


def restore_interval_s(visibility_timeout_s: float) -> int:
    """Seconds between the broker's sweeps for unacknowledged messages past their timeout."""
    return max(1, min(10, int(visibility_timeout_s // 10)))


def make_celery(settings: Settings) -> Celery:
    """A Celery app configured for batching workers and bulk producers."""
    settings.ensure_home()
    app = Celery("loopfree", broker=settings.resolved_broker_url, set_as_current=False)
    transport_options: dict[str, object] = {
        # A message not acked within this time goes back to the queue; the worker checks at
        # start that its longest possible batch fits in it.
        "visibility_timeout": settings.visibility_timeout_s,
        # kombu scans for such messages every interval x throttle seconds: 100 s by default,
        # which would leave a crashed worker's jobs waiting long past a short timeout. Scan
        # every tenth of the timeout (one cheap ZRANGE), at least every second, at most every 10.
        "unacked_restore_interval": restore_interval_s(settings.visibility_timeout_s),
        "unacked_restore_throttle": 1,
        "priority_steps": PRIORITY_STEPS,
        # kombu's own separator (priority list names, exchange binding tables), not a custom
        # one: a plain `celery -b redis://... inspect ping` writes its reply binding with the
        # default, and a worker with another separator could not read it, so never replied.
        "sep": REDIS_SEP,
        "queue_order_strategy": "priority",
    }
    if settings.broker_url is None:
        folder = str(settings.broker_folder)
        transport_options.update(
            data_folder_in=folder, data_folder_out=folder, control_folder=folder
        )
    if settings.broker_url is not None and settings.resolved_broker_url.startswith(
        ("redis://", "rediss://")
    ):
        # kombu's Redis transport, but a bad entry goes to a dead-letter list instead of
        # stopping the worker (taskqueue.dead_letters).
        app.conf.broker_transport = "taskqueue.dead_letters:Transport"
    app.conf.update(
        broker_transport_options=transport_options,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        # JSON only: a pickled message is rejected by the consumer, never unpickled.
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        event_serializer="json",
        # Results live in SQL; Celery's own result store would be a second, weaker copy.
        task_ignore_result=True,
        # Ack after the job's result is recorded; a crashed worker's jobs are redelivered.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_default_priority=broker_priority(DEFAULT_PRIORITY),
        task_queue_max_priority=MAX_PRIORITY,
        task_create_missing_queues=True,
        # Events let Flower and `celery events` watch the fleet.
        worker_send_task_events=True,
        task_send_sent_event=False,
        worker_hijack_root_logger=False,
        worker_cancel_long_running_tasks_on_connection_loss=False,
        enable_utc=True,
    )
    return app


def publish_jobs(
    app: Celery, jobs: Iterable[tuple[str, str, int]], *, countdown: float | None = None
) -> int:
    """Publish ``(job_id, model, priority)`` messages in bulk; returns how many went out.

    On Redis, messages rendered from a template are pushed a thousand per round trip
    (``taskqueue.redis_lists``); elsewhere, and for delayed messages, through Celery.
    """
    from taskqueue import redis_lists

    if countdown is None and redis_lists.supports(app.conf.broker_url):
        messages = [(job_id, queue_name(model), broker_priority(p)) for job_id, model, p in jobs]
        try:
            return redis_lists.publish(app, messages)
        except redis_lists.PublishInterrupted as interrupted:
            raise _broker_unavailable(app, interrupted.error, interrupted.accepted) from None
    return publish_with_celery(app, jobs, countdown=countdown)


def publish_with_celery(
    app: Celery, jobs: Iterable[tuple[str, str, int]], *, countdown: float | None
) -> int:
    task = app.signature(GENERATE_TASK)
    published = 0
    try:
        with app.producer_or_acquire() as producer:
            queues: dict[str, Queue] = {}
            for job_id, model, priority in jobs:
                queue = queues.get(model)
                if queue is None:
                    queue = queues[model] = model_queue(model)
                    queue(producer.channel).declare()
                task.clone(args=(job_id,)).apply_async(
                    producer=producer,
                    queue=queue,
                    priority=broker_priority(priority),
                    task_id=job_id,
                    countdown=countdown,
                    retry=True,
                    retry_policy={"max_retries": 3, "interval_start": 0.2, "interval_step": 0.5},
                )
                published += 1
    except app.connection_for_write().connection_errors as error:
        raise _broker_unavailable(app, error, published) from error
    return published


def check_broker(app: Celery, *, outcome: str) -> None:
    """Connect to the broker (a few quick tries) or raise ``BrokerUnavailable`` saying that
    nothing was done: a producer checks before it writes a row, a worker before it loads a
    model. ``outcome``: what the refusal leaves done, for the message ("nothing was submitted")."""
    try:
        with app.connection_for_write() as connection:
            connection.ensure_connection(max_retries=2, interval_start=0.2, interval_step=0.3)
    except Exception as error:  # noqa: BLE001 - kombu raises transport-specific errors
        raise BrokerUnavailable(
            f"the broker at {mask_url(app.conf.broker_url)} did not answer ({error}); {outcome}. "
            "Start it (or fix LOOPFREE_BROKER_URL) and try again"
        ) from error


def _broker_unavailable(app: Celery, error: BaseException, published: int) -> BrokerUnavailable:
    return BrokerUnavailable(
        f"the broker at {mask_url(app.conf.broker_url)} did not answer ({error}); "
        f"{published} messages were published. Start the broker (or fix "
        "LOOPFREE_BROKER_URL) and run `loopfree requeue --stuck` to publish the rest"
    )


def queue_depths(app: Celery, models: Sequence[str]) -> dict[str, int]:
    """Messages waiting in each model's queue (not counting ones held by workers)."""
    depths = {}
    with app.connection_for_read() as connection:
        channel = connection.default_channel
        for model in models:
            name = queue_name(model)
            try:
                depths[name] = channel.queue_declare(name, passive=True).message_count
            except connection.channel_errors:
                depths[name] = 0
    return depths


def __getattr__(name: str) -> Celery:
    """``taskqueue.app.app``: the app of this process's settings, built on first use, so that
    Celery's own tools find it: ``celery -A taskqueue.app inspect active``, ``celery -A
    taskqueue.app events``, ``celery -A taskqueue.app flower``."""
    if name in ("app", "celery"):
        global _cli_app
        if _cli_app is None:
            from core.settings import get_settings

            _cli_app = make_celery(get_settings())
            # The worker registers loopfree.generate with its batching options; the tools only
            # need its name, for `inspect registered` and routing.
            _cli_app.set_current()
        return _cli_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


_cli_app: Celery | None = None
