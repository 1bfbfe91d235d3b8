"""The celery, kombu and celery-batches versions whose internals this project was checked against.

``taskqueue.batches`` overrides private attributes of celery-batches' ``Batches`` and
``taskqueue.redis_lists`` writes and reads kombu's Redis message lists. A minor release may rename
or reshape either without notice, and the failure would be quiet: partial batches that never
flush, or a reconciler that cannot see which window jobs still have a message. So
``pyproject.toml`` pins these minor series, ``tests/queue/test_versions.py`` checks the internals
on the installed versions, and the worker calls :func:`check_versions` at start, before it loads
a model.

To move to a new minor release: install it, run ``tests/queue/test_versions.py`` and
``tests/queue``, read the package's changes to the internals named below, then raise the series
here and the pin in ``pyproject.toml`` together (and regenerate ``constraints/lock.txt``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import metadata

from packaging.version import InvalidVersion, Version

from core.errors import UserError


@dataclass(frozen=True)
class CheckedVersion:
    """One package, the minor series it was checked in, and what of it we rely on."""

    package: str
    series: str  # "major.minor": every release of that series is accepted
    relies_on: str


CHECKED_VERSIONS: tuple[CheckedVersion, ...] = (
    CheckedVersion(
        "celery",
        "5.6",
        "celery-batches 0.11 supports celery < 5.7 only; the worker's consumer timer and "
        "strategy hooks (taskqueue/batches.py)",
    ),
    CheckedVersion(
        "kombu",
        "5.7",
        "the Redis transport's message JSON and priority lists (taskqueue/redis_lists.py); "
        "Channel._brpop_read and _get, which taskqueue/dead_letters.py re-implements around "
        "its entry check",
    ),
    CheckedVersion(
        "celery-batches",
        "0.11",
        "Batches' private _buffer, _pending, _tref and _do_flush (taskqueue/batches.py)",
    ),
)


class UncheckedDependency(UserError):
    """An installed package is outside the version series whose internals were checked."""


def installed_version(package: str) -> str | None:
    """The installed distribution's version, or None when it is not installed."""
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def same_series(installed: str, series: str) -> bool:
    """Whether ``installed`` (e.g. ``5.7.0``, ``5.7.1rc1``) belongs to ``series`` (``5.7``)."""
    try:
        return Version(installed).release[:2] == Version(series).release[:2]
    except InvalidVersion:
        return False


def unchecked_versions(
    checked: Sequence[CheckedVersion] = CHECKED_VERSIONS,
    installed: Callable[[str], str | None] = installed_version,
) -> list[str]:
    """One line per package that is missing or outside its checked series; empty when all fit."""
    problems = []
    for entry in checked:
        version = installed(entry.package)
        if version is not None and same_series(version, entry.series):
            continue
        found = "is not installed" if version is None else f"{version} is installed"
        problems.append(
            f"{entry.package} {found}, but loopfree-queue was checked against "
            f"{entry.package} {entry.series}.x only (it relies on {entry.relies_on})"
        )
    return problems


def check_versions(
    checked: Sequence[CheckedVersion] = CHECKED_VERSIONS,
    installed: Callable[[str], str | None] = installed_version,
) -> None:
    """Raise :class:`UncheckedDependency` if celery, kombu or celery-batches is outside the
    series whose internals were checked; the message names each and says how to fix it."""
    problems = unchecked_versions(checked, installed)
    if not problems:
        return
    pins = " ".join(f"'{entry.package}=={entry.series}.*'" for entry in checked)
    raise UncheckedDependency(
        "; ".join(problems)
        + f". Install the checked versions (pip install {pins}, as pyproject.toml pins them, or "
        "pip install -c constraints/lock.txt), or check the internals against the new version "
        "(tests/queue/test_versions.py) and raise CHECKED_VERSIONS in taskqueue/versions.py."
    )
