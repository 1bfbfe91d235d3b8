"""One image job's fields, and the one validator that the CLI, the producer and the worker share.

``validate_job`` turns a mapping (a parsed prompt line, a database row) into a frozen ``JobSpec`` or
raises ``InvalidJob`` with a message that names the field and the fix. ``check_model_reference``
adds the one check that needs the file system: local model folders must lie under the allowed
roots. Only the standard library is imported here, so ``loopfree submit`` starts fast.
"""

from __future__ import annotations

import functools
import json
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from core.errors import InvalidJob, UserError

if TYPE_CHECKING:
    from pydantic import ValidationError

# The UNet downsamples the 1/8-size latent three times; below 64 px that leaves less than one
# latent pixel at the bottom of the UNet.
MIN_SIZE = 64
# SD-1.5-class models are trained at 512 px and repeat themselves far above it, and one 2048 px
# image already needs several GB of activations; larger requests are almost surely mistakes.
MAX_SIZE = 2048
# The VAE maps 8x8 pixels to one latent pixel; other sizes cannot be decoded to the size asked for.
SIZE_MULTIPLE = 8
# Seeds are stored in a signed 64-bit SQL column (BIGINT); torch generators accept all of them.
MAX_SEED = 2**63 - 1
# Loopfree models are distilled for 4 steps, and more steps do not make their images better.
DEFAULT_STEPS = 4
# Bounds how long one job holds its place in a batch; no Loopfree schedule needs more.
MAX_STEPS = 50
# One line asking for more images than this is far more likely a typo than a wish.
MAX_NUM_IMAGES = 64
# CLIP reads the first 77 tokens (about 300 characters) and truncates the rest, which is fine; a
# limit far above that still stops a 1 MB paste before it reaches the database and the queue.
MAX_PROMPT_CHARS = 10_000
# Metadata rides along in every job row and message; it is for tags and ids, not payloads.
MAX_METADATA_BYTES = 16 * 1024
# The width of ``jobs.model``: a model is stored as written (hub id) or as its resolved absolute
# path (local folder), and either must fit, or PostgreSQL refuses the whole submission.
MAX_MODEL_CHARS = 255
# Who submitted: a user or service name the fleet is shared between (``fleet.dispatch``), shown
# in listings and later bound to API tokens; short, printable, no spaces.
MAX_OWNER_CHARS = 64
OWNER_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,63}", re.ASCII)
# The hub's own limit on an ``owner/name`` id (huggingface_hub's validate_repo_id).
MAX_HUB_ID_CHARS = 96
# Celery's Redis and RabbitMQ transports both order priorities 0..9, 9 first; job priorities use
# the same range (``taskqueue.app.broker_priority`` maps them onto the Redis transport's order).
MIN_PRIORITY, MAX_PRIORITY = 0, 9
# The names a prompt file or the CLI may use, highest first (the order messages list them in).
PRIORITY_LEVELS: Mapping[str, int] = MappingProxyType(
    {"high": MAX_PRIORITY, "normal": 5, "low": MIN_PRIORITY}
)
DEFAULT_PRIORITY_NAME = "normal"
DEFAULT_PRIORITY = PRIORITY_LEVELS[DEFAULT_PRIORITY_NAME]
MODEL_ROOTS_SETTING = "LOOPFREE_MODEL_ROOTS"
# How an image is stored. PNG is lossless and the default; WebP and JPEG are a tenth of the bytes
# and (JPEG) a tenth of the CPU, for callers that accept a lossy image. ``jpg`` is read as jpeg.
IMAGE_FORMATS: tuple[str, ...] = ("png", "webp", "jpeg")
DEFAULT_IMAGE_FORMAT = "png"
_FORMAT_ALIASES: Mapping[str, str] = MappingProxyType({"jpg": "jpeg"})
# The lossy encoders' quality scale (Pillow's); below 1 or above 100 means nothing to them.
MIN_QUALITY, MAX_QUALITY = 1, 100

