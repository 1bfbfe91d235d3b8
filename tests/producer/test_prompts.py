"""Prompt files -> jobs: every format, every kind of bad line with its number, seeds, limits."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core.errors import InvalidJob, UserError
from core.jobspec import (
    MAX_NUM_IMAGES,
    MAX_PROMPT_CHARS,
    MAX_SEED,
    JobSpec,
    check_model_reference,
    explain_validation_error,
    validate_job,
)
from producer import prompts
from producer.prompts import (
    JobDefaults,
    LineError,
    ParseResult,
    PromptFileError,
    parse_prompt_file,
    parse_prompts,
)

REPO = Path(__file__).resolve().parents[2]
MODEL = "senmaonk/loopfree-sd1.5"
DEFAULTS = JobDefaults(model=MODEL, seed_base=1000)


def parse(data: str | bytes, fmt: str = "jsonl", **options) -> ParseResult:
    defaults = options.pop("defaults", DEFAULTS)
    return parse_prompts(data, format=fmt, defaults=defaults, **options)


def bad_lines(data: str | bytes, fmt: str = "jsonl", **options) -> dict[int, str]:
    """The line errors a parse raises, by line number."""
    with pytest.raises(PromptFileError) as info:
        parse(data, fmt, **options)
    return {error.line_number: error.reason for error in info.value.errors}


def jsonl(*rows: dict) -> str:
    return "".join(json.dumps(row) + "\n" for row in rows)


# ---- formats ------------------------------------------------------------------------------------


def test_txt_gives_one_job_per_non_blank_line_numbered_as_in_an_editor() -> None:
    result = parse("a red fox\n\n   \n  an old lighthouse \r\nramen\n", "txt")

    assert [job.spec.prompt for job in result.jobs] == ["a red fox", "an old lighthouse", "ramen"]
    assert [job.line_number for job in result.jobs] == [1, 4, 5]
    assert [job.position for job in result.jobs] == [0, 1, 2]
    assert all(job.spec.model == MODEL and job.spec.steps == 4 for job in result.jobs)
    assert result.format == "txt" and result.skipped == () and result.skipped_count == 0


def test_jsonl_line_fields_override_the_defaults() -> None:
    line = {
        "prompt": "a fox", "seed": 7, "height": 512, "width": 768, "steps": 2,
        "model": "other/model", "priority": "high", "metadata": {"ticket": 12},
    }  # fmt: skip
    (job,) = parse(jsonl(line)).jobs

    assert job.spec == JobSpec(
        prompt="a fox", seed=7, model="other/model", height=512, width=768, steps=2,
        priority=9, metadata={"ticket": 12},
    )  # fmt: skip


def test_jsonl_null_and_missing_fields_take_the_defaults() -> None:
    defaults = JobDefaults(model=MODEL, seed_base=5, height=640, width=384, steps=3, priority="low")
    first, second = parse(
        '{"prompt": "a", "height": null, "seed": null}\n{"prompt": "b"}\n', defaults=defaults
    ).jobs

    for job in (first, second):
        assert (job.spec.height, job.spec.width, job.spec.steps) == (640, 384, 3)
        assert job.spec.priority == 0
    assert (first.spec.seed, second.spec.seed) == (5, 6)


def test_line_metadata_is_merged_over_the_default_metadata() -> None:
    defaults = JobDefaults(model=MODEL, metadata={"campaign": "autumn", "team": "a"})
    first, second = parse(jsonl({"prompt": "x", "metadata": {"team": "b"}}, {"prompt": "y"}),
                          defaults=defaults).jobs  # fmt: skip

    assert first.spec.metadata == {"campaign": "autumn", "team": "b"}
    assert second.spec.metadata == {"campaign": "autumn", "team": "a"}
    assert second.spec.metadata is not defaults.metadata


def test_csv_columns_become_fields_and_the_metadata_column_holds_json() -> None:
    text = (
        "Prompt , seed,height,width,priority,metadata\n"
        '"a fox, asleep",3,512,,high,"{""k"": [1, 2]}"\n'
        "a lighthouse,,,,2,\n"
    )
    first, second = parse(text, "csv").jobs

    assert first.spec == JobSpec(prompt="a fox, asleep", seed=3, model=MODEL, height=512,
                                 priority=9, metadata={"k": [1, 2]})  # fmt: skip
    assert (first.line_number, second.line_number) == (2, 3)
    assert second.spec.seed == 1001 and second.spec.priority == 2 and second.spec.height is None


def test_a_csv_field_cannot_span_lines_and_each_line_is_judged_alone() -> None:
    text = 'prompt,seed\n"a fox\nin snow",1\n\n,\nramen,x\nramen,2\n'

    errors = bad_lines(text, "csv")

    assert set(errors) == {2, 3, 6}
    assert errors[2].startswith("a quoted field opens on this line and is not closed before")
    assert "a CSV field cannot span lines" in errors[2] and '""' in errors[2]
    assert "looks like the rest of line 2's field" in errors[3]  # its odd quote closes line 2's
    result = parse(text, "csv", skip_invalid=True)
    assert [(job.line_number, job.spec.prompt) for job in result.jobs] == [(7, "ramen")]
    assert result.skipped_line_numbers == (2, 3, 6)


def test_an_unclosed_quote_costs_its_own_line_and_no_other() -> None:
    """The audit's file: one broken quote among 9,998 prompts took 5,794 valid lines with it."""
    rows = [f"prompt number {i} of a red fox,{i}" for i in range(9_998)]
    rows[2] = '"a prompt whose quote never closes,2'
    text = "prompt,seed\n" + "\n".join(rows) + "\n"

    result = parse(text, "csv", skip_invalid=True)

    assert len(result.jobs) == 9_997 and result.skipped_line_numbers == (4,)
    assert [job.line_number for job in result.jobs] == [n for n in range(2, 10_000) if n != 4]
    assert (result.lines_read, result.lines_accepted, result.skipped_count) == (9_999, 9_997, 1)
    assert result.summary() == (
        "<input>: 9,999 line(s) read, 9,997 accepted (9,997 job(s)), 1 skipped (line 4)"
    )


