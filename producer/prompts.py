"""Bulk prompt files -> validated jobs: ``.txt`` (one prompt a line), ``.jsonl`` and ``.csv``.

Every line is checked before anything is returned and every bad line is reported with its number,
so a file is fixed in one pass and never half-queued. Each job goes through ``validate_job``, the
validator the worker runs again. Lines are split on ``\\n`` and decoded one at a time, so broken
UTF-8 is reported at its line; the file is streamed, never held whole. A CSV record is one line
(``_csv_row``): a quote left open is an error on its own line, never a field that swallows the
lines after it. ``ParseResult`` accounts for every line read (accepted, skipped, blank).

JSONL and CSV lines may set ``prompt``, ``seed``, ``height``, ``width``, ``steps``,
``num_images``, ``model``, ``priority``, ``metadata``, ``image_format`` and ``image_quality``;
anything unset (a missing key, a JSON null, an empty CSV cell) comes from ``JobDefaults``. Line
metadata is merged over the default.
"""

from __future__ import annotations

import csv
import io
import json
import os
import secrets
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from random import Random
from typing import IO, Any

from core.errors import InvalidJob, UserError
from core.jobspec import (
    DEFAULT_IMAGE_FORMAT,
    DEFAULT_PRIORITY_NAME,
    DEFAULT_STEPS,
    FIELD_NAMES,
    MAX_NUM_IMAGES,
    MAX_SEED,
    JobSpec,
    ParsedJob,
    check_model_reference,
    validate_job,
)

SUPPORTED_FORMATS = ("txt", "jsonl", "csv")
# A line sets a job's fields, and may ask for several images of it.
LINE_FIELDS = (*FIELD_NAMES, "num_images")
# A million JSONL prompts take about 100 MB; far bigger files are mistakes (a dataset, a binary).
MAX_FILE_BYTES = 200 * 1024 * 1024
# Jobs are streamed, never all held; the bound keeps one submission a size that one `status`,
# one cancel and one export handle in seconds: larger runs are several submissions.
MAX_JOBS = 1_000_000
# The longest valid line (a 10,000-character prompt escaped as JSON, 16 KB of metadata) fits many
# times over; a longer line is skipped without being read into memory whole.
MAX_LINE_BYTES = 1024 * 1024
# An error message lists this many bad lines and counts the rest.
LISTED_ERRORS = 20
# A file of a million broken lines keeps this many LineErrors and counts the rest.
KEPT_ERRORS = 10_000

_FIELD_SET = frozenset(LINE_FIELDS)
_CSV_INT_FIELDS = frozenset({"seed", "height", "width", "steps", "num_images", "image_quality"})
_UTF8_BOM = b"\xef\xbb\xbf"
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")
# Stands in for a model that was already reported, so the other fields are still checked.
_REPORTED_MODEL = "reported/model"
# Cached model references per parse; a garbage file cannot grow the cache past this.
_MODEL_CACHE_SIZE = 1024


@dataclass(frozen=True)
class JobDefaults:
    """What a line does not say. ``height``/``width`` None: the model's native size, which the
    caller resolves (``JobSpec.resolve_size``) once it knows the model."""

    model: str
    # Job i of the file (counting expanded jobs) gets seed_base + i; None draws a random seed.
    seed_base: int | None = None
    height: int | None = None
    width: int | None = None
    steps: int = DEFAULT_STEPS
    priority: str | int = DEFAULT_PRIORITY_NAME
    num_images: int = 1
    metadata: Mapping[str, Any] = field(default_factory=dict)
    image_format: str = DEFAULT_IMAGE_FORMAT
    image_quality: int | None = None


@dataclass(frozen=True, slots=True)
class LineError:
    """Why one line (1-based, as an editor counts) was rejected."""

    line_number: int
    reason: str

    def __str__(self) -> str:
        return f"line {self.line_number}: {self.reason}"