# fullmatch with ASCII: `\w` would otherwise admit any Unicode letter and `$` a trailing newline.
# The hub's rules: each part starts and ends with a letter, digit or _, and has no "--" or "..".
_HUB_OWNER = r"[A-Za-z0-9](?:[\w.-]*\w)?"
_HUB_NAME = r"\w(?:[\w.-]*\w)?"
HUB_ID_PATTERN = re.compile(rf"{_HUB_OWNER}/{_HUB_NAME}", re.ASCII)
# Written like owner/name, whether or not the hub would accept it: worth a specific error.
_HUB_ID_SHAPE = re.compile(r"[^/\s]+/[^/\s]+")
_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")
_PATH_PREFIXES = ("/", "./", "../", "~")
# One encoder for all jobs: json.dumps with options builds a new one per call.
_JSON_ENCODER = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))


@dataclass(frozen=True, slots=True)
class JobSpec:
    """Everything a worker needs to render one image; the seed is always concrete.

    Constructing one validates it (``InvalidJob`` lists every problem), so no invalid JobSpec
    exists. ``height``/``width`` of None mean "the model's native size", filled in by
    ``resolve_size`` where the model is known. ``num_images`` is not a field: a request for k
    images becomes k jobs. A frozen dataclass, not a pydantic model: validating the jobs of a
    100,000-line prompt file took less than half the time this way.
    """

    prompt: str
    seed: int
    model: str
    height: int | None = None
    width: int | None = None
    steps: int = DEFAULT_STEPS
    # A name (high, normal, low) is accepted and stored as its number.
    priority: int = DEFAULT_PRIORITY
    metadata: dict[str, Any] = field(default_factory=dict, hash=False)
    # png, webp or jpeg; the quality (1..100) of a lossy format, None for its default.
    image_format: str = DEFAULT_IMAGE_FORMAT
    image_quality: int | None = None

    def __post_init__(self) -> None:
        problems: list[str] = []
        for name, expected, check in _CHECKS:
            value = getattr(self, name)
            if type(value) is not expected:  # the exact type skips the rarer cases below
                if value is None and name in _OPTIONAL:
                    continue
                is_name = name == "priority" and isinstance(value, str)  # check_priority maps it
                if not is_name and (not isinstance(value, expected) or isinstance(value, bool)):
                    problems.append(_type_problem(name, value, expected))
                    continue
            try:
                checked = check(value, name)
            except InvalidJob as exc:
                problems.append(str(exc))
                continue
            if checked is not value:
                object.__setattr__(self, name, checked)  # a stripped prompt, a priority number
        if self.image_quality is not None and self.image_format == "png":
            problems.append(
                "image_quality applies to webp and jpeg only (png is lossless); drop it or "
                "choose a lossy image_format"
            )
        if problems:
            raise InvalidJob(" | ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        """The fields as JSON-ready values; ``validate_job`` reads them back."""
        return {name: getattr(self, name) for name in FIELD_NAMES} | {
            "metadata": dict(self.metadata)
        }

    def resolve_size(self, native_height: int, native_width: int) -> JobSpec:
        """This job with an unset height or width replaced by the model's native size."""
        if self.height is not None and self.width is not None:
            return self
        return replace(
            self,
            height=native_height if self.height is None else self.height,
            width=native_width if self.width is None else self.width,
        )


# In declaration order; storage keeps each field in the ``jobs`` column of the same name.
FIELD_NAMES: tuple[str, ...] = tuple(spec_field.name for spec_field in fields(JobSpec))


@dataclass(frozen=True, slots=True)
class ParsedJob:
    """One validated job and its place in its submission: what a prompt file line becomes, and
    what ``storage.submissions.insert_jobs`` stores as one row."""

    spec: JobSpec
    line_number: int  # the physical line; for CSV the line where the record starts
    position: int  # 0-based index among the jobs of the submission


_REQUIRED = ("prompt", "seed", "model")
_REQUIRED_SET = frozenset(_REQUIRED)
_OPTIONAL = frozenset({"height", "width", "image_quality"})


def validate_job(data: Mapping[str, Any]) -> JobSpec:
    """The shared validator: job fields -> ``JobSpec``, or ``InvalidJob`` saying what to fix."""
    if not isinstance(data, Mapping):
        raise InvalidJob(f"a job must be a JSON object of fields, not {_describe(data)}")
    if not (_FIELD_SET.issuperset(data) and _REQUIRED_SET.issubset(data)):
        unknown = [
            f"{str(name)[:40]!r} is not a known field" for name in data if name not in _FIELD_SET
        ]
        missing = [f"{name} is missing" for name in _REQUIRED if name not in data]
        raise InvalidJob(
            f"{'; '.join(missing + unknown)}; a job has the fields {', '.join(FIELD_NAMES)}"
        )
    return JobSpec(**data)


# The check_* functions take the value (of the right type) and the field's name, return the value
# as JobSpec stores it, or raise InvalidJob. JobSpec runs them; a CLI may run one on an option.


def check_prompt(prompt: str, name: str = "prompt") -> str:
    """The prompt without surrounding whitespace, or InvalidJob."""
    prompt = prompt.strip()
    if not prompt:
        raise InvalidJob("prompt is empty; write what the image should show")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise InvalidJob(
            f"prompt is {len(prompt):,} characters long; the limit is {MAX_PROMPT_CHARS:,} "
            "(CLIP reads only the first 77 tokens anyway), so shorten it"
        )
    if "\x00" in prompt:
        # PostgreSQL text columns cannot hold NUL.
        raise InvalidJob("prompt contains a NUL character; remove it")
    _check_utf8("prompt", prompt)
    return prompt


def check_seed(seed: int, name: str = "seed") -> int:
    if not 0 <= seed <= MAX_SEED:
        raise InvalidJob(
            f"seed {_short(seed)} is out of range; use a whole number from 0 to {MAX_SEED}"
        )
    return seed


def check_size(size: int, name: str = "size") -> int:
    """``size`` if it is a usable image height or width in pixels, else InvalidJob."""
    if not MIN_SIZE <= size <= MAX_SIZE:
        raise InvalidJob(
            f"{name} {_short(size)} is outside {MIN_SIZE}..{MAX_SIZE} px; "
            f"use a multiple of {SIZE_MULTIPLE} in that range"
        )
    if size % SIZE_MULTIPLE:
        lower = size - size % SIZE_MULTIPLE
        options = [s for s in (lower, lower + SIZE_MULTIPLE) if MIN_SIZE <= s <= MAX_SIZE]
        raise InvalidJob(
            f"{name} {size} is not a multiple of {SIZE_MULTIPLE}; use "
            + " or ".join(str(s) for s in options)
        )
    return size


def check_steps(steps: int, name: str = "steps") -> int:
    if not 1 <= steps <= MAX_STEPS:
        raise InvalidJob(
            f"steps {_short(steps)} is out of range; use 1 to {MAX_STEPS} "
            f"(Loopfree models are trained for {DEFAULT_STEPS})"
        )
    return steps


# Cached: a prompt file names the same model on every line, and this check is the slowest here.
@functools.lru_cache(maxsize=256)
def check_model(model: str, name: str = "model") -> str:
    """``model`` if it is written as a hub id or a local path; the file system is not consulted."""
    _check_model_text(model)
    if not (_looks_like_path(model) or is_hub_id(model)):
        raise _not_a_model(model)
    return model


def check_priority(priority: int | str, name: str = "priority") -> int:
    """A priority name (high, normal, low) as its number; a number if it is in range."""
    if isinstance(priority, str):
        level = PRIORITY_LEVELS.get(priority.strip().lower())
        if level is None:
            raise InvalidJob(
                f"priority {priority[:40]!r} is unknown; use {', '.join(PRIORITY_LEVELS)} "
                f"or a number from {MIN_PRIORITY} to {MAX_PRIORITY}"
            )
        return level
    if not MIN_PRIORITY <= priority <= MAX_PRIORITY:
        raise InvalidJob(
            f"priority {_short(priority)} is out of range; use {', '.join(PRIORITY_LEVELS)} "
            f"or a number from {MIN_PRIORITY} to {MAX_PRIORITY}"
        )
    return priority


def check_metadata(metadata: dict[str, Any], name: str = "metadata") -> dict[str, Any]:
    """``metadata`` if it is a small JSON object that JSONB can store; else InvalidJob."""
    if not metadata:
        return metadata
    try:
        text = _JSON_ENCODER.encode(metadata)
        size = len(text.encode("utf-8"))
    except (TypeError, ValueError, RecursionError) as exc:
        # A lone surrogate fails the encode with UnicodeEncodeError, which is a ValueError.
        raise InvalidJob(
            f"metadata is not plain JSON ({_cut(str(exc))}); use only strings, numbers, "
            "true/false/null, lists and objects"
        ) from None
    if size > MAX_METADATA_BYTES:
        raise InvalidJob(
            f"metadata is {size:,} bytes as JSON; the limit is {MAX_METADATA_BYTES:,}, so keep "
            "only ids and tags in it"
        )
    # json.dumps quietly turns int keys into strings and escapes NUL, which JSONB rejects.
    stack: list[Any] = [metadata]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for key, child in item.items():
                if not isinstance(key, str):
                    raise InvalidJob(f"metadata key {key!r} is not a string; quote it")
                if "\x00" in key:
                    raise InvalidJob("metadata contains a NUL character; remove it")
                stack.append(child)
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, str) and "\x00" in item:
            raise InvalidJob("metadata contains a NUL character; remove it")
    return metadata


