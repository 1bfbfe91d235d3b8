"""``loopfree export`` that stops dead in the middle of a shard, for the interruption tests.

Run as ``python -m tests.export.stalling_export export ...``: the same command and code, with the
shard writers patched so that after adding ``LOOPFREE_TEST_STALL_AFTER`` samples the process
writes its pid to ``LOOPFREE_TEST_STALL_MARKER`` and sleeps until the test SIGKILLs it. So the
kill lands at a known place (shards before it committed, one half written), not wherever a
timer happened to fall.
"""

from __future__ import annotations

import os
import time
from pathlib import Path


def install() -> None:
    from export import writers
    from export.run import _Export

    stall_after = int(os.environ["LOOPFREE_TEST_STALL_AFTER"])
    marker = Path(os.environ["LOOPFREE_TEST_STALL_MARKER"])
    added = 0
    exports: list[_Export] = []
    finish = _Export._finish

    def remember(self, shard, last):  # type: ignore[no-untyped-def]
        exports.append(self)
        return finish(self, shard, last)

    _Export._finish = remember  # type: ignore[method-assign]
    for writer in writers.WRITERS.values():
        original = writer.add

        def add(self, sample, _original=original):  # type: ignore[no-untyped-def]
            nonlocal added
            _original(self, sample)
            added += 1
            if added == stall_after:
                # The shard closed before this one may still be uploading on the committer
                # thread: let it land, so the kill finds exactly the shards before this one.
                for export in exports[-1:]:
                    export._wait_for_commit()
                marker.write_text(str(os.getpid()))
                while True:
                    time.sleep(60)

        writer.add = add  # type: ignore[method-assign]


if __name__ == "__main__":
    install()
    from loopfree.cli import main

    main()
