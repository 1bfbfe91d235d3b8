"""A submission's own texts, checked before anything is parsed or written.

The webhook URL, the idempotency key and the source's name go into columns of bounded length
(``storage.models.Submission``). Unchecked, an over-long one reached the database and came back
as a driver traceback (PostgreSQL's ``StringDataRightTruncation``), or was silently kept whole
(SQLite does not enforce lengths). Each is refused here with one line that names the option, its
length, the limit and the fix; the lengths are read from the schema, so they cannot drift from it.
The webhook URL then has to pass the address policy (``core.webhooks``). Metadata is bounded per
line by the job validator (``core.jobspec.check_metadata``, 16 KiB).
"""

from __future__ import annotations

from core.errors import UserError
from core.settings import Settings


class InvalidOption(UserError):
    """An option of the submission (not a line of its file) cannot be stored as it is."""


def check_submission_options(
    settings: Settings, *, webhook_url: str | None, key: str | None, source: str
) -> None:
    """Raise ``InvalidOption`` (or ``WebhookRefused``) for the first option that cannot be used."""
    from storage.models import Submission  # the schema is the source of the limits

    columns = Submission.__table__.c
    _check_text("--webhook", webhook_url, columns.webhook_url.type.length, "use a shorter URL")
    _check_text(
        "--key", key, columns.idempotency_key.type.length, "use a shorter key (e.g. a hash of it)"
    )
    _check_text(
        "the file name", source, columns.source.type.length, "rename the file", quoted=True
    )
    if webhook_url is not None:
        from core.webhooks import check_webhook_url

        check_webhook_url(webhook_url, settings.webhook_policy)


def _check_text(
    what: str, value: str | None, limit: int, fix: str, *, quoted: bool = False
) -> None:
    if value is None:
        return
    shown = f"{what} {_cut(value)!r}" if quoted else what
    if not value.strip():
        raise InvalidOption(f"{shown} is empty; give a value or leave the option out")
    if len(value) > limit:
        raise InvalidOption(
            f"{shown} is {len(value):,} characters long; the limit is {limit:,}, so {fix}"
        )
    if "\x00" in value:
        raise InvalidOption(f"{shown} contains a NUL character; remove it")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # bytes the terminal or file system gave that are not UTF-8
        raise InvalidOption(f"{shown} is not valid UTF-8; {fix}") from None


def _cut(value: str, keep: int = 60) -> str:
    return value if len(value) <= keep else value[:keep] + "…"
