"""Planning a delivery's sampler calls and making them: groups, text encoding, the GPU.

Jobs that share a size and step count share one sampler call, highest priority first, capped by a
memory budget in latent pixels x decoder samples (``worker.budget``), so a call costs about the
same memory at any image size and step count. A call that fails as a whole is split in
halves until only the offending job fails. Nothing here touches the database or the store: the
caller records what :meth:`Renderer.sample_group` reports.

Threads: every pool thread of the worker plans and renders its own delivery. Only sampling holds
``gpu_lock``; text encoding takes the text-encoder cache's own lock (``worker.text``). So while one
delivery samples, the next one's prompts are tokenized and encoded, and its text is ready the
moment the GPU is free. Encoding under ``gpu_lock`` instead would idle the GPU for the tokenizer's
CPU time between every two calls. The sampler's docstring states which of its methods may overlap.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from storage.models import Job
from worker.budget import batch_cap, resolve_batch_budget
from worker.metrics import WorkerMetrics
from worker.sampler import HostImages, TiUESampler
from worker.text import TextEncoderCache

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GroupKey:
    """Jobs that can share one sampler call."""

    height: int
    width: int
    steps: int


@dataclass(frozen=True)
class Rendered:
    """One job's image, fresh from the sampler, on its way to the store."""

    job: Job
    images: HostImages  # its sampler call's images, perhaps still being copied from the GPU
    index: int  # this job's row in ``images``
    sample_s: float
    gpu_share_s: float
    batch_size: int
    vae_note: str | None = None  # set when the tiny VAE decoded: not the reference image

    @property
    def pixels(self) -> torch.Tensor:
        """(H, W, 3) uint8 in host memory. Read on an upload thread, after the GPU lock is
        released: waits for the copy from the GPU if it is still running."""
        return self.images.wait()[self.index]


@dataclass
class SampledGroup:
    """What became of one planned group: its images, and the jobs the sampler failed on."""

    rendered: list[Rendered] = field(default_factory=list)
    failed: list[tuple[Job, str]] = field(default_factory=list)  # (job, error) to record
    calls: list[int] = field(default_factory=list)  # size of each successful sampler call
    sample_seconds: float = 0.0
    truncated: list[str] = field(default_factory=list)  # ids of jobs whose prompt was cut


class Renderer:
    """Plans groups and samples them, one group on the GPU at a time. One per worker process."""

    def __init__(
        self,
        sampler: TiUESampler,
        texts: TextEncoderCache,
        *,
        decoder_chunk: int | None,
        metrics: WorkerMetrics,
        batch_budget: int | None = None,
        on_call: Callable[[list[Job]], None] | None = None,
    ) -> None:
        """``on_call``: told the jobs of each sampler call as it starts (it must not block)."""
        self.sampler = sampler
        self.texts = texts
        self.on_call = on_call
        self.decoder_chunk = decoder_chunk
        self.metrics = metrics
        model = sampler.model
        # None: the measured row for this model and device, else the default (worker.budget).
        self.batch_budget = resolve_batch_budget(
            model.unet.config, model.device, model.dtype, batch_budget
        )
        self.gpu_lock = threading.Lock()

    # -- planning -------------------------------------------------------------------------------

    def batch_cap(self, key: GroupKey) -> int:
        """Jobs per sampler call for ``key``'s size and steps: what the memory budget allows (a
        delivery's size, ``LOOPFREE_MAX_BATCH``, is the broker's business, not the GPU's)."""
        return batch_cap(
            self.batch_budget,
            height=key.height,
            width=key.width,
            steps=key.steps,
            decoder_chunk=self.decoder_chunk,
            vae_scale_factor=self.sampler.model.vae_scale_factor,
        )

    def plan(self, jobs: Sequence[Job]) -> list[tuple[GroupKey, list[Job]]]:
        """Compatible jobs (same size and steps) together, highest priority first, capped."""
        groups: dict[GroupKey, list[Job]] = defaultdict(list)
        for job in sorted(jobs, key=lambda j: (-j.priority, j.created_at, j.position)):
            groups[GroupKey(job.height, job.width, job.steps)].append(job)
        planned = []
        for key, members in sorted(groups.items(), key=lambda kv: -kv[1][0].priority):
            cap = self.batch_cap(key)
            planned.extend((key, members[i : i + cap]) for i in range(0, len(members), cap))
        return planned

    # -- sampling -------------------------------------------------------------------------------

    def sample_group(self, key: GroupKey, jobs: list[Job]) -> SampledGroup:
        """Sample one planned group; if it fails as a whole, split it so only the offending job
        fails."""
        outcome = SampledGroup()
        self._sample(key, jobs, outcome)
        return outcome

    def _sample(self, key: GroupKey, jobs: list[Job], outcome: SampledGroup) -> None:
        try:
            text = self.texts.encode([job.prompt for job in jobs])
            with self.gpu_lock:
                if self.on_call is not None:
                    self.on_call(jobs)
                started = time.perf_counter()
                result = self.sampler.sample(
                    text,
                    [job.seed for job in jobs],
                    key.height,
                    key.width,
                    steps=key.steps,
                    decoder_chunk=self.decoder_chunk,
                )
                elapsed = time.perf_counter() - started
        except Exception as error:  # noqa: BLE001 - any sampler failure is handled by splitting
            if isinstance(error, torch.cuda.OutOfMemoryError):
                torch.cuda.empty_cache()
            if len(jobs) == 1:
                log.warning("job %s failed in the sampler: %r", jobs[0].id, error)
                outcome.failed.append((jobs[0], f"sampler failed: {type(error).__name__}: {error}"))
                return
            half = len(jobs) // 2
            log.warning("batch of %d failed (%r); retrying in halves", len(jobs), error)
            self._sample(key, jobs[:half], outcome)
            self._sample(key, jobs[half:], outcome)
            return
        outcome.calls.append(len(jobs))
        outcome.sample_seconds += elapsed
        self.metrics.sampled(self.sampler.model.name, len(jobs), elapsed)
        outcome.truncated.extend(
            job.id for job, lost in zip(jobs, text.truncated, strict=True) if lost
        )
        outcome.rendered.extend(
            Rendered(
                job,
                result.host,
                index,
                elapsed,
                elapsed / len(jobs),
                len(jobs),
                vae_note=result.vae_note,
            )
            for index, job in enumerate(jobs)
        )
