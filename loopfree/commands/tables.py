"""Tables for every listing command: rich boxes on a terminal, plain whole rows anywhere else.

On a terminal rich fits a table to the window, cutting long values (``loopfr…``) and, where a
column asks for it, showing ids by their first 8 characters. That is wrong the moment the output
goes anywhere else: rich assumes 80 columns for a pipe, so ``loopfree workers | cat`` cut model
paths and statuses. So when stdout is not a terminal, or with ``--wide``, a table is printed as
plain text: a header line, then one line per row, columns padded to a common width and separated
by two spaces, every value whole (line breaks inside a value are shown as ``\\n``). The widths come
from the first ``ALIGN_ROWS`` rows, so a listing of a million jobs streams in bounded memory;
a later, longer value widens its own line only. ``--json`` (or ``--format``) is for programs.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import chain, islice
from typing import Annotated

import typer

ALIGN_ROWS = 1000
"""Rows read ahead to size the columns of a plain table."""

GAP = "  "

Wide = Annotated[
    bool,
    typer.Option(
        "--wide", help="Plain rows with every value whole (the default when stdout is not a tty)."
    ),
]


@dataclass(frozen=True)
class Column:
    """One column: its header and, on a terminal, how many characters of it to show (ids)."""

    header: str
    short: int | None = None


def print_table(columns: Sequence[Column], rows: Iterable[Sequence[str]], *, wide: bool) -> None:
    """Print ``rows`` under ``columns``: a rich table on a terminal, plain rows otherwise."""
    if wide or not sys.stdout.isatty():
        for line in plain_lines(columns, rows):
            typer.echo(line)
        return
    from rich.console import Console
    from rich.table import Table

    table = Table()
    for column in columns:
        # A shortened id stays whole at its short width however narrow the window: it is what
        # people copy into the next command. The other columns shrink and wrap instead.
        fixed = column.short is not None and column.short <= 12
        table.add_column(column.header, no_wrap=fixed, min_width=column.short if fixed else None)
    for row in rows:
        cells = zip(columns, row, strict=True)
        table.add_row(*(_cut(value, column.short) for column, value in cells))
    Console().print(table)


def plain_lines(columns: Sequence[Column], rows: Iterable[Sequence[str]]) -> Iterator[str]:
    """The plain table's lines, header first; every value whole."""
    rows = iter(rows)
    ahead = [[_plain(value) for value in row] for row in islice(rows, ALIGN_ROWS)]
    header = [column.header for column in columns]
    widths = [max(len(cell) for cell in cells) for cells in zip(header, *ahead, strict=True)]
    for row in chain([header], ahead, ([_plain(value) for value in row] for row in rows)):
        padded = [cell.ljust(width) for cell, width in zip(row[:-1], widths[:-1], strict=True)]
        yield GAP.join([*padded, row[-1]]).rstrip()


def _plain(value: str) -> str:
    return value.replace("\r", "\\r").replace("\n", "\\n")


def _cut(value: str, keep: int | None) -> str:
    return value if keep is None else value[:keep]
