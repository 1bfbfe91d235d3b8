"""The shapes of the API's answers, for its OpenAPI document (and the tests that hold the
answers to them). The records themselves are built by the functions every reader uses
(``status.summary.SubmissionSummary.as_dict``, ``status.queries.job_record``), so the API says
what ``loopfree status --json`` and ``loopfree jobs --format json`` say."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class SubmissionOut(BaseModel):
    """Where a submission stands: ``loopfree status ID --json`` without ``kind``."""

    model_config = ConfigDict(extra="forbid")

    id: str
    source: str
    owner: str
    created_at: str
    finished_at: str | None
    cancelled_at: str | None
    job_count: int
    models: list[str]
    counts: dict[str, int] = Field(
        description="Jobs by stage: queued, claimed, rendering, succeeded, failed, cancelled."
    )
    images_per_s: float | None = Field(description="Open: the last minute; finished: its run.")
    eta_s: float | None
    shares: dict[str, float] = Field(description="Its share of each model's recent images.")
    unserved_models: list[str] = Field(description="Models no live worker serves.")
    open: int
    done: int
    finished: bool


class IntakeOut(BaseModel):
    model_config = ConfigDict(extra="forbid")

    created: bool = Field(description="False: the Idempotency-Key named an earlier submission.")
    jobs: int
    inserted: int = Field(description="Jobs this request added.")
    published: int = Field(description="Jobs sent straight to the broker (the rest wait).")
    skipped_lines: int
    skipped: list[dict[str, Any]] = Field(description="With skip_invalid: lines left out.")
    models: dict[str, int]
    cost_units: float | None = Field(description="Cost in 512x512x4-step units (daily quota).")
    warnings: list[str]


class SubmittedOut(SubmissionOut):
    intake: IntakeOut


class SubmissionsPageOut(BaseModel):
    model_config = ConfigDict(extra="forbid")

    submissions: list[SubmissionOut]
    next_before: str | None = Field(description="Cursor of the next (older) page, or null.")


class JobOut(BaseModel):
    """A job's record (``loopfree jobs --format json``), plus ``image_url`` on this API."""

    model_config = ConfigDict(extra="allow")

    id: str
    submission_id: str
    position: int
    line_number: int
    prompt: str
    seed: int
    width: int
    height: int
    steps: int
    model: str
    priority: int
    priority_name: str
    metadata: dict[str, Any]
    status: str = Field(description="queued, claimed, rendering, succeeded, failed, cancelled.")
    attempts: int
    image_sha256: str | None
    error: str | None
    image_url: str | None = Field(description="GET it (with the token) for the image.")


class JobsPageOut(BaseModel):
    model_config = ConfigDict(extra="forbid")

    jobs: list[JobOut]
    next_after: int | None = Field(description="Cursor (a position) of the next page, or null.")


class CancelOut(BaseModel):
    model_config = ConfigDict(extra="forbid")

    submission_id: str
    job_id: str | None
    cancelled: int
    remaining: int = Field(description="Queued jobs still to move; the fleet moves them.")
    unfinished: int = Field(description="Claimed or rendering: they finish.")
    note: str | None


class ModelOut(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str
    live_workers: int
    queued: int
    running: int
    images_per_s: float | None = Field(description="Over the last minute.")


class ModelsOut(BaseModel):
    model_config = ConfigDict(extra="forbid")

    models: list[ModelOut]


class ProblemOut(BaseModel):
    """RFC 9457 problem details (``application/problem+json``)."""

    model_config = ConfigDict(extra="allow")

    type: str
    title: str
    status: int
    detail: str
    instance: str | None = None


PROBLEMS: dict[int | str, dict[str, Any]] = {
    status: {"model": ProblemOut, "description": text, "content": {"application/problem+json": {}}}
    for status, text in (
        (400, "Bad request"),
        (401, "No valid token"),
        (404, "No such id among this token's"),
        (413, "Body over the limit"),
        (422, "Invalid jobs or options"),
        (429, "Rate limit or quota exceeded (see Retry-After)"),
        (503, "Database, broker or store unavailable (see Retry-After)"),
    )
}
