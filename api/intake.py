"""A submission's request body into a prompt file on disk, streamed, for the one validator.

``POST /v1/submissions`` takes its jobs three ways, and all three end as a file that
``producer.submit.submit_file`` reads like the CLI's, so the fields, limits and per-line errors
are those of ``loopfree submit`` and nothing here checks a job:

- ``application/json``: ``{"jobs": [...], "model": ..., "seed": ...}``. The body is spooled to
  disk as it arrives, then read back with ijson (events, not a document): each element of
  ``jobs`` becomes one JSONL line (a bare string is ``{"prompt": ...}``), so job *i* is line
  *i + 1* and memory holds one element at a time. The other keys are the submission's options.
- a prompt file as the raw body, ``Content-Type`` ``application/jsonl``
  (``application/x-ndjson``), ``text/csv`` or ``text/plain``, options in the query string.
- ``multipart/form-data``: the file in a ``file`` part, options as form fields (``curl -F``).

The body limit (``LOOPFREE_API_MAX_BODY_BYTES``) is enforced by ``api.limits.BodyLimit`` as the
bytes arrive, whichever way.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import ijson
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.requests import Request

from api.problems import Problem
from core.jobspec import (
    DEFAULT_IMAGE_FORMAT,
    DEFAULT_PRIORITY_NAME,
    DEFAULT_STEPS,
    validation_messages,
)
from core.settings import Settings
from producer.prompts import JobDefaults

FILE_TYPES = {
    "application/jsonl": "jsonl",
    "application/x-ndjson": "jsonl",
    "application/jsonlines": "jsonl",
    "text/csv": "csv",
    "text/plain": "txt",
}
"""Content types of a prompt file sent as the whole body, and the format each is read as."""

CHUNK_BYTES = 1 << 20
MAX_FORM_FIELDS = 32


class SubmitOptions(BaseModel):
    """What a submission's lines do not say, and how to take it: ``loopfree submit``'s options."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(None, description="Model of lines without one (server default).")
    seed: int | None = Field(None, description="Job i gets seed + i; random when unset.")
    height: int | None = Field(None, description="Default height (the model's native size).")
    width: int | None = Field(None, description="Default width (the model's native size).")
    steps: int = Field(DEFAULT_STEPS, description="Default DDIM steps.")
    priority: str | int = Field(DEFAULT_PRIORITY_NAME, description="high, normal or low.")
    num_images: int = Field(1, description="Images per line.")
    metadata: dict[str, Any] = Field(default_factory=dict, description="Merged under each line's.")
    format: str = Field(DEFAULT_IMAGE_FORMAT, description="png, webp or jpeg.")
    quality: int | None = Field(None, description="Quality 1-100 of webp/jpeg (default 90).")
    webhook_url: str | None = Field(None, description="POSTed a JSON summary when done.")
    skip_invalid: bool = Field(False, description="Queue the valid lines, list the others.")

    def defaults(self, settings: Settings) -> JobDefaults:
        return JobDefaults(
            model=self.model or settings.model,
            seed_base=self.seed,
            height=self.height,
            width=self.width,
            steps=self.steps,
            priority=self.priority,
            num_images=self.num_images,
            metadata=self.metadata,
            image_format=self.format,
            image_quality=self.quality,
        )


class JsonSubmission(SubmitOptions):
    """The ``application/json`` body (documented in the OpenAPI document; the server streams
    it rather than loading it into this model)."""

    jobs: list[dict[str, Any] | str] = Field(
        description="One job per element: a prompt, or an object with the fields of a JSONL "
        "line (prompt, seed, height, width, steps, num_images, model, priority, metadata, "
        "image_format, image_quality)."
    )
    source: str | None = Field(None, description="A name for the submission (default api.jsonl).")


@dataclass(frozen=True)
class Upload:
    """A request's jobs, as a prompt file on disk, and its options."""

    path: Path
    format: Literal["txt", "jsonl", "csv"]
    options: SubmitOptions
    from_json: bool  # line i + 1 of the file is element i of the body's ``jobs``


async def receive(request: Request, folder: Path) -> Upload:
    """The request's jobs written into ``folder`` (see the module's docstring)."""
    kind = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if kind == "application/json":
        body = folder / "body.json"
        await _spool(request.stream(), body)
        return await run_in_threadpool(_from_json, body, folder)
    if kind in FILE_TYPES:
        options = _options(dict(request.query_params), strict=False, source_allowed=True)
        name = safe_name(request.query_params.get("source") or f"upload.{FILE_TYPES[kind]}")
        path = folder / name
        await _spool(request.stream(), path)
        return Upload(path, FILE_TYPES[kind], options, False)  # type: ignore[arg-type]
    if kind == "multipart/form-data":
        return await _from_form(request, folder)
    raise Problem(
        415,
        "unsupported-media-type",
        "Unsupported content type",
        f'Content-Type {kind or "none"!r} is not taken: send JSON ({{"jobs": [...]}}), a '
        f"prompt file as {', '.join(FILE_TYPES)}, or multipart/form-data with a file part",
    )


