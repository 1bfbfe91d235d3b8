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
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
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


@dataclass
class LoopfreeModel:
    """The parts of a Loopfree pipeline the sampler uses, on one device and dtype."""

    name: str
    tokenizer: CLIPTokenizer
    text_encoder: CLIPTextModel
    unet: UNet2DConditionModel
    vae: AutoencoderKL
    scheduler_config: dict[str, Any]
    device: torch.device
    dtype: torch.dtype
    load_seconds: float = 0.0
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

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

    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(model, allow_patterns=PIPELINE_FILES, local_files_only=True))
    except LocalEntryNotFoundError:
        pass  # not cached yet: download below
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes"} or not _hub_reachable():
        raise ModelNotFound(
            f"cannot download {model}: the Hugging Face Hub is unreachable from here (offline) and "
            f"it is not in the local cache; run `hf download {model}` where there is network and "
            "pass --model /path/to/that/folder (or set HF_HOME to a cache that has it)"
        )
    try:
        return Path(snapshot_download(model, allow_patterns=PIPELINE_FILES))
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
) -> LoopfreeModel:
    """Load tokenizer, text encoder, UNet, VAE and scheduler config from ``model``."""
    started = time.perf_counter()
    _quiet_progress_bars()
    torch_device = pick_device(device)
    torch_dtype = pick_dtype(torch_device, dtype)
    folder = resolve_model_dir(model)
    try:
        tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer")
        text_encoder = CLIPTextModel.from_pretrained(folder / "text_encoder", dtype=torch_dtype)
        unet = UNet2DConditionModel.from_pretrained(folder / "unet", torch_dtype=torch_dtype)
        vae = AutoencoderKL.from_pretrained(folder / "vae", torch_dtype=torch_dtype)
        scheduler_config = dict(DDIMScheduler.load_config(folder / "scheduler"))
    except (OSError, ValueError) as error:
        raise ModelNotFound(f"cannot load {model} from {folder}: {error}") from error
    check_supported(unet, model)

    for module in (text_encoder, unet, vae):
        module.requires_grad_(False).eval().to(torch_device)
    # diffusers picks PyTorch's scaled-dot-product attention by default; keep it explicit.
    from diffusers.models.attention_processor import AttnProcessor2_0

    unet.set_attn_processor(AttnProcessor2_0())
    vae.set_attn_processor(AttnProcessor2_0())
    if channels_last if channels_last is not None else torch_device.type == "cuda":
        unet.to(memory_format=torch.channels_last)
        vae.to(memory_format=torch.channels_last)
    if compile:
        # Compile the blocks, not the UNet's forward, which the sampler never calls.
        for blocks in (unet.down_blocks, unet.up_blocks):
            for block in blocks:
                block.compile()
        unet.mid_block.compile()
    loaded = LoopfreeModel(
        name=model,
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        unet=unet,
        vae=vae,
        scheduler_config=scheduler_config,
        device=torch_device,
        dtype=torch_dtype,
    )
    loaded.load_seconds = time.perf_counter() - started
    log.info("loaded %s on %s/%s in %.1fs", model, torch_device, torch_dtype, loaded.load_seconds)
    return loaded
