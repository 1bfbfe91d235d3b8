"""``loopfree worker`` with faults injected from the environment, for the fault tests.

Run as ``python -m tests.fault.faulty_worker worker ...``: the same command, the same code, with
the sampler patched before it starts:

    LOOPFREE_TEST_RENDER_DELAY_S   sleep this long before each sampler call of a delivery, so a
                                   test can catch a worker in the middle of a batch
    LOOPFREE_TEST_RAISE_SEED       the sampler raises on any batch holding this seed
    LOOPFREE_TEST_KILL_SEED        the process SIGKILLs itself on any batch holding this seed,
                                   as a job that crashes the GPU driver or gets OOM-killed would
"""

from __future__ import annotations

import os
import signal
import time


def install() -> None:
    from worker.batch import BatchRunner
    from worker.sampler import TiUESampler

    delay = float(os.environ.get("LOOPFREE_TEST_RENDER_DELAY_S", "0"))
    raise_seed = os.environ.get("LOOPFREE_TEST_RAISE_SEED")
    kill_seed = os.environ.get("LOOPFREE_TEST_KILL_SEED")
    sample = TiUESampler.sample

    def faulty_sample(self, text, seeds, *args, **kwargs):
        if kill_seed is not None and int(kill_seed) in seeds:
            os.kill(os.getpid(), signal.SIGKILL)
        if raise_seed is not None and int(raise_seed) in seeds:
            raise RuntimeError(f"poisoned input (seed {raise_seed})")
        return sample(self, text, seeds, *args, **kwargs)

    TiUESampler.sample = faulty_sample
    if delay:
        render = BatchRunner.render

        def slow_render(self, key, jobs, report):
            time.sleep(delay)
            return render(self, key, jobs, report)

        BatchRunner.render = slow_render


if __name__ == "__main__":
    install()
    from loopfree.cli import main

    main()