def test_a_quoted_field_may_hold_commas_and_doubled_quotes_on_its_line() -> None:
    text = 'prompt,seed\n"a fox, ""asleep"" in snow",1\n"ramen",2\n'

    result = parse(text, "csv")

    assert [job.spec.prompt for job in result.jobs] == ['a fox, "asleep" in snow', "ramen"]


def test_every_line_read_is_accounted_for_in_the_summary() -> None:
    text = 'prompt,num_images\n\na fox,3\n,\nramen,0\nsoup,\n'

    result = parse(text, "csv", skip_invalid=True)

    assert (result.lines_read, result.lines_accepted, len(result.jobs)) == (6, 2, 4)
    assert result.skipped_line_numbers == (5,) and result.skipped_count == 1
    assert result.summary().endswith("6 line(s) read, 2 accepted (4 job(s)), 1 skipped (line 5)")


def test_a_utf8_byte_order_mark_is_ignored() -> None:
    result = parse(b"\xef\xbb\xbfprompt,seed\na fox,1\n", "csv")

    assert [job.spec.prompt for job in result.jobs] == ["a fox"]


def test_a_utf16_file_is_refused_with_a_hint_to_save_as_utf8() -> None:
    with pytest.raises(PromptFileError, match="UTF-16.*save it as UTF-8"):
        parse("a fox\n".encode("utf-16"), "txt")


