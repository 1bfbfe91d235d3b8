"""What a CLI process shares between its steps: one database engine, one Celery app, one store.

Built on first use from the process's settings (``core.settings.get_settings``) and closed when
the process exits: a command passes them down to the stage functions it calls instead of each step
opening its own (an engine is a connection pool, a Celery app a broker connection pool). They are
kept per settings object, so a process that reads its settings again (tests do) gets new ones.
"""

from __future__ import annotations

import atexit
import functools
from typing import TYPE_CHECKING

from core.settings import Settings, get_settings

if TYPE_CHECKING:
    from celery import Celery

    from storage.db import Engine
    from storage.objects import ObjectStore


def engine() -> Engine:
    """The process's database engine (``LOOPFREE_DATABASE_URL``)."""
    return _engine(get_settings().resolved_database_url)


def celery_app() -> Celery:
    """The process's Celery app (``LOOPFREE_BROKER_URL``)."""
    return _celery_app(get_settings())


def store() -> ObjectStore:
    """The process's object store (``LOOPFREE_STORAGE_URL``)."""
    return _store(get_settings())


@functools.lru_cache(maxsize=4)
def _engine(url: str) -> Engine:
    from storage.db import make_engine

    made = make_engine(url)
    atexit.register(made.dispose)
    return made


@functools.lru_cache(maxsize=4)
def _celery_app(settings: Settings) -> Celery:
    from taskqueue.app import make_celery

    made = make_celery(settings)
    atexit.register(made.close)
    return made


@functools.lru_cache(maxsize=4)
def _store(settings: Settings) -> ObjectStore:
    from storage.stores import store_for

    return store_for(settings)
