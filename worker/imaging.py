"""Turning sampler output into image bytes (PNG, WebP or JPEG), off the sampling thread.

PNG is the default and lossless. Pillow's PNG writer at zlib level 1 cost 27-29 ms of CPU per
512 px image, four fifths of the worker's host time per image. This writer does the same format
in ~3 ms: the "Up" filter (each row minus the row above) is one numpy subtraction, and the filtered
rows are deflated by ISA-L (``isal``), whose level 1 is several times faster than zlib's and, after
the Up filter, compresses photos as well as Pillow's level 1 (bench/results/host.md has the
candidates side by side). ISA-L releases the GIL while it compresses, so upload threads encode in
parallel with sampling and with each other.

JPEG goes through ``simplejpeg`` (libjpeg-turbo's TurboJPEG API), which releases the GIL for the
whole encode; Pillow's JPEG writer held it for most of its ~1 ms (its Python tile loop and pixel
unpacking), so eight upload threads queued for the GIL behind it. Same quality settings as
Pillow's: the IJG quantization tables scaled by ``quality`` (the same tables byte for byte),
4:2:0 chroma subsampling and the accurate integer DCT; the output decodes within 0.05 dB PSNR of
Pillow's, at a size within 1% (bench/results/host.md). WebP stays on Pillow (libwebp): at method 0
it costs 9-16 ms of CPU per 512 px image, three to five times PNG.

The bytes are hashed once here; the object store takes the digest instead of hashing again.
"""

from __future__ import annotations

import hashlib
import io
import struct
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import simplejpeg
from isal import isal_zlib
from PIL import Image

ImageFormat = Literal["png", "webp", "jpeg"]
IMAGE_FORMATS: tuple[ImageFormat, ...] = ("png", "webp", "jpeg")

# ISA-L level 1: its fastest level that still looks for matches; level 0 is no faster after the
# Up filter and files are a third larger.
PNG_DEFLATE_LEVEL = 1
# Quality when a submission asks for a lossy format without saying: visually lossless for photos.
DEFAULT_QUALITY = {"webp": 90, "jpeg": 90}
# WebP's fastest method: method 4 (Pillow's default) costs about 3x the CPU for ~5% smaller files.
WEBP_METHOD = 0
# Pillow's default JPEG chroma subsampling at every quality (libjpeg's default): 4:2:0.
JPEG_SUBSAMPLING = "420"

CONTENT_TYPES: dict[ImageFormat, str] = {
    "png": "image/png",
    "webp": "image/webp",
    "jpeg": "image/jpeg",
}
EXTENSIONS: dict[ImageFormat, str] = {"png": "png", "webp": "webp", "jpeg": "jpg"}

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_FILTER_UP = 2


@dataclass(frozen=True)
class EncodedImage:
    data: bytes
    sha256: str
    format: ImageFormat = "png"

    @property
    def size(self) -> int:
        return len(self.data)

    @property
    def content_type(self) -> str:
        return CONTENT_TYPES[self.format]

    @property
    def extension(self) -> str:
        return EXTENSIONS[self.format]


def encode_image(
    pixels: np.ndarray,
    format: ImageFormat = "png",
    *,
    quality: int | None = None,
    text: dict[str, str] | None = None,
) -> EncodedImage:
    """``pixels``: (H, W, 3) uint8. ``text`` (prompt, seed, model) goes into PNG iTXt chunks;
    the lossy formats carry no text (their metadata containers cost more than the image)."""
    if format == "png":
        data = png_bytes(pixels, text=text)
    elif format == "jpeg":
        data = jpeg_bytes(pixels, quality or DEFAULT_QUALITY["jpeg"])
    elif format == "webp":
        buffer = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(pixels)).save(
            buffer, format="WEBP", quality=quality or DEFAULT_QUALITY["webp"], method=WEBP_METHOD
        )
        data = buffer.getvalue()
    else:
        raise ValueError(f"unknown image format {format!r}; use one of {', '.join(IMAGE_FORMATS)}")
    return EncodedImage(data=data, sha256=hashlib.sha256(data).hexdigest(), format=format)


def encode_pixels(
    pixels: Any,
    format: ImageFormat = "png",
    *,
    quality: int | None = None,
    text: dict[str, str] | None = None,
    gpu_jpeg: bool = False,
) -> EncodedImage:
    """``encode_image`` for the sampler's output, a (H, W, 3) uint8 torch tensor (or an array).
    With ``gpu_jpeg`` a JPEG is encoded on the GPU when this machine can (``worker.gpu_encode``),
    else on the CPU."""
    if format == "jpeg" and gpu_jpeg:
        from worker.gpu_encode import encode_jpeg_on_gpu

        data = encode_jpeg_on_gpu(pixels, quality or DEFAULT_QUALITY["jpeg"])
        if data is not None:
            return EncodedImage(data=data, sha256=hashlib.sha256(data).hexdigest(), format=format)
    array = pixels if isinstance(pixels, np.ndarray) else pixels.numpy()
    return encode_image(array, format, quality=quality, text=text if format == "png" else None)


def encode_png(pixels: np.ndarray, *, text: dict[str, str] | None = None) -> EncodedImage:
    """The lossless default: ``encode_image(pixels, "png", text=text)``."""
    return encode_image(pixels, "png", text=text)


def jpeg_bytes(pixels: np.ndarray, quality: int) -> bytes:
    """A baseline JFIF JPEG of ``pixels`` (H, W, 3) uint8 at ``quality`` 1-100, encoded with the
    GIL released."""
    return simplejpeg.encode_jpeg(
        np.ascontiguousarray(pixels),
        quality=quality,
        colorspace="RGB",
        colorsubsampling=JPEG_SUBSAMPLING,
        fastdct=False,  # the accurate integer DCT, as Pillow uses
    )


def png_bytes(pixels: np.ndarray, *, text: dict[str, str] | None = None) -> bytes:
    """An 8-bit RGB PNG of ``pixels`` (H, W, 3) uint8, every row filtered with "Up"."""
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != 3:
        raise ValueError(f"expected (H, W, 3) uint8 pixels, got {pixels.shape} {pixels.dtype}")
    height, width, _ = pixels.shape
    rows = pixels.reshape(height, width * 3)
    filtered = np.empty((height, width * 3 + 1), dtype=np.uint8)
    filtered[:, 0] = _FILTER_UP
    # The first row's "row above" is zeros, so its Up filter is the row itself.
    filtered[0, 1:] = rows[0]
    np.subtract(rows[1:], rows[:-1], out=filtered[1:, 1:])  # uint8 arithmetic wraps mod 256
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    parts = [_PNG_SIGNATURE, *_chunk(b"IHDR", header)]
    for key, value in (text or {}).items():
        # iTXt: keyword, NUL, uncompressed, method 0, no language, no translated keyword, UTF-8.
        parts += _chunk(b"iTXt", key.encode("latin-1") + b"\0\0\0\0\0" + value.encode())
    parts += _chunk(b"IDAT", isal_zlib.compress(filtered, PNG_DEFLATE_LEVEL))
    parts += _chunk(b"IEND", b"")
    return b"".join(parts)  # the compressed image is copied once, here


def _chunk(kind: bytes, payload: bytes) -> tuple[bytes, bytes, bytes]:
    """A PNG chunk as its three parts (length and type, data, CRC), to be joined by the caller."""
    crc = isal_zlib.crc32(payload, isal_zlib.crc32(kind))
    return struct.pack(">I", len(payload)) + kind, payload, struct.pack(">I", crc)