@dataclass(frozen=True)
class ParseResult:
    """The jobs of a file in order, and with ``skip_invalid`` the lines that were skipped.

    Every line read is accounted for: ``lines_read`` = ``lines_accepted`` (each made at least one
    job) + ``skipped_count`` + lines that hold no job (blank lines, a CSV header).
    """

    jobs: tuple[ParsedJob, ...]
    skipped: tuple[LineError, ...]
    skipped_count: int  # can exceed len(skipped): only the first KEPT_ERRORS are kept
    format: str
    source: str
    lines_read: int = 0
    lines_accepted: int = 0
    # Jobs the file holds: len(jobs), or, when they went to a sink, how many went there.
    job_count: int = 0

    @property
    def specs(self) -> list[JobSpec]:
        return [job.spec for job in self.jobs]

    @property
    def skipped_line_numbers(self) -> tuple[int, ...]:
        """The numbers of the skipped lines (the first KEPT_ERRORS of them)."""
        return tuple(error.line_number for error in self.skipped)

    def summary(self) -> str:
        """One line for people: what was read, accepted and skipped, and where."""
        text = (
            f"{self.source}: {self.lines_read:,} line(s) read, {self.lines_accepted:,} accepted "
            f"({self.job_count or len(self.jobs):,} job(s)), {self.skipped_count:,} skipped"
        )
        if not self.skipped_count:
            return text
        numbers = ", ".join(str(n) for n in self.skipped_line_numbers[:LISTED_ERRORS])
        more = self.skipped_count - min(len(self.skipped), LISTED_ERRORS)
        return f"{text} (line {numbers}{f' and {more:,} more' if more > 0 else ''})"


class PromptFileError(UserError):
    """A prompt file cannot be used as it is; ``errors`` lists its bad lines, if that is why."""

    def __init__(
        self,
        source: str,
        problem: str,
        errors: Sequence[LineError] = (),
        error_count: int | None = None,
    ) -> None:
        errors = tuple(errors)
        count = len(errors) if error_count is None else error_count
        # All fields in args, so the error survives pickling (multiprocessing, Celery).
        super().__init__(source, problem, errors, count)
        self.source, self.problem, self.errors, self.error_count = source, problem, errors, count

    def __str__(self) -> str:
        lines = [f"{self.source}: {self.problem}"]
        lines += [f"  {error}" for error in self.errors[:LISTED_ERRORS]]
        more = self.error_count - min(len(self.errors), LISTED_ERRORS)
        if more > 0:
            lines.append(f"  ... and {more:,} more")
        return "\n".join(lines)


def parse_prompt_file(
    path: str | os.PathLike[str],
    *,
    defaults: JobDefaults,
    skip_invalid: bool = False,
    model_roots: Sequence[Path] = (),
    format: str | None = None,
    sink: Callable[[ParsedJob], None] | None = None,
) -> ParseResult:
    """Parse a prompt file; the format comes from its extension unless ``format`` names it.

    Raises ``PromptFileError`` for an unreadable, oversized, empty or (unless ``skip_invalid``)
    partly invalid file, and ``InvalidJob`` for invalid ``defaults``. Local model paths, in lines
    or defaults, must lie under ``model_roots`` when it is non-empty.

    ``sink``: each job is handed to it as it is parsed instead of being kept in the result, so a
    file of any length is parsed in constant memory (``producer.submit`` parses twice: once to
    validate every line, once to store the jobs in chunks).
    """
    source = os.fspath(path)
    if format is None:
        format = Path(source).suffix
        if format.lower()[1:] not in SUPPORTED_FORMATS:
            raise PromptFileError(
                source,
                f"has {f'extension {format!r}' if format else 'no extension'}; use a .txt "
                "(one prompt per line), .jsonl or .csv file, or name its format",
            )
    try:
        with open(source, "rb") as stream:
            size = os.fstat(stream.fileno()).st_size
            if size > MAX_FILE_BYTES:
                raise PromptFileError(source, _too_big(size))
            return parse_prompts(
                stream, format=format, defaults=defaults, skip_invalid=skip_invalid,
                model_roots=model_roots, source=source, sink=sink,
            )  # fmt: skip
    except OSError as exc:
        raise PromptFileError(
            source, f"cannot be read ({exc.strerror or exc}); check the path"
        ) from None