def check_image_format(image_format: str, name: str = "image_format") -> str:
    """The format's canonical name (lower case, ``jpg`` -> ``jpeg``), or InvalidJob."""
    canonical = image_format.strip().lower()
    canonical = _FORMAT_ALIASES.get(canonical, canonical)
    if canonical not in IMAGE_FORMATS:
        raise InvalidJob(f"{name} {image_format[:40]!r} is unknown; use {', '.join(IMAGE_FORMATS)}")
    return image_format if canonical == image_format else canonical  # same object: no copy


def check_image_quality(quality: int, name: str = "image_quality") -> int:
    if not MIN_QUALITY <= quality <= MAX_QUALITY:
        raise InvalidJob(
            f"{name} {_short(quality)} is out of range; use {MIN_QUALITY} to {MAX_QUALITY} "
            "(90 is visually lossless for photos)"
        )
    return quality


def check_owner(owner: str) -> str:
    """A submitter's name as the fleet shares it (``--owner``, ``LOOPFREE_OWNER``), or UserError."""
    if not isinstance(owner, str) or OWNER_PATTERN.fullmatch(owner) is None:
        raise UserError(
            f"owner {_short(owner)} is not a valid name: use 1 to {MAX_OWNER_CHARS} letters, "
            "digits and . _ @ + - (starting with a letter or digit), e.g. --owner alice"
        )
    return owner


