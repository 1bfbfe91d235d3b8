"""The TiUE sampler on tiny random-weight models: same images however the work is arranged."""

from __future__ import annotations

import pytest
import torch

from core.errors import UserError
from tests.worker.reference import reference_image
from worker.sampler import TiUESampler

PROMPTS = ["a red fox in the snow", "a lighthouse at dusk", "a bowl of ramen", "abstract shapes"]
SEEDS = [0, 1, 1234, 2**40 + 7]


def max_pixel_difference(a: torch.Tensor, b: torch.Tensor) -> int:
    return int((a.int() - b.int()).abs().max())


@pytest.mark.parametrize("size", [(64, 64), (48, 80), (72, 56)])
def test_each_image_matches_the_reference_loop_at_several_sizes(sampler, tiny_model, size):
    height, width = size
    result, _ = sampler.generate(PROMPTS[:2], SEEDS[:2], height, width)
    assert result.images.shape == (2, height, width, 3)
    for index in range(2):
        expected = reference_image(tiny_model, PROMPTS[index], SEEDS[index], height, width)
        assert max_pixel_difference(result.images[index], expected) <= 1


@pytest.mark.parametrize("steps", [1, 2, 4, 8])
def test_parallel_sequential_and_chunked_decoders_give_the_same_images(sampler, steps):
    text = sampler.encode_text(PROMPTS)
    parallel = sampler.sample(text, SEEDS, 64, 64, steps=steps, mode="parallel")
    sequential = sampler.sample(text, SEEDS, 64, 64, steps=steps, mode="sequential")
    chunked = sampler.sample(text, SEEDS, 64, 64, steps=steps, decoder_chunk=3)
    assert parallel.decoder_calls == 1
    assert sequential.decoder_calls == steps
    assert chunked.decoder_calls == -(-steps // 3)
    assert max_pixel_difference(parallel.images, sequential.images) <= 1
    assert max_pixel_difference(parallel.images, chunked.images) <= 1


def test_an_image_in_a_batch_equals_the_same_image_alone(sampler):
    batched, _ = sampler.generate(PROMPTS, SEEDS)
    for index, (prompt, seed) in enumerate(zip(PROMPTS, SEEDS, strict=True)):
        alone, _ = sampler.generate([prompt], [seed])
        assert max_pixel_difference(batched.images[index], alone.images[0]) <= 1


def test_different_seeds_and_prompts_give_different_images(sampler):
    result, _ = sampler.generate([PROMPTS[0], PROMPTS[0], PROMPTS[1]], [5, 6, 5])
    assert max_pixel_difference(result.images[0], result.images[1]) > 10
    # Random text weights move the image only a little, but they must move it.
    assert max_pixel_difference(result.images[0], result.images[2]) > 2


def test_the_encoder_runs_once_per_batch_and_the_decoder_once_per_timestep(sampler, tiny_model):
    calls = {"encoder": 0, "decoder": 0}

    def count(name):
        def hook(*_):
            calls[name] += 1

        return hook

    handles = [
        tiny_model.unet.mid_block.register_forward_hook(count("encoder")),
        tiny_model.unet.conv_out.register_forward_hook(count("decoder")),
    ]
    try:
        text = sampler.encode_text(PROMPTS)
        sampler.sample(text, SEEDS, 64, 64, steps=4, mode="sequential")
    finally:
        for handle in handles:
            handle.remove()
    assert calls == {"encoder": 1, "decoder": 4}


def test_a_prompt_longer_than_the_tokenizer_limit_is_reported_truncated(sampler):
    long_prompt = "a very long prompt " * 20
    text = sampler.encode_text(["short", long_prompt])
    assert text.truncated == [False, True]
    assert text.hidden_states.shape[1] == sampler.model.tokenizer.model_max_length


def test_a_size_that_is_not_a_multiple_of_eight_is_refused_with_the_fix(sampler):
    text = sampler.encode_text(["x"])
    with pytest.raises(UserError, match="height 60 is not a positive multiple of 8; use 56 or 64"):
        sampler.sample(text, [0], 60, 64)


def test_the_default_size_is_the_unets_sample_size_times_the_vae_factor(tiny_model):
    assert tiny_model.default_size == 64
    result, _ = TiUESampler(tiny_model).generate(["x"], [0])
    assert result.images.shape == (1, 64, 64, 3)
