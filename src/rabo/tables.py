"""Markdown and CSV tables: the one writer behind ``rabo report``'s summary, the
reproductions' tables, the cost report and the benchmark."""

from __future__ import annotations

import csv
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any


def cell(value: Any) -> str:
    """A table cell: 4 significant figures, or — for a missing value."""
    if value is None:
        return "—"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def markdown(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    """The lines of a Markdown table: ``header``, the rule, one line per row of
    cell texts."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def write_markdown(rows: Sequence[Mapping[str, Any]], columns: Sequence[str],
                   path: Path, header: Sequence[str] | None = None) -> Path:
    """``rows``' ``columns`` as a Markdown file of :func:`cell` texts (a missing
    key: —), under ``header`` (default: the column names)."""
    body = ([cell(r.get(c)) for c in columns] for r in rows)
    path.write_text("\n".join(markdown(header or columns, body)) + "\n")
    return path


def write_csv(rows: Sequence[Mapping[str, Any]], columns: Sequence[str],
              path: Path) -> Path:
    """``rows``' ``columns`` at full precision as a CSV file (None and a missing
    key: empty; other keys are left out)."""
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str], out: Path,
                stem: str) -> list[Path]:
    """``stem``.csv (full precision) and ``stem``.md (4 significant figures) in
    ``out``."""
    return [write_csv(rows, columns, out / f"{stem}.csv"),
            write_markdown(rows, columns, out / f"{stem}.md")]


def read_csv(path: Path) -> list[dict[str, str]]:
    """The rows of a CSV file :func:`write_csv` wrote, as text (empty: a missing value)."""
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))
