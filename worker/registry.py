"""The worker side of the worker registry (``storage.workers``): announce, beat, retire.

A worker announces itself once its model is loaded, refreshes its row from the heartbeat thread
(``worker.service``) and deletes it on a clean shutdown. Its TTL is a few heartbeat intervals, so
one missed beat (a slow database) does not make a busy worker look dead, and a killed worker drops
out of ``loopfree workers`` within that time.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable

from core.settings import Settings
from storage import workers as registry
from storage.db import Engine, Session, session_scope

log = logging.getLogger(__name__)



def package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("loopfree-queue")
    except PackageNotFoundError:  # a source tree that was never installed
        return "unknown"


class Registration:
    """This worker's row in the registry. Database errors are logged, never raised: the registry
    informs operators, and a database blip must not stop a worker from rendering."""

    def __init__(
        self,
        engine: Engine,
        settings: Settings,
        *,
        name: str,
        model: str,
        queue: str,
        device: str,
        images_done: Callable[[], int],
        jobs_in_hand: Callable[[], int],
    ) -> None:
        self.engine = engine
        self.info = registry.WorkerInfo(
            name=name,
            model=model,
            queue=queue,
            host=socket.gethostname(),
            pid=os.getpid(),
            version=package_version(),
            device=device,
            ttl_s=settings.live_for_s,
        )
        self.images_done = images_done
        self.jobs_in_hand = jobs_in_hand

    def announce(self) -> None:
        def write(session: Session) -> None:
            # Starting workers sweep rows dead for over a day (storage.workers.PRUNE_AFTER), so
            # the table stays as small as the fleet without a job of its own.
            registry.prune(session)
            registry.announce(session, self.info)

        self._write(write, "announce")

    def beat(self) -> None:
        def write(session: Session) -> None:
            found = registry.beat(
                session,
                self.info.name,
                images_done=self.images_done(),
                jobs_in_hand=self.jobs_in_hand(),
            )
            if not found:  # pruned or deleted while we were cut off: come back
                registry.announce(session, self.info)

        self._write(write, "heartbeat")

    def retire(self) -> None:
        self._write(lambda session: registry.retire(session, self.info.name), "retire")

    def _write(self, action: Callable[[Session], object], what: str) -> None:
        try:
            with session_scope(self.engine) as session:
                action(session)
        except Exception as error:  # noqa: BLE001 - see the class docstring
            log.warning("worker registry %s failed: %s", what, error)
