"""The TiUE sampler of "One-Way Ticket" (Loopfree models), batched.

A Loopfree UNet is trained so that its encoder half (``conv_in``, down blocks, mid block) is
time-independent: it runs ONCE on the initial noise, with the first timestep's embedding. The
decoder half (up blocks and output head) then runs for every DDIM timestep, each time on the same
stored encoder features but with that timestep's embedding. Because no decoder pass depends on
another, all N of them run as one batch. The N noise predictions are then chained through DDIM
updates, starting from the initial noise, and the VAE decodes the result.

Reading order, next to the paper: ``encode_text`` -> ``initial_latents`` -> ``run_encoder``
(once) -> ``run_decoder`` (per timestep, in parallel) -> ``ddim_chain`` -> ``decode_images``;
then ``to_host`` copies the pixels to host memory.

On a GPU three things change how the work is laid out, never what it computes: the VAE decodes
as many images per call as its memory budget allows; with compiled modules, a batch is padded up
to the next bucket size (1, 2, 4, 8, ...) so compiled graphs are reused, and the padding rows are
dropped before the images leave; and the copy of the pixels to host memory runs on a side stream
while the next batch starts (``HostImages``).

Unlike the reference implementation, which handles one image at a time, a call here takes B prompts
and runs the decoder on N x B samples at once (timestep-major). Every image depends only on its own
prompt, seed, size and model, never on its batch-mates.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from diffusers import DDIMScheduler

from core.jobspec import DEFAULT_STEPS
from worker.budget import DEFAULT_VAE_BUDGET, vae_chunk
from worker.models import LoopfreeModel

DecoderMode = Literal["parallel", "sequential"]


@dataclass(frozen=True)
class TextEncoding:
    """CLIP text features for a batch of prompts."""

    hidden_states: torch.Tensor  # (B, tokens, dim) on the model's device and dtype
    truncated: list[bool]  # prompt i lost tokens to the tokenizer's length limit


@dataclass(frozen=True)
class EncoderFeatures:
    """What the UNet encoder computes once per batch and every decoder pass re-uses."""

    skips: tuple[torch.Tensor, ...]  # conv_in and down-block outputs, consumed by the up blocks
    mid: torch.Tensor  # mid-block output, the decoder's input


@dataclass(frozen=True)
class HostImages:
    """A batch's pixels in host memory, perhaps still being copied there from the GPU.

    On CUDA the copy runs on a side stream into pinned memory, and ``copied`` is recorded after
    it: whoever reads the pixels (an upload thread) waits on that event, while the GPU already
    runs the next batch. On the CPU the pixels are host memory already and ``copied`` is None.
    """

    buffer: torch.Tensor  # (B, H, W, 3) uint8, contiguous
    copied: torch.cuda.Event | None = None

    def wait(self) -> torch.Tensor:
        """The pixels, once they are all in host memory."""
        if self.copied is not None:
            self.copied.synchronize()
        return self.buffer


@dataclass(frozen=True)
class SampleResult:
    host: HostImages
    encoder_calls: int  # always 1 per batch: the point of TiUE, counted so tests can check it
    decoder_calls: int
    vae_note: str | None = None  # set when the tiny VAE decoded: not the reference images

    @property
    def images(self) -> torch.Tensor:
        """(B, H, W, 3) uint8 in host memory; waits for the copy from the GPU."""
        return self.host.wait()


class TiUESampler:
    """Runs Loopfree models: one UNet-encoder pass, N parallel decoder passes, a DDIM chain.

    Thread contract. The sampler holds no lock; callers keep to this:

    - ``sample`` (and the steps it is made of) uses the UNet, the VAE and the cached schedulers:
      one thread at a time. The worker holds its GPU lock around every call
      (``worker.rendering``).
    - ``encode_text`` uses only the tokenizer and the text encoder, which ``sample`` never
      touches: one thread at a time, but it may run while another thread is in ``sample``. The
      worker calls it only through ``worker.text.TextEncoderCache``, under the cache's lock, so
      the next batch's text is encoded while this one samples.
    - ``generate`` is both, for single-threaded callers (the CLI, benchmarks, the worker's
      warm-up before its threads start).

    Nothing is written to the model's modules after loading, so on CUDA the two threads' kernels
    simply queue on the device; on a CPU they share its cores.
    """

    def __init__(
        self,
        model: LoopfreeModel,
        *,
        vae_budget: int | None = None,
        pad_to_buckets: bool | None = None,
    ) -> None:
        """``vae_budget``: image pixels per VAE decode call (default 16 images at 512 px).
        ``pad_to_buckets``: pad batches to a power of two; default on for compiled models."""
        self.model = model
        self.vae_budget = vae_budget or DEFAULT_VAE_BUDGET
        self.pad_to_buckets = model.compiled if pad_to_buckets is None else pad_to_buckets
        self._schedulers: dict[int, DDIMScheduler] = {}
        self._copy_stream: torch.cuda.Stream | None = None

    # -- 1. text --------------------------------------------------------------------------------

    @torch.no_grad()
    def encode_text(self, prompts: Sequence[str]) -> TextEncoding:
        """CLIP's last hidden state, padded to the tokenizer's limit; no classifier-free
        guidance."""
        tokenizer = self.model.tokenizer
        tokens = tokenizer(
            list(prompts),
            padding="max_length",
            max_length=tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        )
        # Tokenizing without truncation is the only honest way to tell who lost words.
        untruncated = tokenizer(list(prompts), truncation=False, verbose=False).input_ids
        full_lengths = [len(ids) for ids in untruncated]
        truncated = [n > tokenizer.model_max_length for n in full_lengths]
        text_encoder = self.model.text_encoder
        hidden = text_encoder(tokens.input_ids.to(text_encoder.device))[0]
        return TextEncoding(hidden.to(self.model.device, self.model.dtype), truncated)

    # -- 2. noise -------------------------------------------------------------------------------

    def initial_latents(self, seeds: Sequence[int], height: int, width: int) -> torch.Tensor:
        """One CPU-generated fp32 noise tensor per seed, so an image never depends on its batch."""
        channels = self.model.unet.config.in_channels
        factor = self.model.vae_scale_factor
        noise = [
            torch.randn(
                (1, channels, height // factor, width // factor),
                generator=torch.Generator("cpu").manual_seed(seed),
                dtype=torch.float32,
            )
            for seed in seeds
        ]
        return torch.cat(noise).to(self.model.device, self.model.dtype)

    # -- 3. encoder, once -----------------------------------------------------------------------

    def time_embedding(self, timesteps: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """The UNet's embedding of one timestep per sample, as its own forward computes it."""
        unet = self.model.unet
        # time_proj has no weights and returns fp32 whatever the model's dtype.
        projected = unet.time_proj(timesteps.to(self.model.device)).to(dtype)
        embedding = unet.time_embedding(projected)
        if unet.time_embed_act is not None:
            embedding = unet.time_embed_act(embedding)
        return embedding

    @torch.no_grad()
    def run_encoder(
        self, latents: torch.Tensor, text: torch.Tensor, first_timestep: torch.Tensor
    ) -> EncoderFeatures:
        """conv_in, down blocks and mid block on the initial noise, at the FIRST timestep only."""
        unet = self.model.unet
        emb = self.time_embedding(first_timestep.expand(latents.shape[0]), latents.dtype)
        sample = 2 * latents - 1.0 if unet.config.center_input_sample else latents
        sample = unet.conv_in(sample)
        skips: tuple[torch.Tensor, ...] = (sample,)
        for block in unet.down_blocks:
            if getattr(block, "has_cross_attention", False):
                sample, block_skips = block(
                    hidden_states=sample, temb=emb, encoder_hidden_states=text
                )
            else:
                sample, block_skips = block(hidden_states=sample, temb=emb)
            skips += block_skips
        if getattr(unet.mid_block, "has_cross_attention", False):
            sample = unet.mid_block(sample, emb, encoder_hidden_states=text)
        else:
            sample = unet.mid_block(sample, emb)
        return EncoderFeatures(skips=skips, mid=sample)

    # -- 4. decoder, per timestep ---------------------------------------------------------------

    @torch.no_grad()
    def run_decoder(
        self, features: EncoderFeatures, text: torch.Tensor, timesteps: torch.Tensor
    ) -> torch.Tensor:
        """Up blocks and output head for T timesteps at once; returns (T*B, C, h, w), T-major.

        Sample ``i * B + b`` is image b's noise prediction at ``timesteps[i]``.
        """
        unet = self.model.unet
        repeats = len(timesteps)
        batch = features.mid.shape[0]
        emb = self.time_embedding(timesteps.repeat_interleave(batch), features.mid.dtype)
        text = _tile(text, repeats)
        sample = _tile(features.mid, repeats)
        skips = [_tile(skip, repeats) for skip in features.skips]

        # Latents that are not a multiple of the total upsampling factor need explicit sizes.
        latent_h, latent_w = features.skips[0].shape[-2:]
        up_factor = 2**unet.num_upsamplers
        forward_upsample_size = latent_h % up_factor != 0 or latent_w % up_factor != 0
        for index, block in enumerate(unet.up_blocks):
            block_skips = tuple(skips[-len(block.resnets) :])
            skips = skips[: -len(block.resnets)]
            is_final_block = index == len(unet.up_blocks) - 1
            upsample_size = (
                skips[-1].shape[2:] if forward_upsample_size and not is_final_block else None
            )
            if getattr(block, "has_cross_attention", False):
                sample = block(
                    hidden_states=sample,
                    temb=emb,
                    res_hidden_states_tuple=block_skips,
                    encoder_hidden_states=text,
                    upsample_size=upsample_size,
                )
            else:
                sample = block(
                    hidden_states=sample,
                    temb=emb,
                    res_hidden_states_tuple=block_skips,
                    upsample_size=upsample_size,
                )
        if unet.conv_norm_out is not None:
            sample = unet.conv_act(unet.conv_norm_out(sample))
        return unet.conv_out(sample)

    # -- 5. DDIM chain and VAE ------------------------------------------------------------------

    def scheduler(self, steps: int) -> DDIMScheduler:
        """A DDIM scheduler from the model's own config, set to ``steps`` inference steps."""
        if steps not in self._schedulers:
            scheduler = DDIMScheduler.from_config(self.model.scheduler_config)
            scheduler.set_timesteps(steps)
            self._schedulers[steps] = scheduler
        return self._schedulers[steps]

    @staticmethod
    def ddim_chain(
        scheduler: DDIMScheduler,
        latents: torch.Tensor,
        noise_predictions: Sequence[torch.Tensor],
        timesteps: torch.Tensor,
    ) -> torch.Tensor:
        """Apply the DDIM updates in order, starting from the initial noise."""
        for noise, timestep in zip(noise_predictions, timesteps, strict=True):
            latents = scheduler.step(noise, timestep, latents).prev_sample
        return latents

    @torch.no_grad()
    def decode_images(self, latents: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
        """VAE-decode and map [-1, 1] to uint8 RGB, (B, H, W, 3) on the model's device.

        ``chunk`` images per VAE call: the VAE's activations at full resolution are the largest
        of the whole sampler, so a batch is decoded in slices that fit the VAE budget. (The tiny
        VAE takes the same latents and also returns [-1, 1]; its scaling factor is 1.)
        """
        vae = self.model.vae
        scaled = (latents / vae.config.scaling_factor).to(vae.dtype)
        decoded = torch.cat(
            [vae.decode(part).sample.float() for part in scaled.split(chunk or len(scaled))]
        )
        pixels = (decoded * 127.5 + 127.5).round().clamp(0, 255).to(torch.uint8)
        # Contiguous once per batch (on the device), so upload threads get plain row-major views.
        return pixels.permute(0, 2, 3, 1).contiguous()

    # -- 6. to host memory ----------------------------------------------------------------------

    def to_host(self, pixels: torch.Tensor) -> HostImages:
        """Start the copy of ``pixels`` to host memory; return once the GPU has computed them.

        On CUDA: a pinned buffer, filled with ``non_blocking=True`` on a side stream that first
        waits for the sampling kernels; the event recorded after the copy is what readers wait
        on. Then this waits only for the sampling kernels, not for the copy, so the caller can
        release the GPU and start the next batch while the pixels travel. On the CPU the pixels
        are already in host memory.
        """
        if pixels.device.type != "cuda":
            return HostImages(pixels)
        if self._copy_stream is None:
            self._copy_stream = torch.cuda.Stream(pixels.device)
        compute = torch.cuda.current_stream(pixels.device)
        buffer = torch.empty(pixels.shape, dtype=pixels.dtype, pin_memory=True)
        self._copy_stream.wait_stream(compute)
        with torch.cuda.stream(self._copy_stream):
            buffer.copy_(pixels, non_blocking=True)
            copied = torch.cuda.Event()
            copied.record(self._copy_stream)
        # The caching allocator must not hand ``pixels``' memory to the next batch before the
        # side stream has read it.
        pixels.record_stream(self._copy_stream)
        compute.synchronize()
        return HostImages(buffer, copied)

    # -- the whole thing ------------------------------------------------------------------------

    @torch.no_grad()
    def sample(
        self,
        text: TextEncoding,
        seeds: Sequence[int],
        height: int,
        width: int,
        *,
        steps: int = DEFAULT_STEPS,
        mode: DecoderMode = "parallel",
        decoder_chunk: int | None = None,
    ) -> SampleResult:
        """Generate one image per (prompt, seed); all share ``height``, ``width`` and ``steps``.

        ``mode="parallel"`` runs all decoder passes in one call, ``"sequential"`` one per timestep
        (least memory); ``decoder_chunk`` runs that many timesteps per call, in between. All three
        give the same images.
        """
        if len(seeds) != text.hidden_states.shape[0]:
            raise ValueError(f"{len(seeds)} seeds for {text.hidden_states.shape[0]} prompts")
        self.model.check_size(height, width)
        scheduler = self.scheduler(steps)
        timesteps = scheduler.timesteps
        chunk = decoder_chunk or (len(timesteps) if mode == "parallel" else 1)

        latents = self.initial_latents(seeds, height, width)
        hidden_states = text.hidden_states
        real = latents.shape[0]
        if self.pad_to_buckets:
            # Compiled graphs are per shape: pad with copies of the last row up to the bucket,
            # and drop the copies' images at the end. No image depends on its batch-mates.
            latents = _pad_rows(latents, bucket_size(real))
            hidden_states = _pad_rows(hidden_states, bucket_size(real))
        features = self.run_encoder(latents, hidden_states, timesteps[0])
        batch = latents.shape[0]
        noise_predictions: list[torch.Tensor] = []
        decoder_calls = 0
        for start in range(0, len(timesteps), chunk):
            chunk_timesteps = timesteps[start : start + chunk]
            predicted = self.run_decoder(features, hidden_states, chunk_timesteps)
            noise_predictions.extend(predicted.split(batch))
            decoder_calls += 1
        latents = self.ddim_chain(scheduler, latents, noise_predictions, timesteps)
        # As many images per VAE call as its budget allows, in every mode; a power of two when
        # padding, so each slice of the padded batch is itself a bucket.
        images_per_call = vae_chunk(self.vae_budget, height, width)
        if self.pad_to_buckets:
            images_per_call = 1 << (images_per_call.bit_length() - 1)
        pixels = self.decode_images(latents, images_per_call)[:real]
        return SampleResult(
            host=self.to_host(pixels),
            encoder_calls=1,
            decoder_calls=decoder_calls,
            vae_note=self.model.vae_note,
        )

    def generate(
        self,
        prompts: Sequence[str],
        seeds: Sequence[int],
        height: int | None = None,
        width: int | None = None,
        **options: object,
    ) -> tuple[SampleResult, list[bool]]:
        """Text encoding and sampling in one call; size defaults to the model's native size."""
        height = height or self.model.default_size
        width = width or self.model.default_size
        text = self.encode_text(prompts)
        return self.sample(text, seeds, height, width, **options), text.truncated  # type: ignore[arg-type]


def bucket_size(batch: int) -> int:
    """The batch size a compiled sampler runs ``batch`` jobs at: the next power of two."""
    return 1 << (batch - 1).bit_length()


def _pad_rows(tensor: torch.Tensor, rows: int) -> torch.Tensor:
    """``tensor`` with copies of its last row appended up to ``rows`` rows."""
    missing = rows - tensor.shape[0]
    if missing <= 0:
        return tensor
    return torch.cat([tensor, tensor[-1:].expand(missing, *tensor.shape[1:])])


def _tile(tensor: torch.Tensor, times: int) -> torch.Tensor:
    """``times`` copies of ``tensor`` along the batch axis; no copy at all for one (sequential and
    chunked modes call the decoder per timestep, and the stored features are large)."""
    if times == 1:
        return tensor
    return tensor.repeat(times, *([1] * (tensor.dim() - 1)))
