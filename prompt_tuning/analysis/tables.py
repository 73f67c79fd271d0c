"""Markdown tables for the reports the tools print and write (ensembles, nearest neighbours)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub Markdown table, one line per row, `|` inside cells escaped as `\\|`.

    Args:
      header: the column names.
      rows: the cells of each row (any values; `str` is applied).

    Returns:
      The table, ending in a newline.

    Raises:
      ValueError: a row with another number of cells than `header` (it would shift columns).
    """
    for row in rows:
        if len(row) != len(header):
            raise ValueError(
                f"A table row has {len(row)} cells but the header {list(header)} has "
                f"{len(header)}: {list(row)!r}."
            )
    cell = lambda value: str(value).replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(cell(h) for h in header) + " |"]
    lines.append("|" + "|".join("---" for _ in header) + "|")
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"
