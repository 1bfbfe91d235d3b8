"""Benchmark of the TiUE sampler against a plain 4-step loop that runs the full UNet at every step.

Three ways to get from the initial noise to the final latents, on the same random-weight model:

* ``plain``: what a non-TiUE 4-step model costs: ``unet(latents, t, text).sample`` and a DDIM
  update, four times, one after the other.
* ``tiue-parallel``: the sampler's encoder once, then all four decoder passes in one call.
* ``tiue-sequential``: the encoder once, then one decoder call per timestep.

The "UNet part" is timed on its own (noise in, final latents out); the end-to-end figure adds text
encoding and VAE decoding, which are the same computation for all three and are timed once per
repeat, back to back with the UNet parts. The FLOP split of the UNet into encoder E (conv_in, down
blocks, mid block) and decoder D (up blocks, output head) predicts the UNet-part ratio
TiUE / plain = (E + N*D) / (N*(E + D)).

Peak memory of the UNet part at one batch size is measured in a fresh subprocess per variant (peak
RSS growth on the CPU, ``torch.cuda.max_memory_allocated`` growth on CUDA).

    python bench/bench_sampler.py                       # tiny and sd15 at 256 px, within ~15 min
    python bench/bench_sampler.py --shape sd15 --batches 16 --repeats 1 --budget-min 0
    python bench/bench_sampler.py --device cuda --size 512 --json gpu.json

Work that does not fit the time budget is skipped and listed, never silently dropped.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

# OpenMP threads that spin while waiting for each other are catastrophic on a shared machine: when
# another process holds one of the two cores, every parallel region waits for a descheduled thread
# (we saw the tiny model's plain loop go from 0.3 s to 5-9 s). Sleeping waiters cost a little on an
# idle machine and keep the ratios meaningful on a busy one. Set OMP_WAIT_POLICY=ACTIVE to compare.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from _machine import cpu_model  # noqa: E402
from diffusers import DDIMScheduler, UNet2DConditionModel  # noqa: E402
from diffusers.models.attention_processor import AttnProcessor2_0  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count  # noqa: E402
from transformers import CLIPTokenizer  # noqa: E402

from core.errors import UserError  # noqa: E402
from worker.models import LoopfreeModel, pick_device, pick_dtype  # noqa: E402
from worker.sampler import TiUESampler  # noqa: E402
from worker.tiny import SD15_SCHEDULER, build_components, write_tokenizer  # noqa: E402

STEPS = 4  # N, the number of DDIM steps (and decoder passes) of a Loopfree model
PROMPT = "a watercolor painting of a lighthouse on a cliff at dusk"
TIMED_VARIANTS = ("plain", "tiue-parallel", "tiue-sequential")
# "plain-1step": every step of the plain loop has the same shapes, so one step shows its peak.
MEMORY_VARIANTS = ("plain-1step", "tiue-parallel", "tiue-sequential", "tiue-chunk2", "vae-decode")
DECODER_CHUNK = {"tiue-parallel": STEPS, "tiue-sequential": 1, "tiue-chunk2": 2}
# Runs shorter than this are repeated inside one timing and averaged, so that the clock and the
# Python overhead of timing do not dominate the tiny model.
MIN_TIMING_S = 1.0
# Measured ratio may differ from the FLOP-predicted one by this much (the target).
FLOP_TARGET = 0.10
GPU_LATENCY_TARGET = 0.4  # batch-1 UNet latency, parallel TiUE / plain loop, on CUDA at 512 px


# -- model ----------------------------------------------------------------------------------------


def build_model(shape: str, device: torch.device, dtype: torch.dtype) -> LoopfreeModel:
    """A random-weight model built in memory, prepared the way ``load_model`` prepares one."""
    components = build_components(shape)  # type: ignore[arg-type]
    with tempfile.TemporaryDirectory() as folder:
        write_tokenizer(Path(folder) / "tokenizer")
        tokenizer = CLIPTokenizer.from_pretrained(Path(folder) / "tokenizer")
    for module in components.values():
        module.requires_grad_(False).eval().to(device, dtype)
    components["unet"].set_attn_processor(AttnProcessor2_0())
    components["vae"].set_attn_processor(AttnProcessor2_0())
    if device.type == "cuda":
        components["unet"].to(memory_format=torch.channels_last)
        components["vae"].to(memory_format=torch.channels_last)
    return LoopfreeModel(
        name=f"random-{shape}",
        tokenizer=tokenizer,
        scheduler_config=dict(SD15_SCHEDULER),
        device=device,
        dtype=dtype,
        **components,
    )


# -- the variants' UNet parts: initial noise in, final latents out ---------------------------------


@torch.no_grad()
def plain_loop(
    unet: UNet2DConditionModel,
    scheduler: DDIMScheduler,
    text: torch.Tensor,
    latents: torch.Tensor,
    timesteps: torch.Tensor,
) -> torch.Tensor:
    """The baseline: the full UNet at every step, each step on the previous step's latents."""
    for timestep in timesteps:
        noise = unet(latents, timestep, encoder_hidden_states=text).sample
        latents = scheduler.step(noise, timestep, latents).prev_sample
    return latents


