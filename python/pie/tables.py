"""Plain-text tables of fixed-width columns, shared by the cost tables of reports and estimates."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

__all__ = ["Column", "format_table"]

# A column: its title, alignment ("<" left, ">" right) and width. Cells wider
# than the width widen their line, as f-string padding does.
Column = tuple[str, str, int]


def format_table(columns: Sequence[Column], rows: Iterable[Sequence[object]],
                 totals: Iterable[Sequence[object]]) -> str:
    """The header, a rule, one line per row, a rule and the total lines;
    every cell is ``str()``-ed and padded to its column."""

    def line(cells: Iterable[object]) -> str:
        return " ".join(f"{cell!s:{align}{width}}" for cell, (_, align, width) in zip(cells, columns))

    head = line(title for title, _, _ in columns)
    rule = "-" * len(head)
    return "\n".join([head, rule, *map(line, rows), rule, *map(line, totals)])
