"""celery, kombu and celery-batches: pinned to the series whose internals we checked, and those
internals still there on the installed versions, so an upgrade that renames one fails here first.

``taskqueue.batches`` overrides private attributes of celery-batches' ``Batches``;
``taskqueue.redis_lists`` writes kombu's Redis messages and reads them back from its lists.
"""

from __future__ import annotations

import importlib.util
import inspect
import queue
import re
import uuid
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from core.errors import UserError
from core.settings import Settings
from taskqueue.app import make_celery, publish_jobs, queue_name
from taskqueue.redis_lists import waiting_job_ids
from taskqueue.versions import (
    CHECKED_VERSIONS,
    CheckedVersion,
    UncheckedDependency,
    check_versions,
    installed_version,
)

REPO = Path(__file__).resolve().parents[2]
TABLE = (CheckedVersion("kombu", "5.7", "its Redis wire format"),)


# -- the checker --------------------------------------------------------------------------------


def test_a_version_outside_the_checked_series_stops_the_worker_with_what_to_do():
    with pytest.raises(UncheckedDependency) as caught:
        check_versions(TABLE, installed={"kombu": "5.8.0"}.get)
    message = str(caught.value)
    assert isinstance(caught.value, UserError)
    assert "kombu 5.8.0 is installed" in message
    assert "checked against kombu 5.7.x only" in message
    assert "its Redis wire format" in message
    assert "pip install 'kombu==5.7.*'" in message
    assert "taskqueue/versions.py" in message


@pytest.mark.parametrize("version", ["5.6.9", "6.7.0", "5.70.0", "not-a-version"])
def test_every_other_series_is_refused(version):
    with pytest.raises(UncheckedDependency, match=re.escape(f"kombu {version} is installed")):
        check_versions(TABLE, installed={"kombu": version}.get)


def test_a_missing_package_is_refused():
    with pytest.raises(UncheckedDependency, match="kombu is not installed"):
        check_versions(TABLE, installed={}.get)


@pytest.mark.parametrize("version", ["5.7", "5.7.0", "5.7.12", "5.7.1rc1", "5.7.0.post1"])
def test_every_release_of_the_checked_series_passes(version):
    check_versions(TABLE, installed={"kombu": version}.get)


def test_the_installed_versions_are_the_checked_ones():
    check_versions()
    assert {entry.package for entry in CHECKED_VERSIONS} == {"celery", "kombu", "celery-batches"}


def test_pyproject_pins_exactly_the_checked_series():
    # The base dependencies, read as text (no tomllib: Python 3.10 is supported).
    text = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    block = re.search(r"^dependencies = \[\n(.*?)^\]", text, re.MULTILINE | re.DOTALL)
    assert block is not None, "pyproject.toml has no dependencies list"
    lines = re.findall(r'^\s*"([^"]+)",?\s*(?:#.*)?$', block.group(1), re.MULTILINE)
    pins = {Requirement(line).name: Requirement(line).specifier for line in lines}
    for entry in CHECKED_VERSIONS:
        major, minor = Version(entry.series).release[:2]
        specifier = pins[entry.package]
        assert specifier.contains(f"{major}.{minor}.0"), (entry, specifier)
        assert not specifier.contains(f"{major}.{minor + 1}.0"), (entry, specifier)
        assert not specifier.contains(f"{major}.{minor - 1}.99"), (entry, specifier)


def locked() -> dict[str, str]:
    """constraints/lock.txt as name -> version."""
    lock = (REPO / "constraints" / "lock.txt").read_text(encoding="utf-8")
    return dict(re.findall(r"^([a-z0-9-]+)==(\S+)$", lock, flags=re.MULTILINE))


def test_the_lock_file_pins_versions_of_the_checked_series():
    pinned = locked()
    for entry in CHECKED_VERSIONS:
        version = pinned[entry.package]
        assert Version(version).release[:2] == Version(entry.series).release[:2], (entry, version)
        assert version == installed_version(entry.package), "regenerate constraints/lock.txt"


def test_the_lock_pins_every_package_the_test_install_needs_at_its_installed_version():
    """A dependency added to pyproject.toml without a new lock would install unpinned in CI and
    the images; a lock older than the environment the tests ran in pins what was not tested."""
    pytest.importorskip("tomllib")  # make_lock.py reads pyproject.toml with it (Python 3.11+)
    spec = importlib.util.spec_from_file_location(
        "make_lock", REPO / "constraints" / "make_lock.py"
    )
    assert spec is not None and spec.loader is not None
    make_lock = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_lock)
    wanted, pinned = make_lock.lock_pins(), locked()
    problems = [
        f"{name}: locked {pinned.get(name, 'not at all')}, installed {wanted.get(name, 'not')}"
        for name in sorted(wanted.keys() | pinned.keys())
        if wanted.get(name) != pinned.get(name)
    ]
    assert not problems, (
        "constraints/lock.txt is out of date; after testing the installed versions, run "
        "`.venv/bin/python constraints/make_lock.py`:\n" + "\n".join(problems)
    )


# -- celery-batches' internals (taskqueue/batches.py) --------------------------------------------


