"""kombu's Redis lists: bulk publishing writes the messages Celery and kombu write, in the lists
kombu reads, in order; routing survives Redis losing its data; reading which jobs wait and taking
messages back out work on those same lists.

A real worker consuming such messages: ``test_end_to_end.py`` (``submit_file`` publishes this way).
"""

from __future__ import annotations

import base64
import json
import uuid

import pytest
import redis
from kombu import Producer

from core.errors import BrokerUnavailable
from core.jobspec import PRIORITY_LEVELS
from core.settings import Settings
from fleet.reconcile import reconcile
from producer.prompts import JobDefaults
from producer.submit import submit_file
from storage.db import make_engine, session_scope
from storage.gallery import find_jobs
from taskqueue.app import (
    REDIS_SEP,
    make_celery,
    model_queue,
    publish_jobs,
    publish_with_celery,
    queue_name,
)
from taskqueue.redis_lists import (
    MESSAGES_PER_LPUSH,
    MessageTemplate,
    supports,
    take_back,
    waiting_count,
    waiting_job_ids,
)
from tests.conftest import free_port


@pytest.fixture()
def app(tmp_path, redis_url):
    return make_celery(Settings(broker_url=redis_url, home=tmp_path / "home"))


@pytest.fixture()
def client(redis_url):
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def lists(client: redis.Redis) -> dict[str, list[dict]]:
    """Every list in the database: key -> messages, oldest (served first) first."""
    return {
        key.decode(): [json.loads(raw) for raw in reversed(client.lrange(key, 0, -1))]
        for key in client.scan_iter()
        if client.type(key) == b"list"
    }


def without_job(message: dict, job_id: str) -> dict:
    """The message with its job id, body and delivery tag taken out, for comparison."""
    message = json.loads(json.dumps(message))
    body = base64.b64decode(message.pop("body")).decode()
    assert message["properties"].pop("delivery_tag")
    return json.loads(json.dumps({**message, "body": body}).replace(job_id, "JOB"))


@pytest.mark.parametrize("priority", sorted(PRIORITY_LEVELS.items()), ids=lambda p: p[0])
def test_a_rendered_message_is_the_one_celery_writes_in_the_same_list(app, client, priority):
    _, value = priority
    by_celery, rendered = str(uuid.uuid4()), str(uuid.uuid4())

    assert publish_with_celery(app, [(by_celery, "model-a", value)], countdown=None) == 1
    written_by_celery = lists(client)
    client.flushdb()
    assert publish_jobs(app, [(rendered, "model-a", value)]) == 1
    written_by_template = lists(client)

    assert written_by_celery.keys() == written_by_template.keys()
    (key,) = written_by_celery
    assert key.startswith(queue_name("model-a"))
    (celery_message,), (template_message,) = written_by_celery[key], written_by_template[key]
    assert without_job(template_message, rendered) == without_job(celery_message, by_celery)
    assert json.loads(base64.b64decode(template_message["body"]))[0] == [rendered]


def test_messages_are_served_in_publishing_order_within_a_priority(app, client):
    count = 2 * MESSAGES_PER_LPUSH + 37  # several LPUSH chunks, the last one partial
    high = [str(uuid.uuid4()) for _ in range(count)]
    low = [str(uuid.uuid4()) for _ in range(5)]
    jobs = [(job_id, "model-b", PRIORITY_LEVELS["high"]) for job_id in high]
    jobs[10:10] = [(job_id, "model-b", PRIORITY_LEVELS["low"]) for job_id in low]

    assert publish_jobs(app, jobs) == count + len(low)

    written = lists(client)
    served = {key: [m["headers"]["id"] for m in messages] for key, messages in written.items()}
    assert sorted(served.values(), key=len) == [low, high]
    delivery_tags = [m["properties"]["delivery_tag"] for ms in written.values() for m in ms]
    assert len(set(delivery_tags)) == len(delivery_tags)


def test_the_template_finds_the_job_id_in_every_place_it_appears(app):
    template = MessageTemplate.capture(app, queue_name("model-c"), 4)
    job_id = str(uuid.uuid4())
    message = json.loads(template.render(job_id))
    headers, properties = message["headers"], message["properties"]
    assert (headers["id"], headers["root_id"], properties["correlation_id"]) == (job_id,) * 3
    assert headers["argsrepr"] == repr((job_id,))
    assert template.slots.count("id") == 4
    assert properties["priority"] == 4
    assert properties["delivery_info"]["routing_key"] == queue_name("model-c")


