"""Every advertised worker metric is recorded: busy, text encoding time, text cache hits/misses."""

from __future__ import annotations

from prometheus_client import generate_latest

from worker.metrics import WorkerMetrics
from worker.sampler import TiUESampler
from worker.text import TextEncoderCache


def value(metrics: WorkerMetrics, name: str) -> float:
    sample = metrics.registry.get_sample_value(name)
    assert sample is not None, f"{name} not exported"
    return sample


def test_the_text_cache_counts_hits_and_misses_and_times_the_encoder(
    sampler: TiUESampler,
) -> None:
    metrics = WorkerMetrics()
    cache = TextEncoderCache(sampler, metrics=metrics)
    cache.encode(["a fox", "a fox", "a cat"])  # 2 encoded; the second fox is a batch-mate
    cache.encode(["a fox", "a dog"])  # fox cached, dog encoded
    assert value(metrics, "loopfree_text_cache_misses_total") == 3
    assert value(metrics, "loopfree_text_cache_hits_total") == 2
    assert value(metrics, "loopfree_text_encoding_seconds_count") == 2  # one per encoder call
    assert value(metrics, "loopfree_text_encoding_seconds_sum") > 0


def test_worker_busy_reads_the_jobs_in_hand_at_scrape_time() -> None:
    metrics = WorkerMetrics()
    held: list[str] = []
    metrics.watch_busy(lambda: held)
    assert value(metrics, "loopfree_worker_busy") == 0
    held.append("job")
    assert value(metrics, "loopfree_worker_busy") == 1
    assert b"loopfree_worker_busy 1.0" in generate_latest(metrics.registry)


def test_succeeded_jobs_are_counted_for_the_worker_registry() -> None:
    metrics = WorkerMetrics()
    metrics.job_done("m", "succeeded", 0.1)
    metrics.job_done("m", "failed", 0.1)
    metrics.job_done("m", "succeeded", None)
    assert metrics.succeeded == 2


def test_images_count_only_jobs_that_were_stored_and_recorded() -> None:
    """Observed: ``loopfree_images_total`` also counted images rendered for jobs that then failed
    to store. An image counts once its job succeeded."""
    metrics = WorkerMetrics()
    metrics.sampled("m", 4, 0.5)  # a sampler call of four
    assert metrics.registry.get_sample_value("loopfree_images_total", {"model": "m"}) is None
    metrics.job_done("m", "succeeded", 0.1)
    metrics.job_done("m", "failed", 0.1)  # e.g. the store refused its image
    metrics.job_done("m", "succeeded", 0.1)
    assert metrics.registry.get_sample_value("loopfree_images_total", {"model": "m"}) == 2
    assert metrics.registry.get_sample_value("loopfree_batch_size_sum") == 4