def safe_name(name: str) -> str:
    """A file name safe to create in the upload folder that still reads like the original
    (it becomes the submission's ``source``)."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "_", Path(name.replace("\\", "/")).name).lstrip(".")
    return cleaned[:200] or "upload"


async def _spool(chunks: AsyncIterator[bytes], path: Path) -> None:
    with path.open("wb") as file:
        async for chunk in chunks:
            file.write(chunk)


async def _from_form(request: Request, folder: Path) -> Upload:
    form = await request.form(max_files=1, max_fields=MAX_FORM_FIELDS)
    try:
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise Problem(
                422,
                "invalid-request",
                "No file part",
                "a multipart submission needs its prompt file in a part named 'file' "
                "(curl -F file=@prompts.jsonl)",
            )
        fields = {key: value for key, value in form.items() if key != "file"}
        if isinstance(fields.get("metadata"), str):
            fields["metadata"] = _json_field("metadata", fields["metadata"])
        input_format = fields.pop("input_format", None)
        options = _options(fields, strict=False)
        name = safe_name(upload.filename or "upload.txt")
        format = str(input_format or Path(name).suffix.lstrip(".")).lower()
        if format not in ("txt", "jsonl", "csv"):
            raise Problem(
                422,
                "invalid-request",
                "Unknown prompt file format",
                f"the file {name!r} is not .txt, .jsonl or .csv; rename it or set the form "
                "field input_format to txt, jsonl or csv",
            )
        path = folder / name
        with path.open("wb") as file:
            while chunk := await upload.read(CHUNK_BYTES):
                file.write(chunk)
        return Upload(path, format, options, False)  # type: ignore[arg-type]
    finally:
        await form.close()


def _json_field(name: str, text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        raise _invalid([f"{name} must be a JSON object"]) from None


def _options(
    fields: dict[str, Any], *, strict: bool, source_allowed: bool = False
) -> SubmitOptions:
    fields = dict(fields)
    if source_allowed:
        fields.pop("source", None)
    if isinstance(fields.get("metadata"), str):
        fields["metadata"] = _json_field("metadata", fields["metadata"])
    try:
        return SubmitOptions.model_validate(fields, strict=strict)
    except ValidationError as error:
        raise _invalid(validation_messages(error)) from None


def _invalid(messages: list[str]) -> Problem:
    return Problem(
        422,
        "invalid-request",
        "The submission's options are invalid",
        "; ".join(messages[:5]),
        errors=[{"detail": message} for message in messages],
    )


def _from_json(body: Path, folder: Path) -> Upload:
    """``{"jobs": [...], options}`` into a JSONL file and the options (in a worker thread)."""
    options: dict[str, Any] = {}
    source: Any = None
    lines = 0
    jobs_path = folder / "jobs.jsonl"
    with body.open("rb") as stream, jobs_path.open("w", encoding="utf-8") as out:
        events = ijson.parse(stream, use_float=True)
        try:
            _, event, _ = next(events, ("", None, None))
            if event != "start_map":
                raise _not_an_object()
            seen_jobs = False
            for prefix, event, value in events:
                if prefix == "" and event == "end_map":
                    break
                assert event == "map_key"
                key = value
                _, event, value = next(events)
                if key == "jobs":
                    if seen_jobs or event != "start_array":
                        raise _invalid(['"jobs" must be one JSON array of jobs'])
                    seen_jobs = True
                    for item in _items(events):
                        out.write(json.dumps({"prompt": item} if isinstance(item, str) else item))
                        out.write("\n")
                        lines += 1
                elif key == "source":
                    source = _value(events, event, value)
                else:
                    options[key] = _value(events, event, value)
            if next(events, None) is not None:
                raise _not_an_object()
        except ijson.JSONError as error:
            said = error.args[0] if error.args else ""
            if isinstance(said, bytes):  # yajl's message quotes the body: keep its first line
                said = said.decode("utf-8", "replace")
            reason = str(said).strip().splitlines()[0] if str(said).strip() else "incomplete"
            raise Problem(
                400,
                "invalid-json",
                "The body is not valid JSON",
                f"the body is not valid JSON ({reason[:200]}); send UTF-8 JSON like "
                '{"jobs": ["a red fox in snow"], "model": "..."}',
            ) from None
    if not seen_jobs:
        raise _invalid(['"jobs" is missing; give the jobs as a JSON array'])
    parsed = _options(options, strict=True)
    if source is not None and not isinstance(source, str):
        raise _invalid(["source must be text"])
    target = folder / safe_name(source or "api.jsonl")
    if target.suffix != ".jsonl":
        target = target.with_name(target.name + ".jsonl")
    jobs_path.rename(target)
    return Upload(target, "jsonl", parsed, True)


def _items(events: Iterator[tuple[str, str, Any]]) -> Iterator[Any]:
    """The elements of the array whose ``start_array`` was just read."""
    for _, event, value in events:
        if event == "end_array":
            return
        yield _value(events, event, value)


def _value(events: Iterator[tuple[str, str, Any]], event: str, value: Any) -> Any:
    """The whole JSON value that starts with ``event``."""
    if event not in ("start_map", "start_array"):
        return value
    builder = ijson.ObjectBuilder()
    builder.event(event, value)
    depth = 1
    for _, event, value in events:
        builder.event(event, value)
        if event in ("start_map", "start_array"):
            depth += 1
        elif event in ("end_map", "end_array"):
            depth -= 1
            if depth == 0:
                break
    return builder.value


def _not_an_object() -> Problem:
    return Problem(
        422,
        "invalid-request",
        "The body is not a submission",
        'the JSON body must be one object, {"jobs": [...], "model": ...}; put the jobs in '
        '"jobs" and the options beside it',
    )
