"""Bounds of a submission's own options, checked before anything is written.

Each is a column of ``submissions`` with a width: a longer value would be refused by PostgreSQL
with a driver traceback after the file was read, so it is refused here first, in one line.
"""

from __future__ import annotations

from core.errors import UserError

MAX_WEBHOOK_CHARS = 2048  # submissions.webhook_url
MAX_KEY_CHARS = 255  # submissions.idempotency_key
MAX_SOURCE_CHARS = 1024  # submissions.source


class OptionTooLong(UserError):
    """An option is longer than the database keeps."""


def check_submission_options(
    *, webhook: str | None = None, key: str | None = None, source: str | None = None
) -> None:
    """Refuse a webhook URL, idempotency key or source name longer than its column."""
    for name, value, limit, fix in (
        ("--webhook", webhook, MAX_WEBHOOK_CHARS, "use a shorter URL"),
        ("--key", key, MAX_KEY_CHARS, "use a shorter key (a hash of a longer one works)"),
        ("the file name", source, MAX_SOURCE_CHARS, "rename the file"),
    ):
        if value is not None and len(value) > limit:
            raise OptionTooLong(
                f"{name} is {len(value):,} characters; at most {limit:,} are kept: {fix}"
            )
