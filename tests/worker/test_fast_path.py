"""The GPU fast path, checked on the CPU: each option changes how the work runs, not the images
(or, for the tiny VAE, changes them in the stated way and says so)."""

from __future__ import annotations

import logging

import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor2_0

from tests.worker.test_sampler import PROMPTS, SEEDS, max_pixel_difference
from worker.models import compile_modules, load_model
from worker.sampler import TiUESampler, bucket_size
from worker.tiny import make_tiny_vae

BUCKETS = {1, 2, 4, 8, 16}


def count_calls(module: torch.nn.Module, seen: list[int]):
    """A forward pre-hook that records the batch size of every call (positional or keyword)."""

    def hook(_module, args, kwargs):
        first = args[0] if args else kwargs["hidden_states"]
        seen.append(first.shape[0])

    return module.register_forward_pre_hook(hook, with_kwargs=True)


def test_attention_runs_on_pytorchs_scaled_dot_product_kernel(tiny_model):
    for module in (tiny_model.unet, tiny_model.vae):
        processors = module.attn_processors.values()
        assert processors and all(isinstance(p, AttnProcessor2_0) for p in processors)


@pytest.mark.parametrize("mode", ["sequential", "chunked"])
def test_memory_bounded_modes_decode_the_vae_in_batches_with_the_same_images(tiny_model, mode):
    options = {"mode": "sequential"} if mode == "sequential" else {"decoder_chunk": 3}
    text = TiUESampler(tiny_model).encode_text(PROMPTS)
    parallel = TiUESampler(tiny_model).sample(text, SEEDS, 64, 64, steps=4)
    for budget, expected_calls in ((None, [4]), (2 * 64 * 64, [2, 2]), (3 * 64 * 64, [3, 1])):
        calls: list[int] = []
        handle = count_calls(tiny_model.vae.decoder, calls)
        try:
            result = TiUESampler(tiny_model, vae_budget=budget).sample(
                text, SEEDS, 64, 64, steps=4, **options
            )
        finally:
            handle.remove()
        assert calls == expected_calls  # was one image per call
        assert max_pixel_difference(result.images, parallel.images) <= 1


def test_padding_to_buckets_gives_the_same_images_and_only_bucket_shapes(tiny_model):
    plain = TiUESampler(tiny_model, pad_to_buckets=False)
    padded = TiUESampler(tiny_model, pad_to_buckets=True, vae_budget=3 * 64 * 64)
    batches = (1, 3, 5, 6, 7)
    texts = {n: plain.encode_text((PROMPTS * 2)[:n]) for n in batches}
    expected = {n: plain.sample(texts[n], list(range(n)), 64, 64, steps=4).images for n in batches}
    seen: dict[str, list[int]] = {"encoder": [], "decoder": [], "vae": []}
    unet = tiny_model.unet
    handles = [
        count_calls(unet.down_blocks[0], seen["encoder"]),
        count_calls(unet.mid_block, seen["encoder"]),
        count_calls(unet.up_blocks[0], seen["decoder"]),
        count_calls(tiny_model.vae.decoder, seen["vae"]),
    ]
    try:
        got = {n: padded.sample(texts[n], list(range(n)), 64, 64, steps=4).images for n in batches}
    finally:
        for handle in handles:
            handle.remove()
    for n in batches:
        assert got[n].shape == expected[n].shape == (n, 64, 64, 3)
        assert max_pixel_difference(got[n], expected[n]) <= 1
    assert set(seen["encoder"]) == {1, 4, 8}
    assert set(seen["decoder"]) == {4 * 1, 4 * 4, 4 * 8}  # 4 timesteps x bucket
    # The VAE budget allows 3 images per call: rounded down to 2, so slices are buckets too.
    assert set(seen["vae"]) == {1, 2}
    assert [bucket_size(n) for n in (1, 2, 3, 5, 9, 16, 17)] == [1, 2, 4, 8, 16, 16, 32]


def test_a_compiled_model_pads_to_buckets_and_gives_the_same_images(tiny_model_dir, tiny_model):
    compiled = load_model(str(tiny_model_dir), device="cpu")
    # The inductor backend needs minutes of C++ builds on a CPU; "eager" runs the same Dynamo
    # capture, guards and per-shape graph cache, which is what the bucketing is for.
    compile_modules(compiled.unet, compiled.vae, backend="eager")
    compiled.compiled = True
    sampler = TiUESampler(compiled)
    assert sampler.pad_to_buckets
    seen: list[int] = []
    handle = count_calls(compiled.unet.mid_block, seen)
    try:
        result, _ = sampler.generate(PROMPTS[:3], SEEDS[:3])
    finally:
        handle.remove()
    reference, _ = TiUESampler(tiny_model).generate(PROMPTS[:3], SEEDS[:3])
    assert seen == [4]
    assert max_pixel_difference(result.images, reference.images) <= 1


