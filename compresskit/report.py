"""Comparison tables of models (original, pruned, fine-tuned, …): pandas in, CSV and Markdown out.

No measuring here: rows come from `measure.Measurement.to_row()` plus a name and a test accuracy;
this module only adds the reduction ratios and writes the table.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

REDUCTIONS = {"macs_reduction": "macs", "latency_reduction_b1": "latency_b1_ms",
              "latency_reduction_b128": "latency_b128_ms"}  # fmt: skip
LEADING_COLUMNS = ["model", "params", "macs", "size_mb", "latency_b1_ms", "latency_b128_ms",
                   "throughput_b1", "throughput_b128", "test_acc", *REDUCTIONS]  # fmt: skip


def comparison_table(rows: Sequence[dict], baseline: int = 0) -> pd.DataFrame:
    """One row per model; adds ``macs_reduction`` and ``latency_reduction_b{1,128}``: the baseline
    row's value divided by this row's (so 4.0 means four times fewer MACs, or four times faster).
    Columns a row lacks are NaN; the leading columns come first in a fixed order."""
    table = pd.DataFrame(list(rows))
    for ratio, column in REDUCTIONS.items():
        if column in table:
            base = table[column].iloc[baseline]
            table[ratio] = base / table[column]
        else:
            table[ratio] = math.nan
    first = [c for c in LEADING_COLUMNS if c in table]
    return table[first + [c for c in table.columns if c not in first]]


def _cell(value: object) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "—"
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value).replace("|", "\\|")


def markdown_table(table: pd.DataFrame) -> str:
    """The table as GitHub Markdown (numbers: integers with thousands separators, floats to 4
    significant digits)."""
    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    for row in table.itertuples(index=False):
        lines.append("| " + " | ".join(_cell(v) for v in row) + " |")
    return "\n".join(lines) + "\n"


def write_report(
    table: pd.DataFrame, directory: str | Path, title: str, notes: Sequence[str] = ()
) -> list[Path]:
    """Write ``report.csv`` and ``report.md`` (a title, the table, then `notes` as bullet lines) into
    `directory`; returns the two paths."""
    directory = Path(directory)
    csv_path, md_path = directory / "report.csv", directory / "report.md"
    table.to_csv(csv_path, index=False)
    body = [f"# {title}", "", markdown_table(table)]
    if notes:
        body += [f"- {note}" for note in notes] + [""]
    md_path.write_text("\n".join(body))
    return [csv_path, md_path]