def parse_prompts(
    data: str | bytes | IO[bytes] | IO[str],
    *,
    format: str,
    defaults: JobDefaults,
    skip_invalid: bool = False,
    model_roots: Sequence[Path] = (),
    source: str = "<input>",
    sink: Callable[[ParsedJob], None] | None = None,
) -> ParseResult:
    """Parse prompts from text, bytes or an open stream (stdin, tests) in the given format;
    ``sink`` as for ``parse_prompt_file``."""
    fmt = _check_format(format, source)
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogatepass")  # a lone surrogate becomes a bad line
    if isinstance(data, io.TextIOBase):
        data = data.read(MAX_FILE_BYTES + 1).encode("utf-8", "surrogatepass")
    stream = io.BytesIO(data) if isinstance(data, bytes) else data
    collector = _Collector(defaults, model_roots, source, sink)
    lines = _counted(_physical_lines(stream, source), collector)
    if fmt == "txt":
        _read_txt(lines, collector)
    elif fmt == "jsonl":
        _read_jsonl(lines, collector)
    else:
        _read_csv(lines, collector, source)
    return collector.result(fmt, skip_invalid)


def _check_format(name: str, source: str) -> str:
    fmt = name.lower().lstrip(".")
    if fmt not in SUPPORTED_FORMATS:
        raise PromptFileError(
            source, f"format {name!r} is not supported; use {', '.join(SUPPORTED_FORMATS)}"
        )
    return fmt


def _too_big(size: int) -> str:
    return f"is {size:,} bytes; the limit is {MAX_FILE_BYTES:,}, so split it into smaller files"


