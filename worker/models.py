"""Loading a Loopfree model (a diffusers pipeline directory or a hub id) once per process."""

from __future__ import annotations

import logging
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import torch
from diffusers import AutoencoderKL, AutoencoderTiny, DDIMScheduler, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTokenizer

from core.errors import ModelNotFound, UserError

log = logging.getLogger(__name__)


def _quiet_progress_bars() -> None:
    """Per-file loading bars are noise in a worker's log."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()


# Only what the sampler reads; skips safety checkers, feature extractors and extra weight formats.
PIPELINE_FILES = [
    "model_index.json",
    "scheduler/*",
    "tokenizer/*",
    "text_encoder/config.json",
    "text_encoder/*.safetensors",
    "unet/config.json",
    "unet/diffusion_pytorch_model.safetensors",
    "vae/config.json",
    "vae/diffusion_pytorch_model.safetensors",
]
# A hub that does not answer within this many seconds is treated as unreachable, instead of
# letting huggingface_hub retry name resolution for half a minute.
HUB_PROBE_TIMEOUT_S = 3.0
# What an AutoencoderTiny (TAESD) folder holds.
TINY_VAE_FILES = ["config.json", "diffusion_pytorch_model.safetensors"]
# Sampler calls see one batch size per bucket (worker.sampler pads up to a power of two), times the
# image sizes and timestep chunks in use: room for that many compiled graphs per module before
# torch.compile gives up and runs a module eagerly (its default allows 8).
COMPILE_CACHE_SIZE = 64


@dataclass
class LoopfreeModel:
    """The parts of a Loopfree pipeline the sampler uses, on one device and dtype."""

    name: str
    tokenizer: CLIPTokenizer
    text_encoder: CLIPTextModel
    unet: UNet2DConditionModel
    vae: AutoencoderKL | AutoencoderTiny
    scheduler_config: dict[str, Any]
    device: torch.device
    dtype: torch.dtype
    load_seconds: float = 0.0
    extras: dict[str, Any] = field(default_factory=dict)
    # torch.compile'd modules recompile for every new input shape: the sampler pads batches to a
    # few bucket sizes when this is set, so the compiled graphs are reused.
    compiled: bool = False
    # Where a tiny VAE came from; None: the model's own VAE, whose images are the reference.
    tiny_vae: str | None = None

    @property
    def vae_scale_factor(self) -> int:
        config = self.vae.config
        if isinstance(self.vae, AutoencoderTiny):
            return config.upsampling_scaling_factor ** (len(config.decoder_block_out_channels) - 1)
        return 2 ** (len(config.block_out_channels) - 1)

    @property
    def vae_note(self) -> str | None:
        """What to tell whoever looks at an image that the tiny VAE decoded; None for the full
        VAE."""
        if self.tiny_vae is None:
            return None
        return f"decoded by the tiny VAE {self.tiny_vae}: an approximation, not the reference image"

    @property
    def default_size(self) -> int:
        """The UNet's native size in pixels (512 for SD1.5, 64 for the tiny test model)."""
        return int(self.unet.config.sample_size) * self.vae_scale_factor

    def check_size(self, height: int, width: int) -> None:
        for name, value in (("height", height), ("width", width)):
            if value % self.vae_scale_factor != 0 or value <= 0:
                lower = max(self.vae_scale_factor, value - value % self.vae_scale_factor)
                raise UserError(
                    f"{name} {value} is not a positive multiple of {self.vae_scale_factor}; "
                    f"use {lower} or {lower + self.vae_scale_factor}"
                )


def pick_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu")
    return torch.device(device)


def pick_dtype(device: torch.device, dtype: str = "auto") -> torch.dtype:
    """fp16 on CUDA by default (bf16 on request); fp32 on the CPU, where half precision is slow."""
    if dtype == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}[dtype]


def resolve_model_dir(model: str) -> Path:
    """A local pipeline directory for ``model``: the path itself, or the hub snapshot of that id."""
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "unet").is_dir():
            raise ModelNotFound(
                f"{model} is a folder but not a diffusers pipeline (no unet/ inside); point "
                "--model "
                "at the folder that holds model_index.json"
            )
        return path
    if path.is_absolute() or model.startswith((".", "~")) or model.count("/") != 1:
        raise ModelNotFound(f"model {model!r} is neither a local folder nor a hub id (owner/name)")
    return _snapshot(model, PIPELINE_FILES)


def resolve_tiny_vae_dir(name: str) -> Path:
    """A local AutoencoderTiny folder for ``name``: the folder itself, or the hub snapshot."""
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelNotFound(
                f"{name} is a folder but holds no config.json; point LOOPFREE_TINY_VAE at an "
                "AutoencoderTiny folder (e.g. a download of madebyollin/taesd)"
            )
        return path
    if path.is_absolute() or name.startswith((".", "~")) or name.count("/") != 1:
        raise ModelNotFound(f"tiny VAE {name!r} is neither a local folder nor a hub id")
    return _snapshot(name, TINY_VAE_FILES, point_with="LOOPFREE_TINY_VAE=")


