"""How far along the work is, in the words users read, and how fast it goes: one definition for
``status``, ``submissions``, ``stats``, the web view and the API.

**Stages.** A job is ``queued`` (waiting, in the database's backlog or the broker's window),
``claimed`` (a worker holds it, waiting for a sampler call), ``rendering`` (its sampler call has
started; it is being rendered or its image stored), then ``succeeded``, ``failed`` or
``cancelled``. ``claimed`` and ``rendering`` are the two halves of the ``running`` status a row
has: a worker holds several batches in hand, so "running 48" said 48 images were being made when
16 were.

**Throughput.** Images per second counts only jobs that finished by being rendered (succeeded:
not cancelled, not failed), over the time work was actually being done on them: the union of the
spans from each job's claim to its finish (and to now, for jobs in hand), so an idle gap between
two submissions, or a fleet scaled to zero overnight, is not counted as work. An open scope is
measured over its last ``RATE_WINDOW_S``; a finished submission over its whole run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from storage.models import Flow, Job, JobStatus, utcnow

STAGES = ("queued", "claimed", "rendering", "succeeded", "failed", "cancelled")
"""The words for where a job is, in order; ``storage.models.JobStatus`` minus ``running``, which
is split into ``claimed`` and ``rendering``."""
OPEN_STAGES = ("queued", "claimed", "rendering")

RATE_WINDOW_S = 60.0
"""The rate of an open submission, and the ETA, follow the last minute: recent enough to follow a
fleet that grows or shrinks, long enough to average over several batches."""

SAMPLE_JOBS = 5_000
"""Most recent finished jobs a rate is measured on: its cost follows the recent work (a few
milliseconds), however long the window."""

_RUNNING = text("jobs.status = 'running'")  # the partial index of running jobs


@dataclass(frozen=True)
class Throughput:
    """Images that succeeded, per second of time work was being done."""

    images: int  # succeeded jobs measured
    active_s: float | None  # seconds during which any of the scope's jobs was in hand
    window_s: float | None  # the span looked at (None: a finished submission's whole run)

    @property
    def images_per_s(self) -> float | None:
        if not self.images or not self.active_s:
            return None
        return self.images / self.active_s


def stage_of(job: Job) -> str:
    """A job's stage (see the module's docstring)."""
    if job.status == JobStatus.RUNNING:
        return "rendering" if job.rendering_at is not None else "claimed"
    return job.status.value


def stage_counts(session: Session, *, submission_id: str | None = None) -> dict[str, int]:
    """Jobs per stage, of one submission or of all. The statuses come from the flows' counters;
    of the running jobs (the work in hand, a bounded set) those rendering are counted."""
    from storage.queries import count_by_status

    by_status = count_by_status(session, submission_id=submission_id)
    rendering = select(func.count()).select_from(Job).where(_RUNNING, Job.rendering_at.is_not(None))
    if submission_id is not None:
        rendering = rendering.where(Job.submission_id == submission_id)
    rendering_count = min(int(session.scalar(rendering) or 0), by_status[JobStatus.RUNNING])
    counts = {status.value: count for status, count in by_status.items()}
    running = counts.pop(JobStatus.RUNNING.value)
    counts["claimed"] = running - rendering_count
    counts["rendering"] = rendering_count
    return {stage: counts[stage] for stage in STAGES}


def flows_of(session: Session, submission_ids: Sequence[str]) -> dict[str, list[Flow]]:
    """Each submission's flows (its counters), by submission id."""
    found: dict[str, list[Flow]] = {submission_id: [] for submission_id in submission_ids}
    if submission_ids:
        statement = select(Flow).where(Flow.submission_id.in_(list(submission_ids)))
        for flow in session.scalars(statement):
            found[flow.submission_id].append(flow)
    return found


def rendering_by_submission(session: Session, submission_ids: Sequence[str]) -> dict[str, int]:
    """Jobs of each submission in a sampler call now (of the work in hand, a bounded set)."""
    if not submission_ids:
        return {}
    statement = (
        select(Job.submission_id, func.count())
        .where(_RUNNING, Job.rendering_at.is_not(None), Job.submission_id.in_(list(submission_ids)))
        .group_by(Job.submission_id)
    )
    return {submission_id: int(count) for submission_id, count in session.execute(statement)}