class _Collector:
    """Turns each line's fields into jobs (expanding num_images, assigning seeds) or a LineError."""

    def __init__(
        self,
        defaults: JobDefaults,
        model_roots: Sequence[Path],
        source: str,
        sink: Callable[[ParsedJob], None] | None = None,
    ) -> None:
        self.defaults = defaults
        self.model_roots = tuple(model_roots)
        self.source = source
        self.jobs: list[ParsedJob] = []
        self.job_count = 0
        self._emit: Callable[[ParsedJob], None] = sink or self.jobs.append
        self.errors: list[LineError] = []
        self.error_count = 0
        self.lines_read = 0
        self.lines_accepted = 0
        self._models: dict[str, str | InvalidJob] = {}
        # Seeded from the OS once: a secrets call per job took longer than validating the job.
        self._rng = Random(secrets.randbits(256))
        self._base = self._check_defaults(defaults)

    def _check_defaults(self, defaults: JobDefaults) -> dict[str, Any]:
        """The default fields, validated once so a bad --height is one error, not one per line."""
        base: dict[str, Any] = {
            "model": defaults.model, "height": defaults.height, "width": defaults.width,
            "steps": defaults.steps, "priority": defaults.priority,
            "num_images": defaults.num_images, "metadata": dict(defaults.metadata),
            "image_format": defaults.image_format, "image_quality": defaults.image_quality,
        }  # fmt: skip
        seed_base = defaults.seed_base
        try:
            _check_num_images(defaults.num_images)
            if seed_base is not None and (
                type(seed_base) is not int or not 0 <= seed_base <= MAX_SEED
            ):
                raise InvalidJob(
                    f"seed_base {seed_base!r} must be a whole number from 0 to {MAX_SEED}"
                )
            seed = 0 if seed_base is None else seed_base
            probe = {**base, "prompt": "defaults", "seed": seed}
            del probe["num_images"]
            if isinstance(defaults.model, str):
                probe["model"] = self._model(defaults.model)
            validate_job(probe)
        except InvalidJob as exc:
            raise InvalidJob(f"the job defaults are invalid: {exc}") from None
        return base

    def add(self, line_number: int, fields: dict[str, Any]) -> None:
        try:
            self._add(line_number, fields)
        except InvalidJob as exc:
            self.reject(line_number, str(exc))

    def reject(self, line_number: int, reason: str) -> None:
        self.error_count += 1
        if len(self.errors) < KEPT_ERRORS:
            self.errors.append(LineError(line_number, reason))

    def _add(self, line_number: int, fields: dict[str, Any]) -> None:
        if not _FIELD_SET.issuperset(fields):
            unknown = [name for name in fields if name not in _FIELD_SET]
            raise InvalidJob(
                f"unknown field {', '.join(repr(name[:40]) for name in unknown)}; "
                f"the fields are {', '.join(LINE_FIELDS)}"
            )
        data = {**self._base, **fields}
        problems = []
        count = data.pop("num_images")
        try:
            _check_num_images(count)
        except InvalidJob as exc:
            problems.append(str(exc))
            count = 1
        if isinstance(data["model"], str):
            try:
                data["model"] = self._model(data["model"])
            except InvalidJob as exc:
                problems.append(str(exc))
                data["model"] = _REPORTED_MODEL
        if "metadata" not in fields:
            data["metadata"] = dict(self._base["metadata"])  # each job its own, never shared
        elif self._base["metadata"] and isinstance(fields["metadata"], dict):
            data["metadata"] = {**self._base["metadata"], **fields["metadata"]}

        position = self.job_count
        if position + count > MAX_JOBS:
            raise PromptFileError(self.source, f"holds more than {MAX_JOBS:,} jobs; split it")
        seed = data.pop("seed", None)
        seed_base = self.defaults.seed_base
        if seed is None:
            seed = position + seed_base if seed_base is not None else self._random_seed()
            if seed_base is not None and seed + count - 1 > MAX_SEED:
                problems.append(
                    f"seed base {seed_base} + job position {position + count - 1} is past the "
                    f"largest seed {MAX_SEED}; use a smaller seed base"
                )
        elif type(seed) is int and seed <= MAX_SEED < seed + count - 1:
            problems.append(
                f"seed {seed} with num_images {count} runs past the largest seed {MAX_SEED}; "
                f"use a seed of at most {MAX_SEED - count + 1}"
            )
        data["seed"] = seed
        try:
            spec = validate_job(data)
        except InvalidJob as exc:
            problems.append(str(exc))
        if problems:
            raise InvalidJob(" | ".join(problems))

        self._emit(ParsedJob(spec, line_number, position))
        self.lines_accepted += 1
        drawn = "seed" not in fields and seed_base is None
        for k in range(1, count):
            next_seed = self._random_seed() if drawn else seed + k
            self._emit(ParsedJob(replace(spec, seed=next_seed), line_number, position + k))
        self.job_count += count

    def _random_seed(self) -> int:
        # Recorded in the job, so a random image can still be reproduced.
        return self._rng.getrandbits(MAX_SEED.bit_length())  # 0..MAX_SEED

    def _model(self, model: str) -> str:
        """check_model_reference, once per distinct model (it may touch the file system)."""
        checked = self._models.get(model)
        if checked is None:
            try:
                checked = check_model_reference(model, self.model_roots)
            except InvalidJob as exc:
                checked = exc
            if len(self._models) < _MODEL_CACHE_SIZE:
                self._models[model] = checked
        if isinstance(checked, InvalidJob):
            raise InvalidJob(str(checked))  # a fresh error: re-raising one grows its traceback
        return checked

    def result(self, fmt: str, skip_invalid: bool) -> ParseResult:
        count = self.error_count
        if count and not skip_invalid:
            lines = (
                "1 line is invalid; fix it"
                if count == 1
                else f"{count:,} lines are invalid; fix them"
            )
            raise PromptFileError(
                self.source,
                f"{lines}, or pass --skip-invalid to use only the valid lines",
                self.errors,
                count,
            )
        if not self.job_count:
            problem = "has no valid prompts" if count else "contains no prompts"
            raise PromptFileError(self.source, problem, self.errors, count)
        return ParseResult(
            tuple(self.jobs), tuple(self.errors), count, fmt, self.source,
            lines_read=self.lines_read, lines_accepted=self.lines_accepted,
            job_count=self.job_count,
        )  # fmt: skip


def _check_num_images(count: Any) -> None:
    if type(count) is not int:
        raise InvalidJob(f"num_images must be a whole number, not {_kind(count)}; fix its value")
    if not 1 <= count <= MAX_NUM_IMAGES:
        raise InvalidJob(
            f"num_images {count if abs(count) < 10**12 else '(huge)'} is out of range; use 1 to "
            f"{MAX_NUM_IMAGES}, or repeat the line for more"
        )


# ---- reading lines ----------------------------------------------------------------------------