@pytest.mark.parametrize("suffix", ["txt", "jsonl", "csv", "TXT"])
def test_the_format_comes_from_the_file_extension(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"prompts.{suffix}"
    content = {"jsonl": '{"prompt": "a fox"}\n', "csv": "prompt\na fox\n"}
    path.write_text(content.get(suffix, "a fox\n"))

    result = parse_prompt_file(path, defaults=DEFAULTS)

    assert [job.spec.prompt for job in result.jobs] == ["a fox"]
    assert result.format == suffix.lower() and result.source == str(path)


def test_an_unknown_extension_is_refused_naming_the_supported_ones(tmp_path: Path) -> None:
    path = tmp_path / "prompts.md"
    path.write_text("a fox\n")

    with pytest.raises(PromptFileError, match=r"'\.md'.*\.txt.*\.jsonl.*\.csv"):
        parse_prompt_file(path, defaults=DEFAULTS)
    assert parse_prompt_file(path, defaults=DEFAULTS, format="txt").jobs[0].spec.prompt == "a fox"


def test_a_missing_file_is_a_prompt_file_error(tmp_path: Path) -> None:
    with pytest.raises(PromptFileError, match="cannot be read"):
        parse_prompt_file(tmp_path / "nope.txt", defaults=DEFAULTS)


@pytest.mark.parametrize("name", ["prompts.txt", "prompts.jsonl", "prompts.csv"])
def test_the_example_files_parse(name: str) -> None:
    result = parse_prompt_file(REPO / "examples" / name, defaults=DEFAULTS)

    assert len(result.jobs) >= 5
    assert [job.position for job in result.jobs] == list(range(len(result.jobs)))


# ---- bad lines ----------------------------------------------------------------------------------

BAD_JSONL_LINES = {
    "empty prompt": ('{"prompt": "   "}', "prompt is empty"),
    "missing prompt": ('{"seed": 1}', "prompt is missing"),
    "height not a multiple of 8": (
        '{"prompt": "x", "height": 500}',
        "height 500 is not a multiple of 8; use 496 or 504",
    ),
    "width too small": ('{"prompt": "x", "width": 32}', "width 32 is outside 64..2048 px"),
    "height too large": ('{"prompt": "x", "height": 4096}', "height 4096 is outside 64..2048 px"),
    "negative seed": ('{"prompt": "x", "seed": -1}', "seed -1 is out of range"),
    "seed past 2**63 - 1": (f'{{"prompt": "x", "seed": {2**63}}}', "is out of range"),
    "steps zero": ('{"prompt": "x", "steps": 0}', "steps 0 is out of range; use 1 to 50"),
    "unknown field": ('{"prompt": "x", "colour": "red"}', "unknown field 'colour'"),
    "broken json": ('{"prompt": "x",', "not valid JSON"),
    "json list": ('["a fox"]', "line is a list, not a JSON object"),
    "json string": ('"a fox"', "line is a string, not a JSON object"),
    "seed as text": ('{"prompt": "x", "seed": "42"}', "seed must be a whole number"),
    "seed as true": ('{"prompt": "x", "seed": true}', "seed must be a whole number, not true"),
    "height as float": ('{"prompt": "x", "height": 512.0}', "height must be a whole number"),
    "prompt as number": ('{"prompt": 5}', "prompt must be text"),
    "too many images": ('{"prompt": "x", "num_images": 65}', "num_images 65 is out of range"),
    "zero images": ('{"prompt": "x", "num_images": 0}', "num_images 0 is out of range"),
    "unknown priority": ('{"prompt": "x", "priority": "urgent"}', "priority 'urgent' is unknown"),
    "metadata not an object": (
        '{"prompt": "x", "metadata": [1]}',
        "metadata must be a JSON object",
    ),
    "metadata too big": (
        json.dumps({"prompt": "x", "metadata": {"k": "v" * 20_000}}),
        "the limit is 16,384",
    ),
    "NaN": ('{"prompt": "x", "metadata": {"k": NaN}}', "NaN is not a JSON number"),
    "escaped NUL in prompt": ('{"prompt": "a\\u0000b"}', "NUL"),
    "escaped NUL in metadata": ('{"prompt": "x", "metadata": {"k": "\\u0000"}}', "NUL"),
    "lone surrogate": ('{"prompt": "a \\ud800"}', "lone surrogate"),
    "deep nesting": (
        '{"prompt": "x", "metadata": ' + "[" * 100_000 + "]" * 100_000 + "}",
        "nested too deeply",
    ),  # fmt: skip
    "huge number": ('{"prompt": "x", "seed": 1' + "0" * 5000 + "}", "too many digits"),
    "bad model": ('{"prompt": "x", "model": "not a model"}', "neither a hub id"),
    "model with newline": ('{"prompt": "x", "model": "a/b\\n"}', "control character"),
}


@pytest.mark.parametrize("line, reason", BAD_JSONL_LINES.values(), ids=BAD_JSONL_LINES.keys())
def test_a_bad_jsonl_line_is_reported_with_its_line_number(line: str, reason: str) -> None:
    errors = bad_lines(f'{{"prompt": "fine"}}\n\n{line}\n{{"prompt": "also fine"}}\n')

    assert list(errors) == [3]
    assert reason in errors[3]
    assert "https://" not in errors[3]


def test_a_1mb_prompt_is_rejected_cleanly() -> None:
    prompt = "a" * 1_000_000

    errors = bad_lines(jsonl({"prompt": "ok"}, {"prompt": prompt}))
    assert errors == {2: f"prompt is 1,000,000 characters long; the limit is {MAX_PROMPT_CHARS:,} "
                         "(CLIP reads only the first 77 tokens anyway), so shorten it"}  # fmt: skip
    assert "characters long" in bad_lines(prompt + "\nok\n", "txt")[1]


def test_broken_utf8_is_reported_at_its_line_and_the_other_lines_still_parse() -> None:
    data = b"a fox\nbad \xff\xfe bytes\nramen\n"

    assert bad_lines(data, "txt") == {
        2: "line is not valid UTF-8 (byte 0xff at byte 5); save the file as UTF-8"
    }
    result = parse(data, "txt", skip_invalid=True)
    assert [job.line_number for job in result.jobs] == [1, 3]


@pytest.mark.parametrize("fmt, body", [("txt", b"a\x00b"), ("jsonl", b'{"prompt": "a\x00b"}'),
                                       ("csv", b"prompt\na\x00b")])  # fmt: skip
def test_a_nul_byte_is_reported_at_its_line(fmt: str, body: bytes) -> None:
    line = body.count(b"\n") + 1
    assert "NUL byte" in bad_lines(body + b"\n", fmt)[line]


def test_a_line_over_the_length_limit_is_skipped_without_losing_the_next(monkeypatch) -> None:
    monkeypatch.setattr(prompts, "MAX_LINE_BYTES", 100)

    result = parse("a fox\n" + "x" * 350 + "\nramen\n", "txt", skip_invalid=True)

    assert [(job.line_number, job.spec.prompt) for job in result.jobs] == [
        (1, "a fox"),
        (3, "ramen"),
    ]
    assert result.skipped == (LineError(2, "line is longer than 100 bytes; shorten it"),)


BAD_CSV_HEADERS = {
    "unknown column": ("prompt,colour\n", "unknown column 'colour'"),
    "no prompt column": ("seed,height\n", "there is no prompt column"),
    "duplicate column": ("prompt,seed,seed\n", "column 'seed' appears twice"),
    "unnamed column": ("prompt,seed,\n", "column 3 has no name"),
}


@pytest.mark.parametrize("header, reason", BAD_CSV_HEADERS.values(), ids=BAD_CSV_HEADERS.keys())
def test_a_bad_csv_header_fails_the_file_even_with_skip_invalid(header: str, reason: str) -> None:
    with pytest.raises(PromptFileError) as info:
        parse(header + "a fox,1,2\n", "csv", skip_invalid=True)

    assert info.value.errors[0].line_number == 1
    assert reason in info.value.errors[0].reason
    assert "the columns are prompt, seed" in info.value.errors[0].reason


BAD_CSV_ROWS = {
    "too many fields": ("a fox,1,2", "row has 3 fields but the header has 2 columns"),
    "seed not a number": ("a fox,ten", "seed must be a whole number, not 'ten'"),
    "seed with unicode digits": ("a fox,\u0663", "seed must be a whole number"),
    "unterminated quote": ('"a fox,1', "is not closed before the line ends"),
    "text after closing quote": ('"a fox"x,1', "CSV record cannot be read"),
    "empty prompt": (",1", "prompt is empty"),
}


@pytest.mark.parametrize("row, reason", BAD_CSV_ROWS.values(), ids=BAD_CSV_ROWS.keys())
def test_a_bad_csv_row_is_reported_with_its_line_number(row: str, reason: str) -> None:
    errors = bad_lines(f"prompt,seed\nramen,1\n{row}\n", "csv")

    assert list(errors) == [3]
    assert reason in errors[3]


def test_a_bad_csv_metadata_cell_is_reported() -> None:
    errors = bad_lines('prompt,metadata\na fox,"{""k"": }"\nramen,[1]\n', "csv")

    assert "metadata is not valid JSON" in errors[2]
    assert "metadata must be a JSON object, not a list" in errors[3]


def test_one_error_message_names_every_problem_of_a_line() -> None:
    (reason,) = bad_lines('{"prompt": "", "height": 500, "steps": 99}\n').values()

    assert reason == (
        "prompt is empty; write what the image should show | "
        "height 500 is not a multiple of 8; use 496 or 504 | "
        "steps 99 is out of range; use 1 to 50 (Loopfree models are trained for 4)"
    )


def test_the_error_lists_the_first_20_bad_lines_and_counts_the_rest() -> None:
    with pytest.raises(PromptFileError) as info:
        parse("".join('{"prompt": ""}\n' for _ in range(25)) + '{"prompt": "ok"}\n')

    error = info.value
    assert isinstance(error, UserError)
    assert error.error_count == 25 and len(error.errors) == 25
    text = str(error)
    assert text.startswith("<input>: 25 lines are invalid; fix them, or pass --skip-invalid")
    assert "line 20: prompt is empty" in text and "line 21:" not in text
    assert text.endswith("... and 5 more")


def test_only_the_first_errors_are_kept_but_all_are_counted(monkeypatch) -> None:
    monkeypatch.setattr(prompts, "KEPT_ERRORS", 3)

    result = parse("{}\n" * 10 + '{"prompt": "ok"}\n', skip_invalid=True)

    assert len(result.skipped) == 3 and result.skipped_count == 10
    assert len(result.jobs) == 1


@pytest.mark.parametrize("fmt, data", [("txt", ""), ("txt", "\n  \n\n"), ("jsonl", "\n"),
                                       ("csv", "prompt,seed\n"), ("csv", "")])  # fmt: skip
def test_a_file_without_prompts_is_an_error(fmt: str, data: str) -> None:
    with pytest.raises(PromptFileError, match="contains no prompts"):
        parse(data, fmt)


def test_a_file_over_the_size_limit_is_refused_before_parsing(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(prompts, "MAX_FILE_BYTES", 1000)
    path = tmp_path / "big.txt"
    path.write_text("a fox\n" * 200)

    with pytest.raises(PromptFileError, match="is 1,200 bytes; the limit is 1,000"):
        parse_prompt_file(path, defaults=DEFAULTS)
    with pytest.raises(PromptFileError, match="the limit is 1,000"):  # a stream has no size
        parse(path.read_bytes(), "txt")


def test_a_file_with_too_many_jobs_is_refused(monkeypatch) -> None:
    monkeypatch.setattr(prompts, "MAX_JOBS", 10)

    with pytest.raises(PromptFileError, match="more than 10 jobs"):
        parse(jsonl({"prompt": "a", "num_images": 6}, {"prompt": "b", "num_images": 6}))


# ---- seeds and num_images -----------------------------------------------------------------------


def test_jobs_without_a_seed_get_seed_base_plus_their_position() -> None:
    result = parse(jsonl({"prompt": "a", "num_images": 2}, {"prompt": "b", "seed": 5},
                         {"prompt": "c"}))  # fmt: skip

    assert [job.spec.seed for job in result.jobs] == [1000, 1001, 5, 1003]


def test_a_line_seed_with_num_images_gives_consecutive_seeds() -> None:
    result = parse(jsonl({"prompt": "fox", "seed": 41, "num_images": 3}))

    assert [job.spec.seed for job in result.jobs] == [41, 42, 43]
    assert [job.position for job in result.jobs] == [0, 1, 2]
    assert {job.line_number for job in result.jobs} == {1}
    assert {job.spec.prompt for job in result.jobs} == {"fox"}


def test_without_seed_base_random_seeds_are_drawn_and_recorded() -> None:
    defaults = JobDefaults(model=MODEL, num_images=4)

    result = parse("a fox\nramen\n", "txt", defaults=defaults)

    seeds = [job.spec.seed for job in result.jobs]
    assert len(seeds) == 8 and len(set(seeds)) == 8
    assert all(0 <= seed <= MAX_SEED for seed in seeds)
    again = [job.spec.seed for job in parse("a fox\nramen\n", "txt", defaults=defaults).jobs]
    assert again != seeds


def test_default_num_images_expands_every_line() -> None:
    result = parse("a\nb\n", "txt", defaults=JobDefaults(model=MODEL, seed_base=0, num_images=2))

    assert [(job.line_number, job.position, job.spec.seed) for job in result.jobs] == [
        (1, 0, 0), (1, 1, 1), (2, 2, 2), (2, 3, 3),
    ]  # fmt: skip


def test_a_seed_that_would_run_past_the_largest_seed_is_an_error() -> None:
    errors = bad_lines(jsonl({"prompt": "a", "seed": MAX_SEED - 1, "num_images": 3}))

    assert f"use a seed of at most {MAX_SEED - 2}" in errors[1]
    assert parse(jsonl({"prompt": "a", "seed": MAX_SEED})).jobs[0].spec.seed == MAX_SEED


def test_a_seed_base_that_would_run_past_the_largest_seed_is_an_error() -> None:
    defaults = JobDefaults(model=MODEL, seed_base=MAX_SEED)

    assert "use a smaller seed base" in bad_lines("a\nb\n", "txt", defaults=defaults)[2]


# ---- skip_invalid -------------------------------------------------------------------------------


def test_skip_invalid_returns_the_good_jobs_and_the_skipped_lines() -> None:
    result = parse('{"prompt": "a"}\n{"prompt": "b", "height": 7}\n{oops\n{"prompt": "c"}\n',
                   skip_invalid=True)  # fmt: skip

    assert [(job.line_number, job.position, job.spec.prompt) for job in result.jobs] == [
        (1, 0, "a"), (4, 1, "c"),
    ]  # fmt: skip
    assert [error.line_number for error in result.skipped] == [2, 3]
    assert result.skipped_count == 2


def test_skip_invalid_still_fails_when_no_line_is_valid() -> None:
    with pytest.raises(PromptFileError, match="has no valid prompts") as info:
        parse("{}\n[]\n", skip_invalid=True)
    assert [error.line_number for error in info.value.errors] == [1, 2]


# ---- models and defaults ------------------------------------------------------------------------


def test_a_model_path_outside_the_allowed_roots_is_a_line_error(tmp_path: Path) -> None:
    root, elsewhere = tmp_path / "models", tmp_path / "elsewhere"
    (root / "good").mkdir(parents=True)
    elsewhere.mkdir()
    text = jsonl({"prompt": "a", "model": str(root / "good")},
                 {"prompt": "b", "model": str(elsewhere)})  # fmt: skip

    errors = bad_lines(text, model_roots=[root])

    assert list(errors) == [2]
    assert "outside the allowed model roots" in errors[2] and "LOOPFREE_MODEL_ROOTS" in errors[2]
    result = parse(text, model_roots=[root], skip_invalid=True)
    assert result.jobs[0].spec.model == str(root / "good")


def test_a_symlink_inside_the_roots_pointing_outside_is_refused(tmp_path: Path) -> None:
    root, outside = tmp_path / "models", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (root / "sneaky").symlink_to(outside)

    with pytest.raises(InvalidJob, match=r"resolves to .*outside"):
        check_model_reference(str(root / "sneaky"), [root])
    assert check_model_reference(str(root / "sneaky"), []) == str(outside)


def test_a_relative_model_path_is_recorded_as_an_absolute_one(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "models" / "tiny").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)

    assert check_model_reference("./models/tiny", [tmp_path]) == str(tmp_path / "models/tiny")
    assert check_model_reference("models/tiny", [tmp_path]) == str(tmp_path / "models/tiny")
    assert check_model_reference("owner/name", [tmp_path]) == "owner/name"


@pytest.mark.parametrize("model", ["noslash", "a/b/c", "owner/..", "-x/y", "ö/x", "a b/c", ""])
def test_a_model_that_is_neither_hub_id_nor_path_is_refused(model: str) -> None:
    with pytest.raises(InvalidJob, match="model"):
        check_model_reference(model, [])


def test_invalid_defaults_fail_once_not_on_every_line() -> None:
    with pytest.raises(
        InvalidJob, match="the job defaults are invalid: height 500 is not a multiple"
    ):
        parse("a\nb\n", "txt", defaults=JobDefaults(model=MODEL, height=500))
    with pytest.raises(InvalidJob, match="seed_base"):
        parse("a\n", "txt", defaults=JobDefaults(model=MODEL, seed_base=-1))
    with pytest.raises(InvalidJob, match="num_images 0"):
        parse("a\n", "txt", defaults=JobDefaults(model=MODEL, num_images=0))


# ---- JobSpec ------------------------------------------------------------------------------------


def test_job_spec_accepts_priority_names_and_stores_numbers() -> None:
    specs = [JobSpec(prompt="x", seed=1, model=MODEL, priority=name)
             for name in ("high", "Normal", "low", 3)]  # fmt: skip

    assert [spec.priority for spec in specs] == [9, 5, 0, 3]


def test_job_spec_round_trips_through_its_dict() -> None:
    spec = JobSpec(prompt=" a fox ", seed=3, model=MODEL, height=512, metadata={"k": [1]})

    assert spec.prompt == "a fox"
    assert validate_job(json.loads(json.dumps(spec.to_dict()))) == spec


def test_validate_job_names_unknown_and_missing_fields() -> None:
    with pytest.raises(InvalidJob, match="seed is missing; 'num_images' is not a known field"):
        validate_job({"prompt": "x", "model": MODEL, "num_images": 2})


def test_a_huge_number_gives_a_short_message_not_a_crash() -> None:
    with pytest.raises(InvalidJob, match=r"seed \(a 16,610-bit number\) is out of range"):
        JobSpec(prompt="x", seed=10**5000, model=MODEL)


def test_a_prompt_file_error_survives_pickling() -> None:
    error = PromptFileError("f.jsonl", "2 lines are invalid", [LineError(3, "prompt is empty")], 2)

    copy = pickle.loads(pickle.dumps(error))

    assert (
        str(copy)
        == str(error)
        == "f.jsonl: 2 lines are invalid\n  line 3: prompt is empty\n  ... and 1 more"
    )
    assert copy.errors == error.errors and copy.error_count == 2


def test_resolve_size_fills_only_what_is_unset() -> None:
    spec = JobSpec(prompt="x", seed=1, model=MODEL, width=768)

    assert spec.resolve_size(512, 512) == JobSpec(prompt="x", seed=1, model=MODEL, height=512,
                                                  width=768)  # fmt: skip
    with pytest.raises(InvalidJob, match="height 500"):
        spec.resolve_size(500, 500)


def test_num_images_limit_matches_the_constant() -> None:
    assert "num_images" in bad_lines(jsonl({"prompt": "a", "num_images": MAX_NUM_IMAGES + 1}))[1]
    assert len(parse(jsonl({"prompt": "a", "num_images": MAX_NUM_IMAGES})).jobs) == MAX_NUM_IMAGES


def test_pydantic_errors_are_explained_without_urls() -> None:
    from pydantic import BaseModel, ValidationError

    class Options(BaseModel):
        batch: int
        name: str

    with pytest.raises(ValidationError) as info:
        Options.model_validate({"batch": "many"})

    text = explain_validation_error(info.value)
    assert text == (
        "batch must be a whole number, not the text 'many'; fix its value | name is missing; add it"
    )
    assert "errors.pydantic.dev" in str(info.value)  # what the helper exists to avoid


def test_the_parser_imports_nothing_heavy() -> None:
    code = (
        "import sys, producer.prompts, core.jobspec; "
        "heavy = {'torch', 'celery', 'sqlalchemy', 'pydantic', 'numpy', 'diffusers'}; "
        "print(sorted(heavy & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         check=True)  # fmt: skip

    assert out.stdout.strip() == "[]"


def test_twenty_thousand_json_lines_parse_in_seconds_not_minutes(tmp_path: Path) -> None:
    path = tmp_path / "many.jsonl"
    path.write_text(jsonl(*({"prompt": f"a fox number {i}", "seed": i, "height": 512}
                            for i in range(20_000))))  # fmt: skip

    start = time.perf_counter()
    result = parse_prompt_file(path, defaults=DEFAULTS)
    elapsed = time.perf_counter() - start

    assert len(result.jobs) == 20_000
    # About 0.2 s on a laptop; the bound only catches a parser gone quadratic or 20x slower.
    assert elapsed < 5.0
