"""GPU benchmark of the worker's sampler: images/s and peak memory per batch size.

For each dtype (fp16, bf16) x torch.compile (off, on) and each batch size (1, 4, 8, 16, 32) at
512 px and 4 steps, on the SD1.5-shaped random model (``loopfree model make-tiny --shape sd15``:
SD1.5's shapes, so it costs what SD1.5 costs), it times ``TiUESampler.sample`` exactly as the
worker calls it: the model loaded by ``worker.models.load_model`` (SDPA attention, channels-last
on CUDA, compiled modules when asked), text already encoded (the worker encodes it outside the GPU
lock), the VAE decoding with the default VAE budget, and the images copied to host memory.

It writes a Markdown table: the GPU memory table of docs/fleet.md (``--write-docs`` puts it
there) and, per dtype, the ``worker.budget.MEASURED_BUDGETS`` row to add: the largest
batch whose peak stayed under 85% of the card, as latent pixel-samples.

    python bench/bench_gpu.py --out bench/results/gpu-table.md --write-docs    # on a GPU
    python bench/bench_gpu.py --device cpu --size 64 --shape tiny --quick      # CPU smoke run

A batch that runs out of memory is recorded as OOM and the larger ones of that configuration are
skipped; nothing is dropped silently.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from worker.budget import device_name, model_signature  # noqa: E402
from worker.models import load_model  # noqa: E402
from worker.sampler import TiUESampler  # noqa: E402
from worker.tiny import make_model  # noqa: E402

PROMPT = "a watercolor painting of a lighthouse on a cliff at dusk"
STEPS = 4
# A batch whose peak stays under this share of the card's memory is "fits" for the budget row:
# the rest is headroom for the text encoder, the allocator's fragmentation and the next batch.
FIT_SHARE = 0.85
DOCS = REPO / "docs" / "fleet.md"
DOCS_START = "<!-- gpu-memory-table:start -->"
DOCS_END = "<!-- gpu-memory-table:end -->"
HEADER = "| dtype | compile | batch | images/s | ms/image | peak GiB | reserved GiB | note |"
RULE = "|---|---|---|---|---|---|---|---|"


@dataclass
class Row:
    dtype: str
    compiled: bool
    batch: int
    images_per_s: float | None = None
    ms_per_image: float | None = None
    peak_gib: float | None = None  # torch.cuda.max_memory_allocated during the timed calls
    reserved_gib: float | None = None  # what the caching allocator held
    note: str = ""


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--size", type=int, default=512, help="image height and width, px")
    parser.add_argument("--shape", default="sd15", choices=["tiny", "small", "sd15"])
    parser.add_argument("--batches", default="1,4,8,16,32")
    parser.add_argument("--dtypes", default="float16,bfloat16")
    parser.add_argument("--compile", default="off,on", help="off, on, or off,on")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per batch size")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: batches 1,4, one timed call, compile off (inductor builds take minutes)",
    )
    parser.add_argument("--out", type=Path, help="also write the Markdown report here")
    parser.add_argument("--write-docs", action="store_true", help="fill docs/fleet.md's table")
    return parser.parse_args()


def measure(sampler: TiUESampler, batch: int, size: int, repeats: int) -> Row:
    """Warm up (compiles the bucket when compiled), then time ``repeats`` calls."""
    device = sampler.model.device
    text = sampler.encode_text([PROMPT] * batch)
    seeds = list(range(batch))
    _ = sampler.sample(text, seeds, size, size, steps=STEPS).images  # warm-up; waits for the copy
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    for _ in range(repeats):
        _ = sampler.sample(text, seeds, size, size, steps=STEPS).images  # waits for the copy
    elapsed = time.perf_counter() - started
    row = Row("", False, batch)
    row.images_per_s = batch * repeats / elapsed
    row.ms_per_image = 1000 * elapsed / (batch * repeats)
    if device.type == "cuda":
        row.peak_gib = torch.cuda.max_memory_allocated(device) / 2**30
        row.reserved_gib = torch.cuda.max_memory_reserved(device) / 2**30
    return row


def run_configuration(
    folder: Path, args: argparse.Namespace, dtype: str, compiled: bool, batches: list[int]
) -> list[Row]:
    model = load_model(str(folder), device=args.device, dtype=dtype, compile=compiled)
    sampler = TiUESampler(model)
    rows: list[Row] = []
    out_of_memory = False
    for batch in batches:
        if out_of_memory:
            rows.append(Row(dtype, compiled, batch, note="skipped: a smaller batch ran out"))
            continue
        try:
            row = measure(sampler, batch, args.size, 1 if args.quick else args.repeats)
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            out_of_memory = True
            row = Row(dtype, compiled, batch, note="OOM")
        row.dtype, row.compiled = dtype, compiled
        rows.append(row)
        print(format_row(row), flush=True)
    del sampler, model
    if args.device == "cuda":
        torch.cuda.empty_cache()
    return rows


def format_row(row: Row) -> str:
    def number(value: float | None, digits: int) -> str:
        return "n/a" if value is None else f"{value:.{digits}f}"

    return (
        f"| {row.dtype} | {'on' if row.compiled else 'off'} | {row.batch} "
        f"| {number(row.images_per_s, 2)} | {number(row.ms_per_image, 1)} "
        f"| {number(row.peak_gib, 2)} | {number(row.reserved_gib, 2)} | {row.note} |"
    )


def budget_rows(
    rows: list[Row], signature: str, card: str, total_gib: float, size: int
) -> list[str]:
    """Per dtype: the largest batch that fit, as a ``MEASURED_BUDGETS`` entry."""
    lines = []
    for dtype in sorted({row.dtype for row in rows}):
        fitting = [
            row.batch
            for row in rows
            if row.dtype == dtype
            and row.peak_gib is not None
            and row.peak_gib <= FIT_SHARE * total_gib
        ]
        if fitting:
            budget = max(fitting) * STEPS * (size // 8) ** 2
            lines.append(f'    ("{signature}", "{card}", "{dtype}"): {budget},')
    return lines


def main() -> None:
    args = parse_args()
    batches = [1, 4] if args.quick else [int(b) for b in args.batches.split(",")]
    compile_options = ["off"] if args.quick else args.compile.split(",")
    dtypes = args.dtypes.split(",")
    device = torch.device(args.device)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        folder = make_model(Path(tmp) / args.shape, shape=args.shape, fp16=args.shape == "sd15")
        print(HEADER + "\n" + RULE, flush=True)
        rows: list[Row] = []
        for dtype in dtypes:
            for option in compile_options:
                rows += run_configuration(folder, args, dtype, option == "on", batches)
        from diffusers import UNet2DConditionModel

        signature = model_signature(UNet2DConditionModel.load_config(folder / "unet"))

    card = device_name(device)
    total_gib = (
        torch.cuda.get_device_properties(device).total_memory / 2**30
        if device.type == "cuda"
        else 0.0
    )
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    memory = f"{total_gib:.0f} GiB" if total_gib else "no GPU memory figures"
    quick = "; --quick: compile off, one timed call per batch" if args.quick else ""
    report = [
        f"{card} ({memory}), torch {torch.__version__}, Python {platform.python_version()}; "
        f"`{args.shape}`-shaped random model, {args.size} px, {STEPS} steps, parallel decoder, "
        f"default VAE budget{quick}; {stamp}; {time.perf_counter() - started:.0f} s in all.",
        "",
        HEADER,
        RULE,
        *[format_row(row) for row in rows],
    ]
    suggestions = budget_rows(rows, signature, card, total_gib, args.size) if total_gib else []
    if suggestions:
        report += [
            "",
            "`worker.budget.MEASURED_BUDGETS` rows (largest batch under "
            f"{FIT_SHARE:.0%} of the card):",
            "",
            "```python",
            *suggestions,
            "```",
        ]
    text = "\n".join(report) + "\n"
    print()
    print(text)
    if args.out:
        args.out.write_text(text, encoding="utf-8")
    if args.write_docs:
        write_docs(text)


def write_docs(table: str) -> None:
    """Replace the block between the markers in docs/fleet.md with ``table``."""
    docs = DOCS.read_text(encoding="utf-8")
    start, end = docs.index(DOCS_START) + len(DOCS_START), docs.index(DOCS_END)
    DOCS.write_text(docs[:start] + "\n" + table + docs[end:], encoding="utf-8")
    print(f"wrote the table into {DOCS}")


if __name__ == "__main__":
    main()