@torch.no_grad()
def tiue_loop(
    sampler: TiUESampler, text: torch.Tensor, latents: torch.Tensor, chunk: int
) -> torch.Tensor:
    """``TiUESampler.sample`` without text encoding and VAE decoding (same calls, same order)."""
    scheduler = sampler.scheduler(STEPS)
    timesteps = scheduler.timesteps
    features = sampler.run_encoder(latents, text, timesteps[0])
    predictions: list[torch.Tensor] = []
    for start in range(0, len(timesteps), chunk):
        predicted = sampler.run_decoder(features, text, timesteps[start : start + chunk])
        predictions.extend(predicted.split(latents.shape[0]))
    return sampler.ddim_chain(scheduler, latents, predictions, timesteps)


def unet_part(
    sampler: TiUESampler, variant: str, text: torch.Tensor, latents: torch.Tensor
) -> torch.Tensor:
    scheduler = sampler.scheduler(STEPS)
    if variant == "plain":
        return plain_loop(sampler.model.unet, scheduler, text, latents, scheduler.timesteps)
    if variant == "plain-1step":
        return plain_loop(sampler.model.unet, scheduler, text, latents, scheduler.timesteps[:1])
    return tiue_loop(sampler, text, latents, DECODER_CHUNK[variant])


# -- timing ---------------------------------------------------------------------------------------


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device: torch.device, fn: Callable[[], Any], inner: int = 1) -> tuple[float, float, Any]:
    """Wall and CPU seconds per call, mean of ``inner`` back-to-back calls, and the last result.

    On a shared machine the wall clock also counts the time other processes held the cores; this
    process's CPU time (all its threads) mostly does not: on the CPU, a steadier measure of work.
    """
    sync(device)
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(inner):
        result = fn()
    sync(device)
    return (time.perf_counter() - wall) / inner, (time.process_time() - cpu) / inner, result


def one_repeat(
    sampler: TiUESampler, batch: int, size: int, variants: Sequence[str], inner: int
) -> tuple[dict[str, float], torch.Tensor, dict[str, torch.Tensor]]:
    """Text, each variant's UNet part (in the given order), then the VAE.

    Returns wall seconds per stage (and CPU seconds under "<stage>:cpu"), the images decoded from
    the parallel TiUE latents, and each variant's final latents.
    """
    device = sampler.model.device
    prompts, seeds = [PROMPT] * batch, list(range(batch))
    seconds: dict[str, float] = {}

    def prepare() -> tuple[torch.Tensor, torch.Tensor]:
        text = sampler.encode_text(prompts).hidden_states
        return text, sampler.initial_latents(seeds, size, size)

    seconds["text"], seconds["text:cpu"], (text, latents) = timed(device, prepare, inner)
    outputs = {}
    for variant in variants:
        seconds[variant], seconds[variant + ":cpu"], outputs[variant] = timed(
            device, lambda v=variant: unet_part(sampler, v, text, latents), inner
        )
    final = outputs.get("tiue-parallel", next(iter(outputs.values())))
    seconds["vae"], seconds["vae:cpu"], images = timed(
        device,
        lambda: sampler.decode_images(final).cpu(),
        inner,  # device pixels since #13
    )
    return seconds, images, outputs


