"""An independent reference for the TiUE sampler, built on the UNet's own ``forward``.

It follows the original Loopfree inference loop one image at a time: the full UNet runs at the first
timestep, and at every later timestep the UNet runs again with its encoder outputs (conv_in, down
blocks, mid block) replaced by those of the first pass, through forward hooks. This checks the
sampler's hand-wired encoder/decoder split against diffusers' own block wiring.
"""

from __future__ import annotations

import torch
from diffusers import DDIMScheduler

from worker.models import LoopfreeModel


@torch.no_grad()
def reference_image(
    model: LoopfreeModel, prompt: str, seed: int, height: int, width: int, steps: int = 4
) -> torch.Tensor:
    tokenizer, unet, vae = model.tokenizer, model.unet, model.vae
    ids = tokenizer(
        [prompt],
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids
    text = model.text_encoder(ids)[0].to(model.device, model.dtype)
    scheduler = DDIMScheduler.from_config(model.scheduler_config)
    scheduler.set_timesteps(steps)
    factor = model.vae_scale_factor
    generator = torch.Generator("cpu").manual_seed(seed)
    latents = torch.randn(
        (1, unet.config.in_channels, height // factor, width // factor),
        generator=generator,
        dtype=torch.float32,
    ).to(model.device, model.dtype)

    encoder_modules = [unet.conv_in, *unet.down_blocks, unet.mid_block]
    stored: dict[int, object] = {}
    replay = False

    def hook(module: torch.nn.Module, _inputs: object, output: object) -> object:
        if replay:
            return stored[id(module)]
        stored[id(module)] = output
        return output

    handles = [m.register_forward_hook(hook) for m in encoder_modules]
    try:
        noise_predictions = []
        for index, timestep in enumerate(scheduler.timesteps):
            replay = index > 0
            noise_predictions.append(unet(latents, timestep, encoder_hidden_states=text).sample)
    finally:
        for handle in handles:
            handle.remove()

    for noise, timestep in zip(noise_predictions, scheduler.timesteps, strict=True):
        latents = scheduler.step(noise, timestep, latents).prev_sample
    decoded = vae.decode(latents / vae.config.scaling_factor).sample.float()
    pixels = (decoded * 127.5 + 127.5).round().clamp(0, 255).to(torch.uint8)
    return pixels[0].permute(1, 2, 0).cpu()