def recent_throughput(
    session: Session,
    *,
    submission_ids: Sequence[str] | None = None,
    model: str | None = None,
    window_s: float = RATE_WINDOW_S,
    now: datetime | None = None,
) -> Throughput:
    """Throughput over the last ``window_s`` of the given submissions (all if None), optionally
    of one model: the newest ``SAMPLE_JOBS`` successes (a range of ``ix_jobs_finished_at``) and
    the jobs in hand now."""
    now = now or utcnow()
    since = now - timedelta(seconds=window_s)
    finished = (
        select(Job.started_at, Job.finished_at)
        .where(Job.finished_at >= since, Job.status == JobStatus.SUCCEEDED)
        .order_by(Job.finished_at.desc())
        .limit(SAMPLE_JOBS)
    )
    in_hand = select(Job.started_at).where(_RUNNING, Job.started_at.is_not(None))
    if submission_ids is not None:
        finished = finished.where(Job.submission_id.in_(list(submission_ids)))
        in_hand = in_hand.where(Job.submission_id.in_(list(submission_ids)))
    if model is not None:
        finished = finished.where(Job.model == model)
        in_hand = in_hand.where(Job.model == model)
    done = session.execute(finished).all()
    if len(done) == SAMPLE_JOBS:
        since = min(row.finished_at for row in done)  # the sample's own span
    spans = [(row.started_at or row.finished_at, row.finished_at) for row in done]
    spans += [(started, now) for started in session.scalars(in_hand)]
    active = covered_seconds(spans, since, now)
    return Throughput(images=len(done), active_s=active or None, window_s=window_s)


def run_throughput(flows: Sequence[Flow]) -> Throughput:
    """Throughput of a finished submission (its flows): its images over its run, from the first
    claim to the last finish."""
    images = sum(flow.succeeded for flow in flows)
    starts = [flow.first_started_at for flow in flows if flow.first_started_at is not None]
    ends = [flow.last_finished_at for flow in flows if flow.last_finished_at is not None]
    if not starts or not ends:
        return Throughput(images=images, active_s=None, window_s=None)
    active = (max(ends) - min(starts)).total_seconds()
    return Throughput(images=images, active_s=active if active > 0 else None, window_s=None)


def covered_seconds(
    spans: Sequence[tuple[datetime, datetime]], since: datetime, until: datetime
) -> float:
    """Seconds of ``[since, until]`` covered by at least one span: the union, not the sum."""
    clipped = sorted(
        (max(start, since), min(end, until))
        for start, end in spans
        if end > since and start < until
    )
    total = 0.0
    current_start: datetime | None = None
    current_end: datetime | None = None
    for start, end in clipped:
        if end <= start:
            continue
        if current_end is None or start > current_end:
            if current_end is not None and current_start is not None:
                total += (current_end - current_start).total_seconds()
            current_start, current_end = start, end
        elif end > current_end:
            current_end = end
    if current_end is not None and current_start is not None:
        total += (current_end - current_start).total_seconds()
    return total


def recent_shares(
    session: Session, submission_ids: Sequence[str], *, now: datetime | None = None
) -> dict[tuple[str, str], float]:
    """``(submission, model) -> fraction`` of the model's images of the last ``RATE_WINDOW_S``
    that were this submission's: how the fleet is being shared right now (``fleet.dispatch``)."""
    if not submission_ids:
        return {}
    since = (now or utcnow()) - timedelta(seconds=RATE_WINDOW_S)
    recent = (Job.finished_at >= since, Job.status == JobStatus.SUCCEEDED)
    per_flow = session.execute(
        select(Job.submission_id, Job.model, func.count())
        .where(*recent, Job.submission_id.in_(list(submission_ids)))
        .group_by(Job.submission_id, Job.model)
    ).all()
    models = sorted({model for _, model, _ in per_flow})
    per_model = (
        dict(
            session.execute(
                select(Job.model, func.count())
                .where(*recent, Job.model.in_(models))
                .group_by(Job.model)
            ).all()
        )
        if models
        else {}
    )
    return {
        (submission_id, model): count / per_model[model]
        for submission_id, model, count in per_flow
        if per_model.get(model)
    }
