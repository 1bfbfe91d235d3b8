"""JPEG on the GPU (``LOOPFREE_GPU_JPEG=true``): ``torchvision.io.encode_jpeg`` (nvJPEG) on a CUDA
tensor, so the host neither encodes nor copies the raw pixels of a JPEG job.

torchvision is not a dependency: PyPI's wheels are built against one torch release each and break
beside a torch built elsewhere (the CUDA build a GPU image installs). Where it imports and has
CUDA encoding, it is used; anywhere else (no torchvision, an old one, a CPU-only worker) the job
is encoded on the CPU as usual and the worker logs once why. Unmeasured on a GPU so far: the
figures in BENCHMARKS.md are the CPU encoders'.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import torch

log = logging.getLogger(__name__)

_warned = threading.Event()


def encode_jpeg_on_gpu(pixels: torch.Tensor, quality: int) -> bytes | None:
    """``pixels`` (H, W, 3) uint8 as JPEG bytes encoded on the GPU, or None (logged once per
    process) when that is not possible here and the caller should encode on the CPU."""
    encode, reason = _gpu_encoder()
    if encode is None:
        _fall_back(reason)
        return None
    device_pixels = pixels if pixels.is_cuda else pixels.to("cuda", non_blocking=True)
    # torchvision wants (C, H, W); nvJPEG reads the strided view, no host copy.
    encoded = encode(device_pixels.permute(2, 0, 1).contiguous(), quality=quality)
    return bytes(encoded.cpu().numpy())


def _gpu_encoder() -> tuple[Any, str]:
    """torchvision's ``encode_jpeg`` if it can encode on this machine's GPU, else (None, why)."""
    if not torch.cuda.is_available():
        return None, "this worker has no CUDA device"
    try:
        from torchvision.io import encode_jpeg  # type: ignore[import-not-found]
    except Exception as exc:  # ImportError, or a torchvision built for another torch
        return None, f"torchvision does not import ({type(exc).__name__}: {exc})"
    return encode_jpeg, ""


def _fall_back(reason: str) -> None:
    if not _warned.is_set():
        _warned.set()
        log.warning("LOOPFREE_GPU_JPEG is set but %s; encoding JPEG on the CPU instead", reason)
