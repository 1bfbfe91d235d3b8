"""How many jobs one sampler call may take: a memory budget in latent pixels x samples.

The largest activations of a TiUE call are the UNet decoder's: it runs ``batch x T`` samples at
once (T = the timesteps decoded in parallel: ``steps``, or ``decoder_chunk`` when set), each at the
latent size ``(h / 8) x (w / 8)``. Their memory grows with that product and with nothing else that
varies between jobs, so the budget is one number per model and device:

    batch x T x (h / 8) x (w / 8)  <=  budget          (latent pixel-samples per decoder call)

It does not depend on the model's native size (a 64 px test model renders 512 px jobs in batches
as large as SD1.5 does), and 50 steps get a smaller cap than 4. The VAE decodes full-size images
and has a budget of its own, in image pixels per decode call (``vae_chunk``).

Where a memory table measured on a GPU exists (``MEASURED_BUDGETS``, filled from
``bench/bench_gpu.py``), it gives the budget; otherwise ``DEFAULT_BATCH_BUDGET``;
``LOOPFREE_BATCH_BUDGET`` overrides both.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch

log = logging.getLogger(__name__)

# The default max_batch (16) at 512 px and 4 steps: 16 x 4 x 64 x 64 latent pixel-samples. That is
# the call the worker has always made by default (estimated, not measured, to fit a 24 GB card in
# fp16), so an unmeasured GPU gets no larger calls than before; on a CPU it bounds RAM the same way.
DEFAULT_BATCH_BUDGET = 16 * 4 * 64 * 64
# The VAE at 512 px decodes 16 images per call by default: the whole default batch in one call,
# as parallel mode always did. Image pixels per decode call.
DEFAULT_VAE_BUDGET = 16 * 512 * 512

# Budgets measured on GPUs: (model signature, device name, dtype) -> latent pixel-samples per call
# that kept peak memory under ~85% of the card. ``bench/bench_gpu.py`` prints the rows to add.
# The signature is the UNet's shape (``model_signature``): a fine-tune of SD1.5 shares its row.
# Empty until a GPU run: no GPU has been lent to the sessions that built this (BENCHMARKS.md).
MEASURED_BUDGETS: dict[tuple[str, str, str], int] = {}


def model_signature(unet_config: Mapping[str, Any]) -> str:
    """The UNet's shape, e.g. ``320-640-1280-1280/x768``: what its memory depends on. Takes the
    UNet's config (a loaded model's ``unet.config``, or ``load_config`` of its folder)."""
    channels = "-".join(str(c) for c in unet_config.get("block_out_channels", ()))
    return f"{channels}/x{unet_config.get('cross_attention_dim', '?')}"


def device_name(device: torch.device) -> str:
    """``cpu``, or the CUDA card's marketing name (``NVIDIA H100 80GB HBM3``)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return device.type


def resolve_batch_budget(
    unet_config: Mapping[str, Any],
    device: torch.device,
    dtype: torch.dtype,
    override: int | None = None,
) -> int:
    """The budget for this model on this device: the setting, else the measured row, else the
    default. Logged once, so a worker's log says which one it runs on."""
    if override is not None:
        log.info("batch budget %d latent pixel-samples (LOOPFREE_BATCH_BUDGET)", override)
        return override
    key = (model_signature(unet_config), device_name(device), str(dtype).removeprefix("torch."))
    if key in MEASURED_BUDGETS:
        budget = MEASURED_BUDGETS[key]
        log.info("batch budget %d latent pixel-samples (measured for %s)", budget, key)
        return budget
    log.info(
        "batch budget %d latent pixel-samples (default; no measured row for %s)",
        DEFAULT_BATCH_BUDGET,
        key,
    )
    return DEFAULT_BATCH_BUDGET


def timesteps_in_parallel(steps: int, decoder_chunk: int | None) -> int:
    """Decoder samples per image in one call: all steps, or ``decoder_chunk`` of them."""
    return min(steps, decoder_chunk) if decoder_chunk else steps


def batch_cap(
    budget: int,
    *,
    height: int,
    width: int,
    steps: int,
    decoder_chunk: int | None,
    vae_scale_factor: int = 8,
) -> int:
    """Jobs per sampler call: as many as the budget allows, at least 1."""
    latent_pixels = (height // vae_scale_factor) * (width // vae_scale_factor)
    per_job = timesteps_in_parallel(steps, decoder_chunk) * latent_pixels
    return max(1, budget // per_job)


def vae_chunk(vae_budget: int, height: int, width: int) -> int:
    """Images per VAE decode call at this size: as many as the VAE budget allows, at least 1."""
    return max(1, vae_budget // (height * width))
