"""Random-weight Loopfree-format models, for tests, offline demos and timing.

They are written in the same diffusers pipeline layout as the real weights (``model_index.json``,
``unet/``, ``vae/``, ``text_encoder/``, ``tokenizer/``, ``scheduler/``) and loaded by the same
loader.
Their images are noise, but their compute is real: the SD1.5-shaped model costs what SD1.5 costs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from diffusers import AutoencoderKL, AutoencoderTiny, DDIMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

Shape = Literal["tiny", "small", "sd15"]

# Stable Diffusion 1.5's training noise schedule, as a DDIM config (Loopfree samples with DDIM).
SD15_SCHEDULER = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "prediction_type": "epsilon",
    "timestep_spacing": "leading",
}


@dataclass(frozen=True)
class Architecture:
    unet: dict
    vae: dict
    text: dict


ARCHITECTURES: dict[Shape, Architecture] = {
    # Small enough for a test to run in milliseconds, yet with every block kind the real one has:
    # cross-attention down/up blocks, a cross-attention mid block, a VAE with 8x downsampling.
    "tiny": Architecture(
        unet=dict(
            sample_size=8,
            block_out_channels=(32, 64),
            layers_per_block=1,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=32,
            attention_head_dim=8,
            norm_num_groups=16,
        ),
        vae=dict(
            block_out_channels=(8, 16, 16, 16),
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            latent_channels=4,
            layers_per_block=1,
            norm_num_groups=8,
            sample_size=64,
        ),
        text=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            projection_dim=32,
        ),
    ),
    # An SD-like layout at a few million parameters, native 128 px: a batch of 16 costs seconds on
    # a CPU, so sampling dominates a batch as it does on a GPU with real weights (benchmarks).
    "small": Architecture(
        unet=dict(
            sample_size=16,
            block_out_channels=(64, 128, 128),
            layers_per_block=1,
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=256,
            attention_head_dim=8,
        ),
        vae=dict(
            block_out_channels=(16, 32, 64, 64),
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            latent_channels=4,
            layers_per_block=1,
            norm_num_groups=16,
            sample_size=128,
        ),
        text=dict(
            hidden_size=256,
            intermediate_size=1024,
            num_hidden_layers=4,
            num_attention_heads=4,
            projection_dim=256,
        ),
    ),
    # Stable Diffusion 1.5's shapes (860M-parameter UNet, ViT-L/14 text encoder).
    "sd15": Architecture(
        unet=dict(
            sample_size=64,
            block_out_channels=(320, 640, 1280, 1280),
            layers_per_block=2,
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
            cross_attention_dim=768,
            attention_head_dim=8,
        ),
        vae=dict(
            block_out_channels=(128, 256, 512, 512),
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            latent_channels=4,
            layers_per_block=2,
            sample_size=512,
        ),
        text=dict(
            hidden_size=768,
            intermediate_size=3072,
            num_hidden_layers=12,
            num_attention_heads=12,
            projection_dim=768,
        ),
    ),
}


# AutoencoderTiny (TAESD) layouts for ``LOOPFREE_VAE=tiny``: the "tiny" one for tests, and TAESD's
# own (diffusers' defaults) so the SD1.5-shaped benchmark decodes at TAESD's real cost.
TINY_VAE_ARCHITECTURES: dict[Shape, dict] = {
    "tiny": dict(
        encoder_block_out_channels=(8, 8, 8, 8),
        decoder_block_out_channels=(8, 8, 8, 8),
        num_encoder_blocks=(1, 1, 1, 1),
        num_decoder_blocks=(1, 1, 1, 1),
    ),
    "small": dict(
        encoder_block_out_channels=(32, 32, 32, 32),
        decoder_block_out_channels=(32, 32, 32, 32),
    ),
    "sd15": dict(),
}


def make_tiny_vae(folder: Path, shape: Shape = "tiny", seed: int = 0) -> Path:
    """Write a random-weight AutoencoderTiny folder (what ``madebyollin/taesd`` holds)."""
    torch.manual_seed(seed)
    vae = AutoencoderTiny(in_channels=3, out_channels=3, **TINY_VAE_ARCHITECTURES[shape])
    vae.save_pretrained(folder, safe_serialization=True)
    return Path(folder)


def write_tokenizer(folder: Path) -> None:
    """A byte-level CLIP BPE tokenizer with one token per character and no merges.

    Real CLIP vocabularies cannot be downloaded here; this one has the same files and special
    tokens, so the loading and truncation paths are exercised exactly as with the real one.
    """
    folder.mkdir(parents=True, exist_ok=True)
    symbols = list(_bytes_to_unicode().values())
    vocab_list = symbols + [symbol + "</w>" for symbol in symbols]
    vocab_list += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: index for index, token in enumerate(vocab_list)}
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": 77,
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        "do_lower_case": True,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    # Round-trip through transformers so the folder holds what from_pretrained expects.
    CLIPTokenizer.from_pretrained(folder).save_pretrained(folder)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's byte-to-printable-character table, the alphabet of byte-level BPE."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    table = {byte: chr(byte) for byte in printable}
    extra = 0
    for byte in range(256):
        if byte not in table:
            table[byte] = chr(256 + extra)
            extra += 1
    return table


def build_components(shape: Shape = "tiny", seed: int = 0) -> dict:
    """Random-weight UNet, VAE and text encoder of the given shape, deterministically seeded."""
    arch = ARCHITECTURES[shape]
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(in_channels=4, out_channels=4, **arch.unet)
    vae = AutoencoderKL(in_channels=3, out_channels=3, **arch.vae)
    text_config = CLIPTextConfig(
        vocab_size=2 * 256 + 2,
        max_position_embeddings=77,
        bos_token_id=2 * 256,
        eos_token_id=2 * 256 + 1,
        pad_token_id=2 * 256 + 1,
        **arch.text,
    )
    text_encoder = CLIPTextModel(text_config)
    return {"unet": unet, "vae": vae, "text_encoder": text_encoder}


def make_model(folder: Path, shape: Shape = "tiny", seed: int = 0, fp16: bool = False) -> Path:
    """Write a random-weight Loopfree-format pipeline folder and return its path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    components = build_components(shape, seed)
    for name, module in components.items():
        if fp16:
            module = module.to(torch.float16)
        module.save_pretrained(folder / name, safe_serialization=True)
    write_tokenizer(folder / "tokenizer")
    DDIMScheduler(**SD15_SCHEDULER).save_pretrained(folder / "scheduler")
    index = {
        "_class_name": "StableDiffusionPipeline",
        "_diffusers_version": "0.31.0",
        "feature_extractor": [None, None],
        "image_encoder": [None, None],
        "requires_safety_checker": False,
        "safety_checker": [None, None],
        "scheduler": ["diffusers", "DDIMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    (folder / "model_index.json").write_text(json.dumps(index, indent=2), encoding="utf-8")
    (folder / "LOOPFREE_RANDOM_WEIGHTS").write_text(
        f"random weights, shape={shape}, seed={seed}: images are noise, timings are real\n",
        encoding="utf-8",
    )
    return folder
