"""Worker-side commands: ``generate``, ``worker``, ``model make-tiny``.

torch and diffusers are imported inside the commands, never at module level: the CLI image has no
torch, and ``loopfree submit`` must not pay for it.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from core.jobspec import DEFAULT_STEPS
from core.settings import get_settings

model_app = typer.Typer(help="Build and inspect models.", no_args_is_help=True)


class Mode(str, Enum):
    parallel = "parallel"
    sequential = "sequential"


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class Shape(str, Enum):
    tiny = "tiny"
    small = "small"
    sd15 = "sd15"


def generate(
    prompt: Annotated[
        str | None, typer.Argument(help="The prompt (or use --prompts-file).")
    ] = None,
    prompts_file: Annotated[
        Path | None, typer.Option(help="A .txt (one prompt per line) or .jsonl file.")
    ] = None,
    model: Annotated[str | None, typer.Option(help="Hub id or local pipeline folder.")] = None,
    seed: Annotated[int, typer.Option(help="Seed; prompt i of a file gets SEED+i.")] = 0,
    height: Annotated[int | None, typer.Option(help="Pixels; default: the model's.")] = None,
    width: Annotated[int | None, typer.Option(help="Pixels; default: the model's.")] = None,
    steps: Annotated[
        int, typer.Option(help=f"DDIM steps (Loopfree is trained for {DEFAULT_STEPS}).")
    ] = DEFAULT_STEPS,
    mode: Annotated[Mode, typer.Option(help="Decoder passes in one batch or one by one.")] = (
        Mode.parallel
    ),
    batch_size: Annotated[int, typer.Option(min=1, help="Prompts per sampler call.")] = 8,
    device: Annotated[Device, typer.Option()] = Device.auto,
    out: Annotated[Path, typer.Option(help="PNG file (one prompt) or folder (--prompts-file).")] = (
        Path("out.png")
    ),
) -> None:
    """Render images locally, without queue or database."""
    from core.errors import UserError
    from producer.prompts import JobDefaults, parse_prompt_file, parse_prompts

    settings = get_settings()
    model = model or settings.model
    if (prompt is None) == (prompts_file is None):
        raise UserError("give either a PROMPT or --prompts-file, not both or neither")
    defaults = JobDefaults(model=model, seed_base=seed, height=height, width=width, steps=steps)
    if prompts_file is not None:
        parsed = parse_prompt_file(
            prompts_file, defaults=defaults, model_roots=settings.model_roots
        )
    else:
        parsed = parse_prompts(prompt.encode(), format="txt", defaults=defaults, source="PROMPT")
    if len(parsed.jobs) != 1 and prompts_file is None:
        raise UserError("PROMPT must be a single line; use --prompts-file for several prompts")

    from worker.imaging import encode_png
    from worker.models import load_model
    from worker.sampler import TiUESampler

    loaded = load_model(
        model,
        device=device.value,
        dtype=settings.dtype,
        channels_last=settings.channels_last,
        tiny_vae=settings.tiny_vae if settings.vae == "tiny" else None,
    )
    if loaded.vae_note:
        typer.secho(f"note: images are {loaded.vae_note} (LOOPFREE_VAE=tiny)", err=True)
    sampler = TiUESampler(loaded, vae_budget=settings.vae_budget)
    specs = [job.spec.resolve_size(loaded.default_size, loaded.default_size) for job in parsed.jobs]
    if prompts_file is not None:
        out.mkdir(parents=True, exist_ok=True)
    written = 0
    # One sampler call per (size, steps) and batch_size prompts; file names follow input order.
    groups: dict[tuple[int, int, int], list[int]] = {}
    for index, spec in enumerate(specs):
        groups.setdefault((spec.height, spec.width, spec.steps), []).append(index)
    for (group_height, group_width, group_steps), indices in groups.items():
        for start in range(0, len(indices), batch_size):
            chunk = indices[start : start + batch_size]
            result, truncated = sampler.generate(
                [specs[i].prompt for i in chunk],
                [specs[i].seed for i in chunk],
                group_height,
                group_width,
                steps=group_steps,
                mode=mode.value,
            )
            for row, index in enumerate(chunk):
                target = out if prompts_file is None else out / f"{index:05d}.png"
                target.write_bytes(encode_png(result.images[row].numpy()).data)
                written += 1
                if truncated[row]:
                    typer.secho(
                        f"note: prompt {index + 1} was longer than the text encoder's limit "
                        "and was truncated",
                        err=True,
                    )
    typer.echo(f"wrote {written} image(s) to {out}")


def worker(
    model: Annotated[str | None, typer.Option(help="Hub id or local pipeline folder.")] = None,
    max_batch: Annotated[
        int | None,
        typer.Option(
            help="Jobs per delivery taken from the broker (default 16); each sampler call takes "
            "as many of them as LOOPFREE_BATCH_BUDGET allows."
        ),
    ] = None,
    max_wait_ms: Annotated[
        int | None, typer.Option(help="Wait this long to fill a delivery.")
    ] = None,
    loglevel: Annotated[str, typer.Option()] = "INFO",
) -> None:
    """Serve one model's queue: dynamic batches, TiUE sampling, uploads, results in SQL. Checks
    the database's schema, the broker and the store first, and exits with one line if any is
    wrong."""
    import logging

    from migrations.runner import check_schema
    from worker.service import run_worker

    logging.basicConfig(
        level=loglevel.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    settings = _with_overrides(max_batch=max_batch, max_wait_ms=max_wait_ms)
    check_schema(settings.resolved_database_url)
    run_worker(settings, model, loglevel=loglevel)


def make_tiny(
    folder: Annotated[Path, typer.Argument(help="Where to write the pipeline folder.")],
    shape: Annotated[Shape, typer.Option(help="tiny, small or sd15.")] = Shape.tiny,
    seed: Annotated[int, typer.Option()] = 0,
    fp16: Annotated[bool, typer.Option(help="Store fp16 weights (half the disk).")] = False,
) -> None:
    """Write a random-weight model in the Loopfree/diffusers folder layout."""
    from worker.tiny import make_model

    make_model(folder, shape=shape.value, seed=seed, fp16=fp16)
    typer.echo(f"wrote a random-weight {shape.value} model to {folder}")


def _with_overrides(**overrides):
    settings = get_settings()
    changes = {key: value for key, value in overrides.items() if value is not None}
    return settings.model_copy(update=changes) if changes else settings


def register(app: typer.Typer) -> None:
    app.command()(generate)
    app.command()(worker)
    model_app.command("make-tiny")(make_tiny)
    app.add_typer(model_app, name="model")