def _physical_lines(stream: IO[bytes], source: str) -> Iterator[tuple[int, bytes | None]]:
    """(line number, raw bytes) per ``\\n``-terminated line; None for a line over MAX_LINE_BYTES."""
    total = 0
    number = 0
    while True:
        raw = stream.readline(MAX_LINE_BYTES + 1)
        if not raw:
            return
        number += 1
        total += len(raw)
        if number == 1:
            if raw.startswith(_UTF16_BOMS):
                raise PromptFileError(source, "is UTF-16 encoded; save it as UTF-8")
            if raw.startswith(_UTF8_BOM):  # Excel and Notepad write one
                raw = raw[len(_UTF8_BOM) :]
        overlong = len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n")
        while overlong:  # skip the rest of the line without keeping it
            rest = stream.readline(MAX_LINE_BYTES + 1)
            total += len(rest)
            if total > MAX_FILE_BYTES or not rest or rest.endswith(b"\n"):
                break
        if total > MAX_FILE_BYTES:
            raise PromptFileError(source, _too_big(total))
        yield number, None if overlong else raw


def _counted(
    lines: Iterator[tuple[int, bytes | None]], collector: _Collector
) -> Iterator[tuple[int, bytes | None]]:
    """The same lines, counting them into ``collector.lines_read`` for the summary."""
    for number, raw in lines:
        collector.lines_read = number
        yield number, raw


def _decode(raw: bytes | None) -> str:
    if raw is None:
        raise InvalidJob(f"line is longer than {MAX_LINE_BYTES:,} bytes; shorten it")
    if b"\x00" in raw:
        raise InvalidJob("line contains a NUL byte; remove it (the database cannot store NUL)")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidJob(
            f"line is not valid UTF-8 (byte 0x{raw[exc.start]:02x} at byte {exc.start + 1}); "
            "save the file as UTF-8"
        ) from None


def _read_txt(lines: Iterator[tuple[int, bytes | None]], collector: _Collector) -> None:
    for number, raw in lines:
        try:
            prompt = _decode(raw).strip()
        except InvalidJob as exc:
            collector.reject(number, str(exc))
            continue
        if prompt:
            collector.add(number, {"prompt": prompt})


def _read_jsonl(lines: Iterator[tuple[int, bytes | None]], collector: _Collector) -> None:
    for number, raw in lines:
        try:
            text = _decode(raw).strip()
            if not text:
                continue
            value = _load_json(text, "line")
        except InvalidJob as exc:
            collector.reject(number, str(exc))
            continue
        if not isinstance(value, dict):
            collector.reject(
                number,
                f"line is {_kind(value)}, not a JSON object; write it like "
                '{"prompt": "a red fox in snow", "seed": 7}',
            )
            continue
        # null means "not given", like a missing key; a null prompt is still an error.
        collector.add(number, {k: v for k, v in value.items() if v is not None or k == "prompt"})


def _read_csv(
    lines: Iterator[tuple[int, bytes | None]], collector: _Collector, source: str
) -> None:
    """One CSV record per physical line (see ``_csv_row``), so a broken quote costs one line."""
    header: list[str] | None = None
    unclosed_at: int | None = None  # the line before, if its quote ran past its end
    for number, raw in lines:
        after_unclosed, unclosed_at = unclosed_at, None
        try:
            text = _decode(raw)
            row = _csv_row(text)
            if after_unclosed is not None and text.count('"') % 2:
                raise InvalidJob(
                    f"line has an unmatched quote right after line {after_unclosed}'s unclosed "
                    f"one, so it looks like the rest of line {after_unclosed}'s field; a CSV "
                    "field cannot span lines: join the two lines"
                )
        except InvalidJob as exc:
            if isinstance(exc, _UnclosedQuote):
                unclosed_at = number
            if header is None:
                raise PromptFileError(
                    source, "has a broken header row", [LineError(number, str(exc))]
                ) from None
            collector.reject(number, str(exc))
            continue
        if not any(cell.strip() for cell in row):  # blank lines and rows of empty cells
            continue
        if header is None:
            header = _csv_header(row, number, source)
            continue
        try:
            fields = _csv_fields(header, row)
        except InvalidJob as exc:
            collector.reject(number, str(exc))
            continue
        collector.add(number, fields)


