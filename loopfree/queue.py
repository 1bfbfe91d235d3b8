"""``celery -A loopfree.queue ...``: the name the issue tracker and older docs used for the app.

The same lazily built app as ``taskqueue.app.app`` (see there), so Celery's tools work under either.
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    if name in ("app", "celery"):
        from taskqueue import app as module

        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