# -- FLOPs ----------------------------------------------------------------------------------------


def _sdpa_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:  # type: ignore[no-untyped-def]
    return sdpa_flop_count(query, key, value)


# FlopCounterMode knows the CUDA attention kernels but not the CPU one SDPA dispatches to.
FLOP_EXTRAS = (
    {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_flops}
    if hasattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu")
    else {}
)


def count_flops(fn: Callable[[], Any]) -> tuple[int, Any]:
    counter = FlopCounterMode(display=False, custom_mapping=FLOP_EXTRAS)
    with counter:
        result = fn()
    return counter.get_total_flops(), result


@torch.no_grad()
def flop_split(sampler: TiUESampler, size: int) -> dict[str, Any]:
    """FLOPs of one sample at the benchmark size: E, D, the full UNet, text encoder and VAE."""
    model = sampler.model
    timesteps = sampler.scheduler(STEPS).timesteps
    text_flops, encoding = count_flops(lambda: sampler.encode_text([PROMPT]))
    text = encoding.hidden_states
    latents = sampler.initial_latents([0], size, size)
    enc, features = count_flops(lambda: sampler.run_encoder(latents, text, timesteps[0]))
    dec, _ = count_flops(lambda: sampler.run_decoder(features, text, timesteps[:1]))
    full, _ = count_flops(lambda: model.unet(latents, timesteps[0], encoder_hidden_states=text))
    vae, _ = count_flops(lambda: sampler.decode_images(latents))
    n = STEPS
    stored = sum(t.numel() * t.element_size() for t in (*features.skips, features.mid))
    return {
        "E": enc,
        "D": dec,
        "full_unet": full,
        "text": text_flops,
        "vae": vae,
        "unet_ratio": (enc + n * dec) / (n * (enc + dec)),
        "e2e_ratio": (text_flops + enc + n * dec + vae) / (text_flops + n * (enc + dec) + vae),
        "feature_bytes_per_image": stored,
    }


# -- planning -------------------------------------------------------------------------------------


def plan(
    batches: Sequence[int],
    max_repeats: int,
    repeat_cost: Callable[[int], float],
    memory_costs: dict[str, float],
    budget_s: float,
) -> tuple[dict[int, int], list[str], list[str]]:
    """Repeats per batch and memory jobs that fit ``budget_s``: one repeat of every batch size
    first (smallest first), then the memory jobs, then more repeats round-robin."""
    left = budget_s
    repeats = dict.fromkeys(batches, 0)
    skipped: list[str] = []
    for batch in sorted(batches):
        if repeat_cost(batch) <= left:
            repeats[batch] = 1
            left -= repeat_cost(batch)
        else:
            skipped.append(f"batch {batch} timing (~{repeat_cost(batch) / 60:.0f} min a repeat)")
    memory: list[str] = []
    for variant, cost in memory_costs.items():
        if cost <= left:
            memory.append(variant)
            left -= cost
        else:
            skipped.append(f"memory {variant} (~{cost / 60:.0f} min)")
    grew = True
    while grew:
        grew = False
        for batch in sorted(batches):
            if 0 < repeats[batch] < max_repeats and repeat_cost(batch) <= left:
                repeats[batch] += 1
                left -= repeat_cost(batch)
                grew = True
    return repeats, memory, skipped


# -- memory, one fresh subprocess per variant -----------------------------------------------------