def is_hub_id(model: str) -> bool:
    """Whether ``model`` is a Hugging Face hub id, ``owner/name``, by the hub's own rules."""
    # ".." could also climb out of the local cache folder; "--" is the cache's own separator.
    return (
        len(model) <= MAX_HUB_ID_CHARS
        and HUB_ID_PATTERN.fullmatch(model) is not None
        and ".." not in model
        and "--" not in model
        and not model.endswith(".git")
    )


def _not_a_model(model: str) -> InvalidJob:
    if _HUB_ID_SHAPE.fullmatch(model):
        return InvalidJob(
            f"model {_cut(model)!r} is not a valid hub id: owner and name start and end with a "
            'letter, digit or _, contain only those and "-" or ".", never "--" or "..", and '
            f"together are at most {MAX_HUB_ID_CHARS} characters; for a local folder start the "
            "path with ./ or /"
        )
    return InvalidJob(
        f"model {_cut(model)!r} is neither a hub id like owner/name nor a local path; write a "
        "hub id, or start a local folder with ./ or /"
    )


def check_model_reference(model: str, allowed_roots: Sequence[Path]) -> str:
    """Check a model reference and return it in the form jobs should record.

    A local path (absolute, ``./``, ``../``, ``~``, or anything that exists on disk) is resolved,
    symlinks included, to an absolute path, because the worker runs in another directory; with
    ``allowed_roots`` set it must lie under one of them. Anything else must be a hub id.
    Whether the folder holds usable weights is the loader's question (``ModelNotFound``).
    """
    _check_model_text(model)
    if _looks_like_path(model) or os.path.exists(model):
        try:
            resolved = Path(model).expanduser().resolve()
            roots = [Path(root).expanduser().resolve() for root in allowed_roots]
        except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop
            raise InvalidJob(
                f"model path {model!r} cannot be resolved ({exc}); fix the path"
            ) from None
        if roots and not any(resolved == root or root in resolved.parents for root in roots):
            raise InvalidJob(
                f"model path {model!r} resolves to {resolved}, outside the allowed model roots "
                f"({', '.join(str(root) for root in roots)}); move the model under one of them "
                f"or add its folder to {MODEL_ROOTS_SETTING}"
            )
        if len(str(resolved)) > MAX_MODEL_CHARS:
            raise InvalidJob(
                f"model path {_cut(model)!r} resolves to a path of {len(str(resolved))} "
                f"characters; the limit is {MAX_MODEL_CHARS}, so move the model to a shorter path"
            )
        return str(resolved)
    if is_hub_id(model):
        return model
    raise _not_a_model(model)


