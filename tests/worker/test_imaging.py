"""The image encoders: PNG is lossless and readable by every decoder we know, lossy formats are
close, every result says what it is and carries its own digest."""

from __future__ import annotations

import hashlib
import io

import numpy as np
import pytest
from PIL import Image

from worker.imaging import encode_image, encode_png


def photo_like(height: int = 96, width: int = 128, seed: int = 0, noise: int = 40) -> np.ndarray:
    """Smooth gradients plus noise: compressible like a photo, with every byte value present."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 // width, y * 255 // height, (x + y) * 255 // (width + height)], -1)
    grain = rng.integers(0, noise, size=(height, width, 3))
    return ((base + grain) % 256).astype(np.uint8)


@pytest.mark.parametrize("shape", [(64, 64), (96, 128), (1, 1), (8, 520)])
def test_png_decodes_to_exactly_the_pixels_it_was_given(shape):
    pixels = photo_like(*shape, seed=sum(shape))
    encoded = encode_png(pixels)
    decoded = Image.open(io.BytesIO(encoded.data))
    assert decoded.format == "PNG" and decoded.mode == "RGB"
    assert np.array_equal(np.asarray(decoded), pixels)


def test_png_text_chunks_carry_prompt_seed_and_model_in_utf8():
    text = {"prompt": "a café at dusk, ünïcödé ✓", "seed": "7", "model": "senmaonk/loopfree-sd1.5"}
    decoded = Image.open(io.BytesIO(encode_png(photo_like(), text=text).data))
    decoded.load()
    assert {key: decoded.text[key] for key in text} == text


def test_png_compresses_a_smooth_image_like_pillow_level_1_does():
    pixels = photo_like(256, 256)
    ours = len(encode_png(pixels).data)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=1)
    assert ours < 1.25 * len(buffer.getvalue())
    assert ours < 0.9 * pixels.nbytes  # it is compressed at all


@pytest.mark.parametrize(
    ("format", "pil_format", "content_type", "extension"),
    [
        ("png", "PNG", "image/png", "png"),
        ("webp", "WEBP", "image/webp", "webp"),
        ("jpeg", "JPEG", "image/jpeg", "jpg"),
    ],
)
def test_each_format_says_what_it_is_and_hashes_its_own_bytes(
    format, pil_format, content_type, extension
):
    pixels = photo_like(noise=4)  # lossy codecs keep gradients, not per-pixel noise
    encoded = encode_image(pixels, format)
    assert encoded.sha256 == hashlib.sha256(encoded.data).hexdigest()
    assert (encoded.content_type, encoded.extension) == (content_type, extension)
    decoded = Image.open(io.BytesIO(encoded.data))
    assert decoded.format == pil_format and decoded.size == (128, 96)
    error = np.abs(np.asarray(decoded.convert("RGB"), dtype=int) - pixels.astype(int)).mean()
    assert error < 8  # lossy formats at their default quality stay close


def test_lower_quality_makes_smaller_jpegs():
    pixels = photo_like(128, 128)
    assert len(encode_image(pixels, "jpeg", quality=50).data) < len(
        encode_image(pixels, "jpeg", quality=95).data
    )


def test_bad_pixels_and_formats_are_refused_with_what_was_wrong():
    with pytest.raises(ValueError, match="uint8"):
        encode_png(np.zeros((4, 4, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="unknown image format 'gif'"):
        encode_image(photo_like(), "gif")  # type: ignore[arg-type]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255**2 / mse)


@pytest.mark.parametrize("quality", [50, 90, 95])
def test_jpeg_matches_pillows_jpeg_at_the_same_quality(quality):
    """The GIL-free encoder keeps Pillow's settings: same quantization tables, 4:2:0, and an image
    as close to the original and as large as Pillow's (within a hair)."""
    pixels = photo_like(256, 256, noise=12)
    ours = encode_image(pixels, "jpeg", quality=quality).data
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=quality)
    pillows = buffer.getvalue()

    ours_image, pillow_image = Image.open(io.BytesIO(ours)), Image.open(io.BytesIO(pillows))
    assert ours_image.quantization == pillow_image.quantization
    from PIL import JpegImagePlugin

    assert JpegImagePlugin.get_sampling(ours_image) == JpegImagePlugin.get_sampling(pillow_image)
    ours_pixels, pillow_pixels = np.asarray(ours_image), np.asarray(pillow_image)
    assert abs(psnr(ours_pixels, pixels) - psnr(pillow_pixels, pixels)) < 0.25
    assert psnr(ours_pixels, pillow_pixels) > 38
    assert abs(len(ours) - len(pillows)) < 0.03 * len(pillows)
