"""What a CLI process shares between its steps: one database engine, one Celery app, one store.

Built on first use, from the one settings object, and closed when the process exits: a command
passes them down to the stage functions it calls instead of each step opening its own (an engine
is a connection pool, a Celery app a broker connection pool).
"""

from __future__ import annotations

import atexit
import functools
from typing import TYPE_CHECKING

from core.settings import get_settings

if TYPE_CHECKING:
    from celery import Celery

    from storage.db import Engine
    from storage.objects import ObjectStore


@functools.cache
def engine() -> Engine:
    """The process's database engine (``LOOPFREE_DATABASE_URL``)."""
    from storage.db import make_engine

    made = make_engine(get_settings().resolved_database_url)
    atexit.register(made.dispose)
    return made


@functools.cache
def celery_app() -> Celery:
    """The process's Celery app (``LOOPFREE_BROKER_URL``)."""
    from taskqueue.app import make_celery

    made = make_celery(get_settings())
    atexit.register(made.close)
    return made


@functools.cache
def store() -> ObjectStore:
    """The process's object store (``LOOPFREE_STORAGE_URL``)."""
    from storage.objects import store_for

    return store_for(get_settings())