def explain_validation_error(exc: ValidationError) -> str:
    """Pydantic's errors (settings, API models) as one readable line: field, problem and fix,
    without the documentation URLs pydantic puts in ``str(exc)``."""
    return " | ".join(validation_messages(exc))


def validation_messages(exc: ValidationError) -> list[str]:
    """One readable message per error in ``exc``."""
    messages = []
    for error in exc.errors(include_url=False):
        field = ".".join(str(part) for part in error["loc"]) or "input"
        kind = error["type"]
        got = error.get("input")
        if kind == "missing":
            messages.append(f"{field} is missing; add it")
        elif kind == "extra_forbidden":
            messages.append(f"{field} is not a known field; remove it or fix its spelling")
        elif kind in _TYPE_NAMES:
            messages.append(
                f"{field} must be {_TYPE_NAMES[kind]}, not {_describe(got)}; fix its value"
            )
        else:
            messages.append(f"{field}: {error['msg']}")  # already says what it expects
    return messages


# pydantic error type -> what the field must be, in words a user of a config file knows.
_TYPE_NAMES = {
    "int_type": "a whole number",
    "int_parsing": "a whole number",
    "int_from_float": "a whole number",
    "string_type": "text",
    "dict_type": "a JSON object",
    "bool_type": "true or false",
    "float_type": "a number",
    "list_type": "a list",
}


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return f"the text {value[:40]!r}"
    if isinstance(value, (int, float)):
        return f"the number {_short(value)}"
    return f"a {type(value).__name__}"


def _type_problem(name: str, value: Any, expected: type) -> str:
    return f"{name} must be {_EXPECTED[expected]}, not {_describe(value)}; fix its value"


_EXPECTED = {str: "text", int: "a whole number", dict: "a JSON object"}


def _short(value: Any) -> str:
    """A value for a message, cut so that a 5,000-digit number cannot flood it."""
    if isinstance(value, int) and abs(value) >= 10**40:
        # repr() of an int past 4,300 digits raises ValueError instead of printing it.
        return f"(a {'negative ' if value < 0 else ''}{value.bit_length():,}-bit number)"
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:40]}...({len(text):,} characters)"


# (field, type it must have, check that may normalize it), in the order problems are reported.
_CHECKS: tuple[tuple[str, type, Callable[[Any, str], Any]], ...] = (
    ("prompt", str, check_prompt),
    ("seed", int, check_seed),
    ("model", str, check_model),
    ("height", int, check_size),
    ("width", int, check_size),
    ("steps", int, check_steps),
    ("priority", int, check_priority),
    ("metadata", dict, check_metadata),
    ("image_format", str, check_image_format),
    ("image_quality", int, check_image_quality),
)
_FIELD_SET = frozenset(FIELD_NAMES)
# A JobSpec field without an entry in _CHECKS would be stored unvalidated.
assert {name for name, _, _ in _CHECKS} == _FIELD_SET, "every JobSpec field needs a check"


def _cut(text: str) -> str:
    return text if len(text) <= 80 else text[:77] + "..."


def _check_model_text(model: str) -> None:
    if not model.strip():
        raise InvalidJob("model is empty; give a hub id like owner/name or a local folder")
    if len(model) > MAX_MODEL_CHARS:
        raise InvalidJob(f"model is {len(model):,} characters long; the limit is {MAX_MODEL_CHARS}")
    if _CONTROL_CHARS.search(model):
        raise InvalidJob("model contains a control character (NUL, newline, ...); remove it")
    _check_utf8("model", model)


def _check_utf8(field: str, text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidJob(
            f"{field} contains a lone surrogate (a broken \\ud8xx escape); write the character "
            "itself"
        ) from None


def _looks_like_path(model: str) -> bool:
    return model.startswith(_PATH_PREFIXES) or model in (".", "..") or os.path.isabs(model)