class _UnclosedQuote(InvalidJob):
    """A quoted CSV field is still open where its line ends."""


def _csv_row(text: str) -> list[str]:
    """The cells of one physical line.

    The rule: a CSV record is one line, so a quoted field cannot hold a line break (write
    prompts with line breaks as JSONL, where ``\\n`` escapes them; CLIP reads a line break as a
    space anyway). Python's csv module would let a field whose closing quote is missing swallow
    every following line up to its 128 KiB field limit, silently taking thousands of valid lines
    with it; here that quote is an error on its own line and the next line is read afresh.
    """
    try:
        return next(csv.reader((text,), strict=True), [])
    except csv.Error as exc:
        # At the end of the only line it was given, a strict reader inside a quoted field says
        # "unexpected end of data" (tests/producer pins this).
        if "unexpected end of data" in str(exc):
            raise _UnclosedQuote(
                "a quoted field opens on this line and is not closed before the line ends; "
                'close it with " (a quote inside a quoted field is written twice: ""); a CSV '
                "field cannot span lines"
            ) from None
        raise InvalidJob(f"CSV record cannot be read ({exc}); check its quotes") from None


def _csv_header(row: list[str], line_number: int, source: str) -> list[str]:
    names = [cell.strip().lower() for cell in row]
    problems = []
    for index, name in enumerate(names, start=1):
        if not name:
            problems.append(f"column {index} has no name; name it or remove the extra comma")
        elif name not in _FIELD_SET:
            problems.append(f"unknown column {name[:40]!r}")
        elif names.index(name) != index - 1:
            problems.append(f"column {name!r} appears twice")
    if "prompt" not in names:
        problems.append("there is no prompt column")
    if problems:
        reason = f"{'; '.join(problems)}; the columns are {', '.join(LINE_FIELDS)}"
        raise PromptFileError(source, "has a bad header row", [LineError(line_number, reason)])
    return names


def _csv_fields(header: list[str], row: list[str]) -> dict[str, Any]:
    if len(row) != len(header):
        raise InvalidJob(
            f"row has {len(row)} fields but the header has {len(header)} columns; "
            "quote fields that contain commas"
        )
    fields: dict[str, Any] = {}
    for name, cell in zip(header, row, strict=True):
        if name == "prompt":
            fields[name] = cell  # always given, so an empty one is reported, not defaulted
            continue
        cell = cell.strip()
        if not cell:
            continue
        if name in _CSV_INT_FIELDS or (name == "priority" and cell.lstrip("+-").isdigit()):
            fields[name] = _csv_int(name, cell)
        elif name == "metadata":
            fields[name] = _load_json(cell, "metadata")
        else:
            fields[name] = cell
    return fields


def _csv_int(name: str, cell: str) -> int:
    # isdecimal alone would admit Arabic-Indic and other digits; the length cap keeps int() cheap.
    if cell.isascii() and cell.isdecimal() and len(cell) <= 30:
        return int(cell)
    digits = cell[1:] if cell[:1] in ("+", "-") else cell
    if not (digits.isascii() and digits.isdecimal()):
        raise InvalidJob(f"{name} must be a whole number, not {cell[:40]!r}; fix its value")
    if len(digits) > 30:
        raise InvalidJob(f"{name} has {len(digits)} digits; that is out of range")
    return int(cell)


def _load_json(text: str, what: str) -> Any:
    try:
        return _JSON.decode(text)
    except json.JSONDecodeError as exc:
        raise InvalidJob(
            f"{what} is not valid JSON ({exc.msg} at column {exc.colno}); "
            + ("write one JSON object per line" if what == "line" else "write a JSON object")
        ) from None
    except ValueError as exc:  # NaN/Infinity, or a number of more than 4,300 digits
        reason = "a number has too many digits" if "digits" in str(exc) else str(exc)
        raise InvalidJob(f"{what} is not valid JSON ({reason})") from None
    except RecursionError:
        raise InvalidJob(f"{what} is nested too deeply; flatten it") from None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


# One decoder for all lines: json.loads with an option builds a new one per call.
_JSON = json.JSONDecoder(parse_constant=_reject_constant)


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    return "an object"