def _snapshot(model: str, patterns: list[str], point_with: str = "--model ") -> Path:
    """The hub snapshot of ``model``, from the cache or downloaded; a one-line error offline."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(model, allow_patterns=patterns, local_files_only=True))
    except LocalEntryNotFoundError:
        pass  # not cached yet: download below
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes"} or not _hub_reachable():
        raise ModelNotFound(
            f"cannot download {model}: the Hugging Face Hub is unreachable from here (offline) and "
            f"it is not in the local cache; run `hf download {model}` where there is network and "
            f"pass {point_with}/path/to/that/folder (or set HF_HOME to a cache that has it)"
        )
    try:
        return Path(snapshot_download(model, allow_patterns=patterns))
    except HfHubHTTPError as error:
        raise ModelNotFound(f"cannot download {model} from the hub: {error}") from error


def _hub_reachable() -> bool:
    from huggingface_hub import constants

    parts = urlsplit(constants.ENDPOINT)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname, port), timeout=HUB_PROBE_TIMEOUT_S):
            return True
    except OSError:
        return False


def check_supported(unet: UNet2DConditionModel, model: str) -> None:
    """The sampler follows the SD1.5/SD2.1 UNet layout; refuse anything it would run wrongly."""
    config = unet.config
    unsupported = {
        "class_embed_type": config.class_embed_type,
        "addition_embed_type": config.addition_embed_type,
        "encoder_hid_dim_type": config.encoder_hid_dim_type,
        "num_class_embeds": config.num_class_embeds,
    }
    found = {key: value for key, value in unsupported.items() if value is not None}
    if found:
        raise UserError(f"{model}: UNet options {found} are not supported by the TiUE sampler")


def load_model(
    model: str,
    *,
    device: str = "auto",
    dtype: str = "auto",
    compile: bool = False,
    channels_last: bool | None = None,
    tiny_vae: str | None = None,
) -> LoopfreeModel:
    """Load tokenizer, text encoder, UNet, VAE and scheduler config from ``model``.

    ``channels_last`` None: on for CUDA (tensor cores want it), off on the CPU. ``tiny_vae``: a
    hub id or folder of an AutoencoderTiny to decode with instead of the model's own VAE (faster,
    not the reference image). ``compile``: torch.compile the UNet halves' blocks and the VAE
    decoder, one static graph per batch bucket.
    """
    started = time.perf_counter()
    _quiet_progress_bars()
    torch_device = pick_device(device)
    torch_dtype = pick_dtype(torch_device, dtype)
    folder = resolve_model_dir(model)
    try:
        tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer")
        text_encoder = CLIPTextModel.from_pretrained(folder / "text_encoder", dtype=torch_dtype)
        unet = UNet2DConditionModel.from_pretrained(folder / "unet", torch_dtype=torch_dtype)
        if tiny_vae is None:
            vae = AutoencoderKL.from_pretrained(folder / "vae", torch_dtype=torch_dtype)
        else:
            vae = AutoencoderTiny.from_pretrained(
                resolve_tiny_vae_dir(tiny_vae), torch_dtype=torch_dtype
            )
        scheduler_config = dict(DDIMScheduler.load_config(folder / "scheduler"))
    except (OSError, ValueError) as error:
        raise ModelNotFound(f"cannot load {model} from {folder}: {error}") from error
    check_supported(unet, model)

    for module in (text_encoder, unet, vae):
        module.requires_grad_(False).eval().to(torch_device)
    # diffusers picks PyTorch's scaled-dot-product attention (flash / memory-efficient kernels in
    # fp16 and bf16 on CUDA) by default on torch 2; set it explicitly so no version change or
    # leftover config silently falls back to the quadratic-memory processor. The tiny VAE has no
    # attention.
    from diffusers.models.attention_processor import AttnProcessor2_0

    unet.set_attn_processor(AttnProcessor2_0())
    if isinstance(vae, AutoencoderKL):
        vae.set_attn_processor(AttnProcessor2_0())
    if channels_last if channels_last is not None else torch_device.type == "cuda":
        unet.to(memory_format=torch.channels_last)
        vae.to(memory_format=torch.channels_last)
    if compile:
        compile_modules(unet, vae)
    loaded = LoopfreeModel(
        name=model,
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        unet=unet,
        vae=vae,
        scheduler_config=scheduler_config,
        device=torch_device,
        dtype=torch_dtype,
        compiled=compile,
        tiny_vae=tiny_vae,
    )
    loaded.load_seconds = time.perf_counter() - started
    log.info("loaded %s on %s/%s in %.1fs", model, torch_device, torch_dtype, loaded.load_seconds)
    if loaded.vae_note:
        log.warning("images of %s are %s", model, loaded.vae_note)
    return loaded


def compile_modules(
    unet: UNet2DConditionModel, vae: AutoencoderKL | AutoencoderTiny, backend: str = "inductor"
) -> None:
    """torch.compile, in place, the modules the sampler calls: the encoder half's down blocks and
    mid block, the decoder half's up blocks, and the VAE's decoder.

    In place (``Module.compile``), so the sampler still calls the same submodules, and forward
    hooks still see every call. ``dynamic=False``: one static graph per input shape, which the
    sampler keeps to a few by padding batches to buckets (``LoopfreeModel.compiled``).
    """
    import torch._dynamo

    torch._dynamo.config.cache_size_limit = max(
        torch._dynamo.config.cache_size_limit, COMPILE_CACHE_SIZE
    )
    modules = [*unet.down_blocks, unet.mid_block, *unet.up_blocks, vae.decoder]
    for module in modules:
        module.compile(backend=backend, dynamic=False)