def _proc_status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    """Linux resets VmHWM (the peak RSS) to the current RSS when "5" is written to clear_refs."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


@torch.no_grad()
def memory_child(args: argparse.Namespace) -> dict[str, Any]:
    """Runs in its own process: warm up at batch 1, then measure the peak of one batch-B run."""
    device = pick_device(args.device)
    sampler = TiUESampler(build_model(args.shape, device, pick_dtype(device)))
    variant, batch, size = args.memory_child, args.memory_batch, args.size

    def inputs(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        text = sampler.encode_text([PROMPT] * n).hidden_states
        return text, sampler.initial_latents(list(range(n)), size, size)

    def run(text: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        if variant == "vae-decode":
            return sampler.decode_images(latents)
        return unet_part(sampler, variant, text, latents)

    run(*inputs(1))  # warm-up: thread pools, oneDNN/cuDNN primitives
    text, latents = inputs(batch)  # prepared before the measurement: not part of the peak
    gc.collect()
    sync(device)
    result: dict[str, Any] = {"variant": variant, "batch": batch}
    rss_before = _proc_status_kib("VmRSS")
    reset = _reset_peak_rss()
    maxrss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        cuda_before = torch.cuda.memory_allocated(device)
    started = time.perf_counter()
    run(text, latents)
    sync(device)
    result["seconds"] = time.perf_counter() - started
    if reset and rss_before is not None:
        result["rss_peak_growth_mib"] = (_proc_status_kib("VmHWM") - rss_before) / 1024
        result["rss_method"] = "VmHWM after clear_refs reset - VmRSS before"
    else:  # the peak cannot be reset: growth of the lifetime peak, a lower bound
        maxrss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        result["rss_peak_growth_mib"] = (maxrss_after - maxrss_before) / 1024
        result["rss_method"] = "ru_maxrss after - before (lower bound)"
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) - cuda_before
        result["cuda_peak_growth_mib"] = peak / 2**20
    return result


def run_memory_child(args: argparse.Namespace, shape: str, variant: str) -> dict[str, Any]:
    command = [
        sys.executable, str(Path(__file__).resolve()), "--memory-child", variant,
        "--shape", shape, "--size", str(args.size), "--device", args.device,
        "--memory-batch", str(args.memory_batch), "--threads", str(args.threads),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return {"variant": variant, "batch": args.memory_batch, "error": done.stderr[-2000:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


# -- one shape ------------------------------------------------------------------------------------


def bench_shape(args: argparse.Namespace, shape: str, deadline: float) -> dict[str, Any]:
    device = pick_device(args.device)
    dtype = pick_dtype(device)
    size = args.size
    log(f"[{shape}] building the model in memory")
    build_s, _, model = timed(device, lambda: build_model(shape, device, dtype))
    sampler = TiUESampler(model)
    log(f"[{shape}] built in {build_s:.0f}s; counting FLOPs at batch 1, {size} px")
    flops = flop_split(sampler, size)

    # A batch-1 repeat as warm-up, and to estimate what each later repeat costs; a second one
    # where that is cheap, because first calls (thread pools, oneDNN primitives) are slow.
    def calibrate(s: TiUESampler) -> tuple[dict[str, float], torch.Tensor, dict[str, torch.Tensor]]:
        seconds, images, outputs = one_repeat(s, 1, size, TIMED_VARIANTS, 1)
        return {k: v for k, v in seconds.items() if not k.endswith(":cpu")}, images, outputs

    calibration, images, outputs = calibrate(sampler)
    if sum(calibration.values()) < 30:
        calibration, images, outputs = calibrate(sampler)
    # Sanity checks: fatal in fp32, where results are reproducible; in fp16 batch-size-dependent
    # kernels may differ a little, so there they are only reported.
    difference = (outputs["tiue-parallel"] - outputs["tiue-sequential"]).abs().max().item()
    check(difference <= 1e-4, f"parallel and sequential TiUE latents differ by {difference}", dtype)
    per_image = sum(calibration.values())
    if per_image < 10:  # cheap enough: check that tiue_loop really is what sample() does
        direct = sampler.sample(sampler.encode_text([PROMPT]), [0], size, size, steps=STEPS)
        difference = (direct.images.int() - images.int()).abs().max().item()
        check(difference <= 1, f"tiue_loop differs from TiUESampler.sample by {difference}", dtype)
    log(f"[{shape}] batch-1 repeat: " + ", ".join(f"{k} {v:.2f}s" for k, v in calibration.items()))

    def repeat_cost(batch: int) -> float:
        warmup = per_image * batch if device.type == "cuda" else 0.0
        return per_image * batch * inner_for(batch) + warmup

    def inner_for(batch: int) -> int:
        slowest = max(calibration[v] for v in TIMED_VARIANTS) * batch
        return max(1, math.ceil(MIN_TIMING_S / slowest)) if slowest < MIN_TIMING_S else 1

    memory_costs = {}
    if args.memory_batch:
        for variant in MEMORY_VARIANTS:
            unit = {"plain-1step": calibration["plain"] / STEPS, "vae-decode": calibration["vae"]}
            run_s = unit.get(variant, calibration.get(variant, calibration["tiue-parallel"]))
            text_s = calibration["text"] * args.memory_batch
            memory_costs[variant] = build_s * 1.2 + run_s * (1 + args.memory_batch) + text_s + 5
    budget = deadline - time.monotonic()
    repeats, memory_jobs, skipped = plan(
        args.batches, args.repeats, repeat_cost, memory_costs, budget
    )
    log(f"[{shape}] plan: repeats {repeats}, memory {memory_jobs}, skipped {skipped}")

    cases = []
    for batch in args.batches:
        if not repeats[batch]:
            continue
        inner = inner_for(batch)
        if device.type == "cuda":  # cuDNN picks kernels per shape: warm up every batch size
            one_repeat(sampler, batch, size, TIMED_VARIANTS, 1)
        samples: dict[str, list[float]] = {}
        for index in range(repeats[batch]):
            shift = index % len(TIMED_VARIANTS)  # rotate the order so drift hits all alike
            order = TIMED_VARIANTS[shift:] + TIMED_VARIANTS[:shift]
            seconds, _, _ = one_repeat(sampler, batch, size, order, inner)
            for key, value in seconds.items():
                samples.setdefault(key, []).append(value)
            log(f"[{shape}] batch {batch} repeat {index + 1}: " + fmt_seconds(seconds))
        cases.append(summarize(batch, repeats[batch], inner, samples, flops))

    del sampler, model
    gc.collect()
    memory = []
    for variant in memory_jobs:
        log(f"[{shape}] memory {variant} at batch {args.memory_batch} (fresh process)")
        memory.append(run_memory_child(args, shape, variant))
    return {
        "shape": shape,
        "size": size,
        "build_s": build_s,
        "flops": flops,
        "calibration_s": calibration,
        "cases": cases,
        "memory": memory,
        "skipped": skipped,
    }


def check(ok: bool, problem: str, dtype: torch.dtype) -> None:
    if ok:
        return
    if dtype == torch.float32:
        raise AssertionError(problem + ": the benchmark no longer measures the sampler")
    log("warning: " + problem)


def summarize(
    batch: int, repeats: int, inner: int, samples: dict[str, list[float]], flops: dict[str, Any]
) -> dict[str, Any]:
    median = {key: statistics.median(values) for key, values in samples.items()}
    spread = {
        key: (max(values) - min(values)) / median[key] if median[key] else 0.0
        for key, values in samples.items()
    }
    variants = {}
    for variant in TIMED_VARIANTS:
        unet_s = median[variant]
        e2e_s = median["text"] + unet_s + median["vae"]
        variants[variant] = {
            "unet_s": unet_s,
            "unet_spread": spread[variant],
            "e2e_s": e2e_s,
            "unet_ratio": unet_s / median["plain"],
            # Contention on a shared machine only ever adds time: the fastest repeats agree best.
            "unet_ratio_min": min(samples[variant]) / min(samples["plain"]),
            "unet_ratio_cpu": median[variant + ":cpu"] / median["plain:cpu"],
            "e2e_ratio": e2e_s / (median["text"] + median["plain"] + median["vae"]),
        }
    ratio = variants["tiue-parallel"]["unet_ratio"]
    return {
        "batch": batch,
        "repeats": repeats,
        "inner": inner,
        "text_s": median["text"],
        "vae_s": median["vae"],
        "variants": variants,
        "parallel_vs_flops": ratio / flops["unet_ratio"] - 1,
        "samples": samples,
    }


# -- report ---------------------------------------------------------------------------------------


def fmt_seconds(seconds: dict[str, float]) -> str:
    return ", ".join(f"{key} {value:.3f}s" for key, value in seconds.items())


def machine() -> dict[str, Any]:
    info = {
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY"),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def markdown(report: dict[str, Any]) -> str:
    lines = [f"Machine: {report['machine']}", ""]
    lines += [
        "| shape | px | E GFLOP | D GFLOP | full UNet GFLOP | E share | text GFLOP | VAE GFLOP "
        "| predicted UNet ratio (E+4D)/(4(E+D)) | predicted e2e ratio |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for shape in report["shapes"]:
        f = shape["flops"]
        lines.append(
            f"| {shape['shape']} | {shape['size']} | {f['E'] / 1e9:.2f} | {f['D'] / 1e9:.2f} "
            f"| {f['full_unet'] / 1e9:.2f} | {f['E'] / (f['E'] + f['D']):.1%} "
            f"| {f['text'] / 1e9:.2f} | {f['vae'] / 1e9:.2f} | {f['unet_ratio']:.3f} "
            f"| {f['e2e_ratio']:.3f} |"
        )
    on_cpu = report["device"] == "cpu"
    lines += [
        "",
        "| shape | batch | repeats | variant | UNet ms/img | UNet img/s | UNet spread "
        "| UNet vs plain | e2e ms/img | e2e img/s | e2e vs plain |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for shape in report["shapes"]:
        for case in shape["cases"]:
            batch = case["batch"]
            for variant, v in case["variants"].items():
                lines.append(
                    f"| {shape['shape']} | {batch} | {case['repeats']}"
                    f"{'×' + str(case['inner']) if case['inner'] > 1 else ''} | {variant} "
                    f"| {v['unet_s'] / batch * 1e3:.1f} | {batch / v['unet_s']:.2f} "
                    f"| {v['unet_spread']:.0%} | {v['unet_ratio']:.3f} "
                    f"| {v['e2e_s'] / batch * 1e3:.1f} | {batch / v['e2e_s']:.3f} "
                    f"| {v['e2e_ratio']:.3f} |"
                )
    if on_cpu:
        lines += [
            "",
            "CPU seconds of this process (both threads) per image, medians; unlike the wall clock "
            "they barely count time when other processes held the cores:",
            "",
            "| shape | batch | variant | text | UNet | VAE | UNet vs plain | e2e vs plain |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for shape in report["shapes"]:
            for case in shape["cases"]:
                batch = case["batch"]
                cpu = {
                    key.removesuffix(":cpu"): statistics.median(values) / batch
                    for key, values in case["samples"].items()
                    if key.endswith(":cpu")
                }
                plain_e2e = cpu["text"] + cpu["plain"] + cpu["vae"]
                for variant in TIMED_VARIANTS:
                    e2e = cpu["text"] + cpu[variant] + cpu["vae"]
                    lines.append(
                        f"| {shape['shape']} | {batch} | {variant} | {cpu['text']:.3f} "
                        f"| {cpu[variant]:.3f} | {cpu['vae']:.3f} "
                        f"| {cpu[variant] / cpu['plain']:.3f} | {e2e / plain_e2e:.3f} |"
                    )
    lines += ["", "Parallel TiUE / plain loop, UNet part, measured vs FLOP-predicted:", ""]
    for shape in report["shapes"]:
        predicted = shape["flops"]["unet_ratio"]
        for case in shape["cases"]:
            parallel = case["variants"]["tiue-parallel"]
            measured = parallel["unet_ratio"]
            line = (
                f"- {shape['shape']} batch {case['batch']} ({case['repeats']} repeats), predicted "
                f"{predicted:.3f}: median wall {verdict(measured, predicted)}; fastest repeats "
                f"{parallel['unet_ratio_min']:.3f}"
            )
            if on_cpu:
                line += f"; CPU time {verdict(parallel['unet_ratio_cpu'], predicted)}"
            lines.append(line)
            if report["device"] == "cuda" and case["batch"] == 1:
                lines.append(
                    f"- {shape['shape']} batch-1 UNet latency at {shape['size']} px, parallel TiUE"
                    f" / plain loop: {measured:.3f}× (target ≤ {GPU_LATENCY_TARGET}×)"
                )
    if any(shape["memory"] for shape in report["shapes"]):
        lines += [
            "",
            "| shape | batch | variant | peak RSS growth MiB | CUDA peak growth MiB | seconds |",
            "|---|---|---|---|---|---|",
        ]
        for shape in report["shapes"]:
            for m in shape["memory"]:
                if "error" in m:
                    lines.append(f"| {shape['shape']} | {m['batch']} | {m['variant']} | failed |||")
                    continue
                cuda = f"{m['cuda_peak_growth_mib']:.0f}" if "cuda_peak_growth_mib" in m else "-"
                lines.append(
                    f"| {shape['shape']} | {m['batch']} | {m['variant']} "
                    f"| {m['rss_peak_growth_mib']:.0f} | {cuda} | {m['seconds']:.1f} |"
                )
    lines += ["", "Stored encoder features (analytic, fp32 on CPU / fp16 on CUDA):", ""]
    for shape in report["shapes"]:
        per_image = shape["flops"]["feature_bytes_per_image"]
        batch = report["memory_batch"] or 1
        lines.append(
            f"- {shape['shape']} at {shape['size']} px: {per_image / 2**20:.2f} MiB per image; "
            f"batch {batch}: {per_image * batch / 2**20:.0f} MiB, × N={STEPS} (parallel's repeated "
            f"copies): {per_image * batch * STEPS / 2**20:.0f} MiB"
        )
    for shape in report["shapes"]:
        for item in shape["skipped"]:
            lines.append(f"- skipped for the time budget: {shape['shape']} {item}")
    return "\n".join(lines)


def verdict(measured: float, predicted: float) -> str:
    """ "0.582 (-23.6%, NOT within ±10%: faster)" for a measured vs a FLOP-predicted ratio."""
    off = measured / predicted - 1
    if abs(off) <= FLOP_TARGET:
        return f"{measured:.3f} ({off:+.1%}, within ±{FLOP_TARGET:.0%})"
    side = "faster" if off < 0 else "slower"
    return f"{measured:.3f} ({off:+.1%}, NOT within ±{FLOP_TARGET:.0%}: {side})"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", default="tiny,sd15", help="tiny, sd15 or both, comma-separated")
    parser.add_argument("--size", type=int, default=None, help="pixels (256 on CPU, 512 on CUDA)")
    parser.add_argument("--batches", default="1,4,16", help="comma-separated batch sizes")
    parser.add_argument("--repeats", type=int, default=3, help="at most this many per batch size")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--memory-batch", type=int, default=16, help="0 skips the memory runs")
    parser.add_argument(
        "--budget-min", type=float, default=15.0, help="time budget in minutes, 0 for none"
    )
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.size = args.size or (512 if args.device == "cuda" else 256)
    args.shapes = [s for s in args.shape.split(",") if s]
    args.batches = [int(b) for b in str(args.batches).split(",") if b]
    if any(s not in ("tiny", "sd15") for s in args.shapes):
        parser.error(f"--shape must be tiny, sd15 or tiny,sd15, not {args.shape}")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        pick_device(args.device)
    except UserError as error:
        sys.exit(f"error: {error}")
    torch.set_num_threads(args.threads)
    if args.memory_child:
        args.shape = args.shapes[0]
        print(json.dumps(memory_child(args)))
        return
    started = time.monotonic()
    deadline = started + (args.budget_min * 60 if args.budget_min > 0 else math.inf)
    report = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": machine(),
        "device": args.device,
        "steps": STEPS,
        "memory_batch": args.memory_batch,
        "shapes": [bench_shape(args, shape, deadline) for shape in args.shapes],
    }
    report["total_s"] = time.monotonic() - started
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    print(markdown(report))
    print(f"\nTotal {report['total_s'] / 60:.1f} min. Command: {report['command']}")


if __name__ == "__main__":
    main()
