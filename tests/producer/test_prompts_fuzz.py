"""Property tests: no input crashes the parser, and valid jobs survive writing and reading back."""

from __future__ import annotations

import csv
import io
import json
import os

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from core.errors import InvalidJob
from core.jobspec import MAX_SEED, MAX_SIZE, MIN_SIZE, SIZE_MULTIPLE, JobSpec
from producer.prompts import (
    LINE_FIELDS,
    JobDefaults,
    ParseResult,
    PromptFileError,
    parse_prompts,
)

DEFAULTS = JobDefaults(model="senmaonk/loopfree-sd1.5")
FORMATS = st.sampled_from(["txt", "jsonl", "csv"])
FUZZ = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ROUND_TRIP = settings(max_examples=40, deadline=None)

# Bytes that steer the parsers into their interesting corners: quotes, separators, braces,
# CR/LF, NUL, a BOM, broken UTF-8, numbers and field names.
TOKENS = st.sampled_from(
    [b'"', b",", b"{", b"}", b"[", b"]", b":", b"\n", b"\r", b"\r\n", b"\x00", b"\xef\xbb\xbf",
     b"\xff", b"\xc3", b"\xed\xa0\x80", b"1", b"-7", b"512", b"1e999", b"NaN", b"null", b"true",
     b" ", b"\\", b"\\u0000", b"\\ud800"]
    + [f'"{name}"'.encode() for name in LINE_FIELDS]
    + [name.encode() for name in LINE_FIELDS]
)  # fmt: skip


def containers(inner: st.SearchStrategy) -> st.SearchStrategy:
    return st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)


JSON_SCALARS = st.none() | st.booleans() | st.integers() | st.text(max_size=8)
JSON_VALUES = st.recursive(JSON_SCALARS | st.floats(), containers, max_leaves=8)
# Values that are valid for some field, so fuzzed lines often get past the type checks.
FIELD_VALUES = (
    st.sampled_from([0, 1, 4, 64, 512, 520, 2048, 65, -1, 2**63, "a fox", "high", "a/b", "./m", {}])
    | JSON_VALUES
)


def check_outcome(data: bytes | str, fmt: str, skip_invalid: bool) -> None:
    """Parse; the only exception allowed is PromptFileError, and any result must be coherent."""
    try:
        result = parse_prompts(data, format=fmt, defaults=DEFAULTS, skip_invalid=skip_invalid)
    except PromptFileError as error:
        assert str(error)  # rendering the message must not fail either
        return
    assert isinstance(result, ParseResult) and result.jobs
    assert [job.position for job in result.jobs] == list(range(len(result.jobs)))
    lines = max(1, (data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data)
                .count(b"\n") + 1)  # fmt: skip
    for job in result.jobs:
        assert isinstance(job.spec, JobSpec) and 1 <= job.line_number <= lines
    assert skip_invalid or result.skipped_count == 0
    # Every line is accounted for: it made jobs, was skipped, or held none (blank, header).
    assert result.lines_accepted == len({job.line_number for job in result.jobs})
    assert result.lines_accepted + result.skipped_count <= result.lines_read <= lines
    assert not set(result.skipped_line_numbers) & {job.line_number for job in result.jobs}


@FUZZ
@given(data=st.binary(max_size=400), fmt=FORMATS, skip_invalid=st.booleans())
def test_arbitrary_bytes_raise_nothing_but_prompt_file_error(data, fmt, skip_invalid) -> None:
    check_outcome(data, fmt, skip_invalid)


@FUZZ
@given(pieces=st.lists(TOKENS, max_size=60), fmt=FORMATS, skip_invalid=st.booleans())
def test_near_miss_files_raise_nothing_but_prompt_file_error(pieces, fmt, skip_invalid) -> None:
    check_outcome(b"".join(pieces), fmt, skip_invalid)


@FUZZ
@given(text=st.text(max_size=300), fmt=FORMATS, skip_invalid=st.booleans())
def test_arbitrary_text_raises_nothing_but_prompt_file_error(text, fmt, skip_invalid) -> None:
    check_outcome(text, fmt, skip_invalid)


@settings(FUZZ, max_examples=60)
@given(
    lines=st.lists(
        st.dictionaries(st.sampled_from([*LINE_FIELDS, "extra"]), FIELD_VALUES, max_size=6)
        | JSON_VALUES,
        max_size=8,
    ),
    skip_invalid=st.booleans(),
)
def test_json_lines_of_any_shape_raise_nothing_but_prompt_file_error(lines, skip_invalid) -> None:
    check_outcome("".join(json.dumps(line) + "\n" for line in lines), "jsonl", skip_invalid)


