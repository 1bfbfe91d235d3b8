"""Prometheus metrics of one worker process (prometheus-client), served on LOOPFREE_METRICS_PORT."""

from __future__ import annotations

import errno
import logging
import threading
from collections.abc import Callable, Sized
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

if TYPE_CHECKING:
    from worker.report import BatchReport

log = logging.getLogger(__name__)

PORTS_TRIED = 16
"""Workers on one host take consecutive metrics ports: one per GPU of a 16-GPU host."""

_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
_BATCH_SIZES = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64)
_FILL = (0.1, 0.25, 0.5, 0.75, 0.9, 1.0)


class WorkerMetrics:
    """The worker's counters and histograms, in a registry of their own."""

    def __init__(self, registry: CollectorRegistry | None = None, enabled: bool = True) -> None:
        self.enabled = enabled
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.jobs = Counter("loopfree_jobs", "Jobs finished", ["model", "status"], registry=r)
        # Images whose job succeeded: stored and recorded. An image rendered for a job that then
        # failed to store is not one (the sampler's own work is loopfree_batch_size's count).
        self.images = Counter(
            "loopfree_images", "Images stored and recorded (jobs succeeded)", ["model"], registry=r
        )
        self.batch_size = Histogram(
            "loopfree_batch_size", "Jobs per sampler call", buckets=_BATCH_SIZES, registry=r
        )
        self.batch_fill = Histogram(
            "loopfree_batch_fill_ratio", "Jobs per delivery / max batch", buckets=_FILL, registry=r
        )
        self.sampling = Histogram(
            "loopfree_sampling_seconds", "Sampler time per call", buckets=_SECONDS, registry=r
        )
        self.text_encoding = Histogram(
            "loopfree_text_encoding_seconds", "Text encoder time", buckets=_SECONDS, registry=r
        )
        self.png_encoding = Histogram(
            "loopfree_png_encoding_seconds", "PNG encoding per image", buckets=_SECONDS, registry=r
        )
        self.upload = Histogram(
            "loopfree_upload_seconds", "Upload time per image", buckets=_SECONDS, registry=r
        )
        self.queue_wait = Histogram(
            "loopfree_queue_wait_seconds",
            "Submission to claim",
            buckets=_SECONDS + (900, 3600),
            registry=r,
        )
        self.gpu_memory = Gauge(
            "loopfree_gpu_memory_bytes", "Peak GPU memory allocated by torch", registry=r
        )
        self.model_load = Gauge("loopfree_model_load_seconds", "Time to load the model", registry=r)
        self.busy = Gauge("loopfree_worker_busy", "1 while a batch is in hand", registry=r)
        self.paused = Gauge(
            "loopfree_worker_paused",
            "1 while an object-store or database outage pauses claiming (worker.outage)",
            registry=r,
        )
        self.text_cache_hits = Counter(
            "loopfree_text_cache_hits",
            "Prompts served from the text-embedding cache or a batch-mate",
            registry=r,
        )
        self.text_cache_misses = Counter(
            "loopfree_text_cache_misses", "Prompts that went through the text encoder", registry=r
        )
        # Jobs this process recorded as succeeded: the worker registry's ``images_done``.
        self._succeeded = 0
        self._lock = threading.Lock()

    @property
    def succeeded(self) -> int:
        return self._succeeded

    def watch_busy(self, held: Callable[[], Sized]) -> None:
        """``loopfree_worker_busy`` is read at scrape time from ``held`` (the jobs in hand), so it
        is exact whenever Prometheus looks, with no bookkeeping on the hot path."""
        self.busy.set_function(lambda: 1.0 if len(held()) else 0.0)

    def watch_paused(self, paused: Callable[[], bool]) -> None:
        """``loopfree_worker_paused`` is read at scrape time from ``paused`` (the outage gate)."""
        self.paused.set_function(lambda: 1.0 if paused() else 0.0)

    def text_encoded(self, prompts: int, encoded: int, seconds: float | None) -> None:
        """One call of the text-embedding cache: ``encoded`` of ``prompts`` were cache misses."""
        self.text_cache_hits.inc(prompts - encoded)
        self.text_cache_misses.inc(encoded)
        if seconds is not None:
            self.text_encoding.observe(seconds)

    @classmethod
    def disabled(cls) -> WorkerMetrics:
        return cls(enabled=False)

    def serve(self, port: int) -> int | None:
        """Serve ``/metrics`` on the first free port from ``port`` up to ``PORTS_TRIED - 1`` above
        it, so workers sharing a host (one per GPU) each get one: 9400, 9401, ... Logs the port
        taken. 0 serves nothing; a host with every port of the range taken gets a warning and a
        worker without the endpoint (it still works). Returns the port, or None."""
        if port == 0:
            log.info("metrics endpoint off (LOOPFREE_METRICS_PORT=0)")
            return None
        for candidate in range(port, min(port + PORTS_TRIED, 65536)):
            try:
                start_http_server(candidate, registry=self.registry)
            except OSError as error:
                if error.errno != errno.EADDRINUSE:
                    raise
                continue
            if candidate == port:
                log.info("Prometheus metrics on port %d (/metrics)", candidate)
            else:
                log.warning(
                    "metrics port %d is taken (another worker on this host?): Prometheus "
                    "metrics on port %d instead (/metrics)", port, candidate,
                )  # fmt: skip
            return candidate
        log.warning(
            "metrics ports %d-%d are all taken: this worker serves no metrics; set "
            "LOOPFREE_METRICS_PORT to a free range", port, port + PORTS_TRIED - 1,
        )  # fmt: skip
        return None

    def sampled(self, model: str, jobs: int, seconds: float) -> None:
        self.batch_size.observe(jobs)
        self.sampling.observe(seconds)
        import torch

        if torch.cuda.is_available():
            self.gpu_memory.set(torch.cuda.max_memory_allocated())

    def stored(self, png_seconds: float, upload_seconds: float) -> None:
        self.png_encoding.observe(png_seconds)
        self.upload.observe(upload_seconds)

    def job_done(self, model: str, status: str, queue_wait_s: float | None) -> None:
        self.jobs.labels(model, status).inc()
        if status == "succeeded":
            self.images.labels(model).inc()
            with self._lock:
                self._succeeded += 1
        if queue_wait_s is not None:
            self.queue_wait.observe(queue_wait_s)

    def batch_done(self, report: BatchReport, max_batch: int) -> None:
        if report.claimed:
            self.batch_fill.observe(min(1.0, report.claimed / max_batch))
