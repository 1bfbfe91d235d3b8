"""What happened to one delivery: the record the batch runner fills and logs, metrics and tests
read. A module of its own so that the runner and the parts it calls all import it, not each
other."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class BatchReport:
    """What happened to one delivery's jobs."""

    batch_id: str
    delivered: int = 0
    claimed: int = 0
    succeeded: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    retried: list[str] = field(default_factory=list)
    skipped: int = 0  # not claimable: cancelled, finished, running elsewhere, unknown
    rerouted: int = 0  # messages for another model's jobs, sent back to that model's queue
    groups: list[int] = field(default_factory=list)  # size of each sampler call
    sample_seconds: float = 0.0
