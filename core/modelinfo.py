"""What a producer needs to know about a model without loading it (and without torch)."""

from __future__ import annotations

import json
from pathlib import Path

from core.errors import ModelNotFound

# Native sizes of the published Loopfree models, for producers that have neither the weights nor
# the hub in reach. Anything else is read from the model's own configs.
KNOWN_NATIVE_SIZES = {
    "senmaonk/loopfree-sd1.5": 512,
    "senmaonk/loopfree-sd2.1-base": 512,
}
FALLBACK_NATIVE_SIZE = 512


def _read_config(model: str, relative: str) -> dict | None:
    path = Path(model).expanduser()
    if path.is_dir():
        file = path / relative
        return json.loads(file.read_text(encoding="utf-8")) if file.is_file() else None
    check_hub_id(model)
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    try:
        cached = try_to_load_from_cache(model, relative)
    except ValueError as error:  # HFValidationError: not a repo id the hub could have
        raise ModelNotFound(f"model {model!r} is not a valid hub id: {error}") from None
    if isinstance(cached, str):
        return json.loads(Path(cached).read_text(encoding="utf-8"))
    return None


def check_hub_id(model: str) -> None:
    """A one-line error for a name that is neither an existing folder nor a hub id (owner/name):
    a mistyped local path, most often. The worker applies the same rule when it loads a model."""
    path = Path(model).expanduser()
    if path.is_absolute() or model.startswith((".", "~")) or model.count("/") != 1:
        raise ModelNotFound(
            f"model {model!r} is neither a local folder nor a hub id (owner/name); check the path "
            "(it must be a diffusers folder with model_index.json) or the hub id"
        )


def native_size(model: str) -> int:
    """The UNet's sample size times the VAE's downscale factor: 512 for SD1.5, 64 for tiny."""
    unet = _read_config(model, "unet/config.json")
    vae = _read_config(model, "vae/config.json")
    if unet and vae:
        return int(unet["sample_size"]) * 2 ** (len(vae["block_out_channels"]) - 1)
    return KNOWN_NATIVE_SIZES.get(model, FALLBACK_NATIVE_SIZE)


def canonical_model(model: str) -> str:
    """A local model folder as an absolute path, so producer and worker name the same queue."""
    path = Path(model).expanduser()
    if path.is_dir():
        return str(path.resolve())
    return model


def public_model_name(model: str) -> str:
    """The model's name as it may leave the server (PNG text, webhooks): a hub id as it is, a
    local folder by its own name only; the folder's absolute path is the server's business."""
    if model.startswith(("/", "~", ".")) or "\\" in model:
        return Path(model).name or model
    return model