def test_celery_batches_keeps_the_private_attributes_maxwaitbatches_overrides():
    from celery_batches import Batches

    batches = Batches()
    for name in ("_buffer", "_pending"):
        buffer = getattr(batches, name)
        assert isinstance(buffer, queue.Queue), name  # .empty(), .put(), .mutex, .queue
    assert batches._tref is None  # no flush timer until the first message
    assert callable(Batches._do_flush)
    assert list(inspect.signature(Batches._do_flush).parameters) == ["self"]
    assert isinstance(Batches.flush_every, int)
    assert isinstance(Batches.flush_interval, int | float)
    strategy = inspect.signature(Batches.Strategy).parameters
    assert list(strategy) == ["self", "task", "app", "consumer"]
    # celery-batches' handler starts its own periodic flush only when it finds no timer: ours is
    # put in ``_tref`` first (see MaxWaitBatches.Strategy).
    assert "self._tref is None" in inspect.getsource(Batches.Strategy)


def test_celery_batches_requests_carry_what_jobs_from_reads():
    from celery_batches import SimpleRequest

    fields = inspect.signature(SimpleRequest).parameters
    assert {"id", "args", "kwargs", "delivery_info"} <= set(fields)


def test_the_eta_helpers_maxwaitbatches_uses_exist():
    from celery.utils.time import timezone
    from kombu.asynchronous.timer import to_timestamp

    assert callable(to_timestamp)
    assert callable(timezone.to_system)


# -- kombu's Redis transport (taskqueue/redis_lists.py, taskqueue/app.py) ----------------------


def test_kombus_redis_channel_accepts_every_transport_option_we_set(tmp_path):
    from kombu.transport.redis import Channel

    app = make_celery(Settings(broker_url="redis://127.0.0.1:1/0", home=tmp_path / "home"))
    options = set(app.conf.broker_transport_options)
    assert options <= set(Channel.from_transport_options), options - set(
        Channel.from_transport_options
    )
    assert list(inspect.signature(Channel._q_for_pri).parameters) == ["self", "queue", "pri"]


def test_a_message_kombu_delivers_leaves_its_list_and_is_read_there_until_then(
    tmp_path, redis_url
):
    """What ``waiting_job_ids`` (the reconciler) reads is what kombu's channel pops: a message we
    wrote is found in its list, and gone from it once kombu delivered it."""
    app = make_celery(Settings(broker_url=redis_url, home=tmp_path / "home"))
    job_id = str(uuid.uuid4())
    assert publish_jobs(app, [(job_id, "versions-test", 5)]) == 1
    assert waiting_job_ids(app, queue_name("versions-test")) == {job_id}
    with app.connection_for_read() as connection:
        channel = connection.default_channel
        message = channel.basic_get(queue_name("versions-test"), no_ack=False)
        assert message is not None, "kombu found no message in the list we wrote"
        assert message.headers["id"] == job_id
        assert waiting_job_ids(app, queue_name("versions-test")) == set()
        message.ack()


def test_kombus_redis_channel_keeps_what_the_dead_letter_channel_overrides():
    """taskqueue.dead_letters.Channel re-implements ``_brpop_read`` and ``_get`` around a check,
    calling the module's ``loads``/``Empty`` and the channel helpers kombu's own versions call."""
    from kombu.transport import redis as kombu_redis

    assert callable(kombu_redis.loads) and issubclass(kombu_redis.Empty, Exception)
    channel = kombu_redis.Channel
    for name in ("_flush_brpop_reauth", "_maybe_update_queues_expire", "conn_or_acquire"):
        assert callable(getattr(channel, name)), name
    assert list(inspect.signature(channel._brpop_read).parameters) == ["self", "options"]
    assert list(inspect.signature(channel._get).parameters) == ["self", "queue"]
    source = inspect.getsource(channel._brpop_read)
    assert "self.connection._deliver(loads(bytes_to_str(item)), dest)" in source
    assert "self._queue_cycle.rotate(dest)" in source
    assert "unacked_index_key" in kombu_redis.Channel.from_transport_options


def test_a_bad_entry_is_dead_lettered_and_the_next_good_one_is_delivered(tmp_path, redis_url):
    from taskqueue.dead_letters import DEAD_LETTERS_KEY, Channel, clear_dead_letters

    app = make_celery(Settings(broker_url=redis_url, home=tmp_path / "home"))
    clear_dead_letters(app)
    job_id = str(uuid.uuid4())
    assert publish_jobs(app, [(job_id, "versions-dead", 5)]) == 1
    import redis

    client = redis.Redis.from_url(redis_url)
    sep = app.conf.broker_transport_options["sep"]
    # RPUSH: at the tail, so popped before the good message.
    client.rpush(f"{queue_name('versions-dead')}{sep}3", b"[not, json")
    with app.connection_for_read() as connection:
        channel = connection.default_channel
        assert isinstance(channel, Channel)
        message = channel.basic_get(queue_name("versions-dead"), no_ack=True)
        assert message is not None and message.headers["id"] == job_id
    assert client.llen(DEAD_LETTERS_KEY) == 1