def test_routing_needs_nothing_kept_in_redis(app, client):
    """kombu routes a named exchange through binding sets kept in Redis, declared once per
    connection: after Redis loses its data, messages sent that way go nowhere, silently. The
    model queues use the default exchange, which routes by queue name alone."""
    queue = model_queue("model-d")
    with app.connection_for_write() as connection:
        queue(connection.default_channel).declare()
    client.flushdb()

    by_kombu, by_celery, in_bulk = (str(uuid.uuid4()) for _ in range(3))
    with app.connection_for_write() as connection:
        Producer(connection.default_channel).publish(
            {"job": by_kombu},
            exchange=queue.exchange,
            routing_key=queue.routing_key,
            headers={"id": by_kombu},
        )
    publish_with_celery(app, [(by_celery, "model-d", 5)], countdown=0.01)
    publish_jobs(app, [(in_bulk, "model-d", 5)])

    ids = [m["headers"]["id"] for ms in lists(client).values() for m in ms]
    assert sorted(ids) == sorted([by_kombu, by_celery, in_bulk])


def test_a_broker_that_does_not_answer_is_a_clear_error(tmp_path):
    url = f"redis://127.0.0.1:{free_port()}/0"
    app = make_celery(Settings(broker_url=url, home=tmp_path / "home"))
    with pytest.raises(BrokerUnavailable, match=r"0 messages were published.*requeue --stuck"):
        publish_jobs(app, [(str(uuid.uuid4()), "model-e", 5)])


def test_only_plain_redis_urls_take_the_bulk_path():
    assert supports("redis://:secret@host:6379/0") and supports("rediss://host/1")
    assert not supports("filesystem://") and not supports("sentinel://host:26379")


# -- the reconciler publishes what the broker lacks ---------------------------------------------


@pytest.fixture()
def fleet_settings(tmp_path, migrated_pg_url, redis_url, queue_model_dir):
    return Settings(
        home=tmp_path / "home",
        database_url=migrated_pg_url,
        broker_url=redis_url,
        model=str(queue_model_dir),
    )


def test_the_waiting_job_ids_are_read_from_every_priority_list_and_taken_back(app, client):
    waiting = [str(uuid.uuid4()) for _ in range(4)]
    publish_jobs(
        app,
        [(job_id, "model-f", value) for job_id, value in zip(waiting, (0, 5, 9, 5), strict=True)],
    )
    publish_jobs(app, [(str(uuid.uuid4()), "other", 5)])
    assert waiting_job_ids(app, queue_name("model-f")) == set(waiting)
    assert waiting_count(app, queue_name("model-f")) == 4
    # A delivered message is no longer waiting: the worker that holds it vouches for it.
    client.rpop(queue_name("model-f") + REDIS_SEP + "9", 1)  # broker priority 9 = our low
    assert waiting_job_ids(app, queue_name("model-f")) == set(waiting) - {waiting[0]}

    assert take_back(app, queue_name("model-f"), [waiting[1], waiting[3], "no-such"]) == 2
    assert waiting_job_ids(app, queue_name("model-f")) == {waiting[2]}
    assert waiting_count(app, queue_name("other")) == 1


def test_a_reconcile_pass_publishes_only_the_window_jobs_the_broker_lost(
    tmp_path, fleet_settings, client, queue_model_dir
):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("".join(f"a lighthouse, number {i}\n" for i in range(40)))
    report = submit_file(fleet_settings, prompts, JobDefaults(model=str(queue_model_dir)))
    key = queue_name(str(queue_model_dir)) + REDIS_SEP + "3"  # normal priority
    assert client.llen(key) == 40  # a small submission goes straight out
    client.ltrim(key, 0, 24)  # the broker loses the 15 oldest messages
    engine = make_engine(fleet_settings.resolved_database_url)
    app = make_celery(fleet_settings)
    try:
        # Lost only once no one vouches for them for stuck_after_s: here, at once.
        first = reconcile(engine, app, stuck_after_s=0)
        assert (first.republished, first.window_checked) == (15, 40)
        messages = [json.loads(raw)["headers"]["id"] for raw in client.lrange(key, 0, -1)]
        with session_scope(engine) as session:
            every = [job.id for job in find_jobs(session, report.submission_id, limit=100)]
        assert sorted(messages) == sorted(every)
        again = reconcile(engine, app, stuck_after_s=0)
        assert (again.republished, again.window_checked) == (0, 40)
        # A pass that finds nothing stale looks at nothing in the broker.
        assert reconcile(engine, app, stuck_after_s=3600).window_checked == 0
    finally:
        engine.dispose()