@FUZZ
@given(
    header=st.lists(st.sampled_from([*LINE_FIELDS, "extra", ""]), min_size=1, max_size=5),
    rows=st.lists(st.lists(st.text(max_size=12), max_size=6), max_size=6),
    skip_invalid=st.booleans(),
)
def test_csv_files_of_any_shape_raise_nothing_but_prompt_file_error(header, rows, skip_invalid):
    out = io.StringIO()
    csv.writer(out).writerows([header, *rows])
    check_outcome(out.getvalue(), "csv", skip_invalid)


# ---- round trips --------------------------------------------------------------------------------

SIZES = st.none() | st.integers(MIN_SIZE // SIZE_MULTIPLE, MAX_SIZE // SIZE_MULTIPLE).map(
    lambda n: n * SIZE_MULTIPLE
)
HUB_IDS = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,10}/[A-Za-z0-9_.-]{1,10}", fullmatch=True)
# Finite floats only: JSON has no NaN or infinity, and the parser refuses them.
METADATA = st.dictionaries(
    st.text(max_size=8),
    st.recursive(JSON_SCALARS | st.floats(allow_nan=False, allow_infinity=False), containers,
                 max_leaves=6),
    max_size=4,
)  # fmt: skip


@st.composite
def job_fields(draw, one_line: bool = False) -> dict:
    """Fields of a valid job; ``one_line`` keeps line breaks out of the prompt (for .txt)."""
    prompt = draw(st.text(min_size=1, max_size=60))
    if one_line:
        prompt = prompt.replace("\n", " ").replace("\r", " ")
    fields = {
        "prompt": prompt,
        "seed": draw(st.integers(0, MAX_SEED)),
        "model": draw(HUB_IDS),
        "height": draw(SIZES),
        "width": draw(SIZES),
        "steps": draw(st.integers(1, 50)),
        "priority": draw(st.sampled_from(["high", "normal", "low"]) | st.integers(0, 9)),
        "metadata": draw(METADATA),
    }
    try:
        JobSpec(**fields)
    except InvalidJob:
        assume(False)  # e.g. a prompt of only whitespace, or "owner/..": not a valid job
    assume(not os.path.exists(fields["model"]))  # an existing path would be read as a folder
    return fields


@ROUND_TRIP
@given(jobs=st.lists(job_fields(), min_size=1, max_size=5))
def test_valid_jobs_round_trip_through_jsonl(jobs) -> None:
    text = "".join(json.dumps(fields) + "\n" for fields in jobs)

    result = parse_prompts(text, format="jsonl", defaults=DEFAULTS)

    assert [job.spec for job in result.jobs] == [JobSpec(**fields) for fields in jobs]
    assert [job.line_number for job in result.jobs] == list(range(1, len(jobs) + 1))


@ROUND_TRIP
@given(jobs=st.lists(job_fields(one_line=True), min_size=1, max_size=5))
def test_valid_jobs_round_trip_through_csv(jobs) -> None:
    """One record per line: a CSV field cannot hold a line break (JSONL's prompts can)."""
    columns = ["prompt", "seed", "model", "height", "width", "steps", "priority", "metadata"]
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(columns)
    for fields in jobs:
        spec = JobSpec(**fields)
        row = {**spec.to_dict(), "metadata": json.dumps(spec.metadata) if spec.metadata else ""}
        writer.writerow(["" if row[name] is None else row[name] for name in columns])

    result = parse_prompts(out.getvalue(), format="csv", defaults=DEFAULTS)

    assert [job.spec for job in result.jobs] == [JobSpec(**fields) for fields in jobs]


@ROUND_TRIP
@given(
    jobs=st.lists(job_fields(one_line=True), min_size=1, max_size=5),
    seed_base=st.integers(0, 10**6),
)
def test_valid_prompts_round_trip_through_txt(jobs, seed_base) -> None:
    prompts = [JobSpec(**fields).prompt for fields in jobs]
    defaults = JobDefaults(model="owner/name", seed_base=seed_base)

    result = parse_prompts("\n".join(prompts), format="txt", defaults=defaults)

    assert [job.spec.prompt for job in result.jobs] == prompts
    assert [job.spec.seed for job in result.jobs] == [seed_base + i for i in range(len(prompts))]
