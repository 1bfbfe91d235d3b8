"""Prometheus metrics of one worker process (prometheus-client), served on LOOPFREE_METRICS_PORT."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

if TYPE_CHECKING:
    from worker.batch import BatchReport

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
        self.images = Counter("loopfree_images", "Images rendered", ["model"], registry=r)
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

    @classmethod
    def disabled(cls) -> WorkerMetrics:
        return cls(enabled=False)

    def serve(self, port: int) -> None:
        start_http_server(port, registry=self.registry)

    def sampled(self, model: str, jobs: int, seconds: float) -> None:
        self.images.labels(model).inc(jobs)
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
        if queue_wait_s is not None:
            self.queue_wait.observe(queue_wait_s)

    def batch_done(self, report: BatchReport, max_batch: int) -> None:
        if report.claimed:
            self.batch_fill.observe(min(1.0, report.claimed / max_batch))