def test_channels_last_gives_the_same_images(tiny_model_dir, tiny_model):
    channels_last = load_model(str(tiny_model_dir), device="cpu", channels_last=True)
    weight = channels_last.unet.conv_in.weight
    assert weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()
    got, _ = TiUESampler(channels_last).generate(PROMPTS, SEEDS)
    expected, _ = TiUESampler(tiny_model).generate(PROMPTS, SEEDS)
    assert max_pixel_difference(got.images, expected.images) <= 1


def test_bfloat16_gives_nearly_the_same_images(tiny_model_dir, tiny_model):
    half = load_model(str(tiny_model_dir), device="cpu", dtype="bfloat16")
    assert half.unet.dtype == torch.bfloat16
    got, _ = TiUESampler(half).generate(PROMPTS, SEEDS)
    expected, _ = TiUESampler(tiny_model).generate(PROMPTS, SEEDS)
    difference = (got.images.float() - expected.images.float()).abs()
    # bf16 keeps 8 bits of mantissa: pixels move a little, never the picture.
    assert difference.mean() < 2.0 and difference.max() <= 24


def test_the_tiny_vae_decodes_the_same_latents_and_says_it_is_not_the_reference(
    tiny_model_dir, tiny_model, tmp_path, caplog
):
    folder = make_tiny_vae(tmp_path / "taesd", shape="tiny")
    with caplog.at_level(logging.WARNING, logger="worker.models"):
        fast = load_model(str(tiny_model_dir), device="cpu", tiny_vae=str(folder))
    assert "not the reference image" in caplog.text
    assert fast.vae_note and "not the reference image" in fast.vae_note
    assert fast.vae_scale_factor == 8

    sampler, reference = TiUESampler(fast), TiUESampler(tiny_model)
    text = reference.encode_text(PROMPTS)
    result = sampler.sample(text, SEEDS, 64, 64)
    full = reference.sample(text, SEEDS, 64, 64)
    assert result.vae_note == fast.vae_note and full.vae_note is None
    # The stated difference: the same latents, through another decoder.
    scheduler = reference.scheduler(4)
    latents = reference.initial_latents(SEEDS, 64, 64)
    features = reference.run_encoder(latents, text.hidden_states, scheduler.timesteps[0])
    noise = reference.run_decoder(features, text.hidden_states, scheduler.timesteps)
    final = reference.ddim_chain(scheduler, latents, noise.split(len(SEEDS)), scheduler.timesteps)
    assert max_pixel_difference(result.images, sampler.decode_images(final)) <= 1
    assert max_pixel_difference(full.images, reference.decode_images(final)) <= 1
    assert max_pixel_difference(result.images, full.images) > 10


def test_a_missing_tiny_vae_folder_is_refused_with_the_fix(tiny_model_dir, tmp_path):
    from core.errors import ModelNotFound

    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFound, match="LOOPFREE_TINY_VAE"):
        load_model(str(tiny_model_dir), device="cpu", tiny_vae=str(tmp_path / "empty"))


def test_images_reach_host_memory_on_the_cpu_without_an_event(sampler):
    result, _ = sampler.generate(PROMPTS[:2], SEEDS[:2])
    assert result.host.copied is None
    assert result.images.device.type == "cpu" and result.images.is_contiguous()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_the_copy_to_host_is_pinned_asynchronous_and_exact_on_cuda(tiny_model_dir):
    model = load_model(str(tiny_model_dir), device="cuda")
    sampler = TiUESampler(model)
    text = sampler.encode_text(PROMPTS)
    result = sampler.sample(text, SEEDS, 64, 64)
    assert result.host.copied is not None and result.host.buffer.is_pinned()
    again = sampler.sample(text, SEEDS, 64, 64)  # queued while the first copy may be running
    assert torch.equal(result.images, again.images)


@pytest.mark.parametrize("tiny", [False, True])
def test_a_stored_png_says_in_its_text_when_the_tiny_vae_made_it(sampler, tmp_path, tiny):
    from PIL import Image

    from storage.stores import open_store
    from tests.worker.test_budget import make_job
    from worker.metrics import WorkerMetrics
    from worker.recording import Recorder
    from worker.rendering import Rendered

    result, _ = sampler.generate(PROMPTS[:1], SEEDS[:1])
    job = make_job(0, 64)
    job.image_format, job.image_quality = "png", None
    note = "decoded by the tiny VAE x: an approximation, not the reference image" if tiny else None
    store = open_store((tmp_path / "store").as_uri())
    recorder = Recorder(
        None,  # type: ignore[arg-type]  # storing an image touches no database
        store,
        None,  # type: ignore[arg-type]  # called directly, not through the upload pool
        worker_name="test",
        publish=lambda jobs, countdown: None,
        max_attempts=1,
        record_timeout_s=1.0,
        metrics=WorkerMetrics.disabled(),
    )
    recorder.store_image(Rendered(job, result.host, 0, 0.0, 0.0, 1, vae_note=note))
    [path] = (tmp_path / "store").rglob("*.png")
    with Image.open(path) as image:
        assert image.text.get("vae") == note
        assert image.text["seed"] == str(SEEDS[0])
