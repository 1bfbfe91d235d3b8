"""The progress file that makes an export resumable, and the ``_stats.json`` it ends with.

``.loopfree-export.json`` at the destination (hidden: dataset readers skip it) holds the
export's options, its snapshot time and one entry per finished shard: its name, samples, bytes,
the jobs it left out by reason, and the last job it covered. It is rewritten after each shard
is committed, so it never names a shard that is not there whole; a run that finds it goes on
after the last shard it names. Nothing in it (or in ``_stats.json``) depends on when or how
often the export ran, so a resumed export leaves the same files as an uninterrupted one.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from core.errors import UserError
from export.fetch import FETCH_FAILURES
from export.plan import Cursor

STATE_FILE = ".loopfree-export.json"
STATS_FILE = "_stats.json"
STATE_VERSION = 1


@dataclass
class ShardRecord:
    """One finished shard."""

    name: str
    samples: int
    bytes: int
    skipped: dict[str, int]
    last: Cursor

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "samples": self.samples,
            "bytes": self.bytes,
            "skipped": dict(sorted(self.skipped.items())),
            "last": [self.last.submission_id, self.last.position],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ShardRecord:
        submission_id, position = data["last"]
        return cls(
            data["name"], data["samples"], data["bytes"], data["skipped"],
            Cursor(submission_id, position),
        )  # fmt: skip


@dataclass
class ExportState:
    options: dict[str, Any]
    as_of: datetime
    shards: list[ShardRecord] = field(default_factory=list)
    # Jobs after the last shard's last sample, all without an image (written when complete).
    tail: dict[str, int] = field(default_factory=dict)
    complete: bool = False

    @property
    def cursor(self) -> Cursor | None:
        return self.shards[-1].last if self.shards else None

    @property
    def samples(self) -> int:
        return sum(shard.samples for shard in self.shards)

    def as_json(self) -> dict[str, Any]:
        return {
            "loopfree_export": STATE_VERSION,
            "options": self.options,
            "as_of": self.as_of.isoformat(),
            "shards": [shard.as_json() for shard in self.shards],
            "tail": dict(sorted(self.tail.items())),
            "complete": self.complete,
        }

    def encode(self) -> bytes:
        return (json.dumps(self.as_json(), indent=1) + "\n").encode()

    @classmethod
    def decode(cls, data: bytes, where: str) -> ExportState:
        try:
            raw = json.loads(data)
            if raw.get("loopfree_export") != STATE_VERSION:
                raise ValueError(f"version {raw.get('loopfree_export')!r}")
            return cls(
                options=raw["options"],
                as_of=datetime.fromisoformat(raw["as_of"]),
                shards=[ShardRecord.from_json(shard) for shard in raw["shards"]],
                tail=raw["tail"],
                complete=raw["complete"],
            )
        except (ValueError, KeyError, TypeError) as error:
            raise UserError(
                f"{where} is not a progress file this version can resume ({error}); export into "
                "a new destination"
            ) from None

    def check_options(self, options: dict[str, Any], where: str) -> None:
        """Refuse to resume an export asked for with other options: its shards would mix."""
        differ = [name for name in options if self.options.get(name) != options[name]]
        if differ:
            before = ", ".join(f"{name}={self.options.get(name)!r}" for name in differ)
            raise UserError(
                f"{where} holds an export made with other options ({before}); run it again with "
                "those to finish it, or export into a new destination"
            )

    def stats(self) -> dict[str, Any]:
        """``_stats.json``, after img2dataset's: ``count`` jobs looked at, ``successes``
        exported, ``failed_to_download`` (missing from the store or not the recorded bytes),
        ``status_dict`` by reason, ``bytes`` of images, and each shard."""
        reasons: Counter[str] = Counter(self.tail)
        for shard in self.shards:
            reasons.update(shard.skipped)
        successes = self.samples
        return {
            "format": self.options["format"],
            "count": successes + sum(reasons.values()),
            "successes": successes,
            "failed_to_download": sum(reasons[reason] for reason in FETCH_FAILURES),
            "status_dict": dict(sorted({"success": successes, **reasons}.items())),
            "bytes": sum(shard.bytes for shard in self.shards),
            "as_of": self.as_of.isoformat(),
            "options": self.options,
            "shards": [
                {"name": shard.name, "samples": shard.samples, "bytes": shard.bytes}
                for shard in self.shards
            ],
        }
