"""Words people read for stored values, shared by the CLI's tables and the web view.

A job stores its priority as a number (0-9, what the broker sorts by); people chose it by name
(``--priority high``), so tables and pages show the name and JSON keeps the number beside it.
"""

from __future__ import annotations

from datetime import datetime

from core.jobspec import PRIORITY_LEVELS

_PRIORITY_NAMES = {level: name for name, level in PRIORITY_LEVELS.items()}


def priority_name(level: int) -> str:
    """``high``, ``normal`` or ``low`` for the named levels; any other level as its number."""
    return _PRIORITY_NAMES.get(level, str(level))


def ago(moment: datetime, now: datetime) -> str:
    """How long before ``now``: ``42s ago``, ``12m ago``, ``3.5h ago``."""
    seconds = max(0.0, (now - moment).total_seconds())
    if seconds < 120:
        return f"{seconds:.0f}s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m ago"
    return f"{seconds / 3600:.1f}h ago"
