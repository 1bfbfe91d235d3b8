"""The batch cap is a memory budget in latent pixels x decoder samples, not a job count."""

from __future__ import annotations

import uuid
from datetime import datetime, timezone

import pytest

from storage.models import Job
from worker.budget import DEFAULT_BATCH_BUDGET, batch_cap, resolve_batch_budget
from worker.metrics import WorkerMetrics
from worker.rendering import GroupKey, Renderer
from worker.text import TextEncoderCache


def make_job(position: int, size: int, steps: int = 4) -> Job:
    return Job(
        id=str(uuid.uuid4()),
        submission_id=str(uuid.uuid4()),
        position=position,
        line_number=position + 1,
        prompt=f"prompt {position}",
        seed=position,
        height=size,
        width=size,
        steps=steps,
        model="tiny",
        priority=0,
        created_at=datetime(2026, 1, 1, tzinfo=timezone.utc),
    )


def renderer(sampler, **options) -> Renderer:
    return Renderer(
        sampler,
        TextEncoderCache(sampler),
        decoder_chunk=options.pop("decoder_chunk", None),
        metrics=WorkerMetrics.disabled(),
        **options,
    )


def test_the_default_budget_fits_the_default_batch_at_512_px_and_4_steps():
    assert batch_cap(
        DEFAULT_BATCH_BUDGET, height=512, width=512, steps=4, decoder_chunk=None
    ) == 16
    # A fifth step or twice the pixels no longer fits 16 jobs in the same memory.
    assert batch_cap(
        DEFAULT_BATCH_BUDGET, height=512, width=512, steps=5, decoder_chunk=None
    ) == 12
    assert batch_cap(
        DEFAULT_BATCH_BUDGET, height=768, width=768, steps=4, decoder_chunk=None
    ) == 7


def test_fifty_steps_get_a_smaller_cap_than_four_and_a_decoder_chunk_raises_it():
    common = dict(height=512, width=512)
    four = batch_cap(DEFAULT_BATCH_BUDGET, steps=4, decoder_chunk=None, **common)
    fifty = batch_cap(DEFAULT_BATCH_BUDGET, steps=50, decoder_chunk=None, **common)
    chunked = batch_cap(DEFAULT_BATCH_BUDGET, steps=50, decoder_chunk=2, **common)
    assert fifty == 1 < four == 16
    assert chunked == 32 > fifty  # 2 of 50 decoder passes at a time: half of four's memory
    # Never below one job: a job too large for the budget still runs, alone.
    assert batch_cap(1, steps=50, decoder_chunk=None, **common) == 1


def test_a_small_native_model_renders_512_px_jobs_in_batches_larger_than_one(sampler):
    assert sampler.model.default_size == 64  # the old cap gave 16 * 64^2 // 512^2 = 1 job
    planner = renderer(sampler, batch_budget=4 * 4 * 64 * 64)  # four 512 px jobs of 4 steps
    plan = planner.plan([make_job(i, 512) for i in range(6)])
    assert [len(jobs) for _, jobs in plan] == [4, 2]
    key, jobs = plan[1]
    outcome = planner.sample_group(key, jobs)
    assert outcome.calls == [2] and not outcome.failed
    assert outcome.rendered[0].pixels.shape == (512, 512, 3)


def test_the_renderer_caps_by_steps_and_decoder_chunk(sampler):
    planner = renderer(sampler)
    assert planner.batch_cap(GroupKey(512, 512, 4)) == 16
    assert planner.batch_cap(GroupKey(512, 512, 50)) == 1
    chunked = renderer(sampler, decoder_chunk=2)
    assert chunked.batch_cap(GroupKey(512, 512, 50)) == 32
    plan = planner.plan([make_job(i, 512, steps=50) for i in range(3)])
    assert [len(jobs) for _, jobs in plan] == [1, 1, 1]


def test_the_budget_setting_overrides_the_default(sampler, monkeypatch):
    planner = renderer(sampler, batch_budget=2 * 4 * 64 * 64)
    assert planner.batch_budget == 2 * 4 * 64 * 64
    assert planner.batch_cap(GroupKey(512, 512, 4)) == 2
    unet = sampler.model.unet.config
    assert resolve_batch_budget(unet, sampler.model.device, sampler.model.dtype) == (
        DEFAULT_BATCH_BUDGET
    )


@pytest.mark.parametrize("steps", [4, 50])
def test_a_measured_row_for_the_model_and_device_sets_the_budget(sampler, monkeypatch, steps):
    from worker import budget

    model = sampler.model
    key = (budget.model_signature(model.unet.config), "cpu", "float32")
    monkeypatch.setitem(budget.MEASURED_BUDGETS, key, 3 * steps * 64 * 64)
    assert renderer(sampler).batch_cap(GroupKey(512, 512, steps)) == 3
