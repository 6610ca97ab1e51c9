"""Comparison tables of models (original, pruned, fine-tuned, …): pandas in, CSV and Markdown out.

No measuring here: rows come from `measure.Measurement.to_row()` (or, measured together in
interleaved rounds, `latency.ComparedMeasurement.to_row()`, which adds ``speedup_b{N}`` and its
spread) plus a name and a test accuracy; this module only adds the reduction ratios, writes the
table, and warns about latencies and speed-ups that spread too much to trust (`latency_warnings`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from compresskit.measure import NOISY_SPREAD

REDUCTIONS = {"macs_reduction": "macs", "latency_reduction_b1": "latency_b1_ms",
              "latency_reduction_b128": "latency_b128_ms"}  # fmt: skip
LEADING_COLUMNS = ["model", "params", "macs", "size_mb", "latency_b1_ms", "latency_b1_spread",
                   "latency_b128_ms", "latency_b128_spread", "throughput_b1", "throughput_b128",
                   "test_acc", *REDUCTIONS, "speedup_b1", "speedup_b1_spread", "speedup_b128",
                   "speedup_b128_spread"]  # fmt: skip
SPREAD_COLUMN = re.compile(r"latency_b(\d+)_spread")
SPEEDUP_SPREAD_COLUMN = re.compile(r"speedup_b(\d+)_spread")


def comparison_table(rows: Sequence[dict], baseline: int = 0) -> pd.DataFrame:
    """One row per model; adds ``macs_reduction`` and ``latency_reduction_b{1,128}``: the baseline
    row's value divided by this row's (so 4.0 means four times fewer MACs, or four times faster;
    for latency a ratio of medians). Rows measured together keep their ``speedup_b{N}`` (the
    median of paired per-round ratios, `latency.paired_speedups`), the steadier speed-up. Columns
    a row lacks are NaN; the leading columns come first in a fixed order."""
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


def _spread_columns(table: pd.DataFrame, pattern: re.Pattern = SPREAD_COLUMN) -> list[tuple[int, str]]:
    """(batch size, column) of every column `pattern` matches (``latency_b{N}_spread`` by default),
    by batch size."""
    found = [(int(m.group(1)), str(c)) for c in table.columns if (m := pattern.fullmatch(str(c)))]
    return sorted(found)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)


def markdown_table(table: pd.DataFrame) -> str:
    """The table as GitHub Markdown (numbers: integers with thousands separators, floats to 4
    significant digits). A ``latency_b{N}_ms`` column that has a ``latency_b{N}_spread`` column
    shows as ``median ± spread%`` (e.g. ``1.23 ± 4%``, the spread in percent of the median) and the
    spread column is left out; so does ``speedup_b{N}`` with ``speedup_b{N}_spread``."""
    folded = {f"latency_b{n}_ms": c for n, c in _spread_columns(table) if f"latency_b{n}_ms" in table}
    folded |= {
        f"speedup_b{n}": c
        for n, c in _spread_columns(table, SPEEDUP_SPREAD_COLUMN)
        if f"speedup_b{n}" in table
    }
    shown = [str(c) for c in table.columns if c not in folded.values()]
    lines = ["| " + " | ".join(shown) + " |", "|" + "---|" * len(shown)]
    for values in zip(*(table[c] for c in table.columns), strict=True):
        row = dict(zip(map(str, table.columns), values, strict=True))
        cells = []
        for column in shown:
            cell = _cell(row[column])
            spread = row.get(folded.get(column, ""))
            if _is_number(row[column]) and _is_number(spread):
                cell += f" ± {100 * spread:.0f}%"
            cells.append(cell)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def latency_warnings(table: pd.DataFrame, baseline: int = 0) -> list[str]:
    """One sentence per latency whose repeats spread by more than `measure.NOISY_SPREAD` (10%) of
    its median (a ``latency_b{N}_spread`` value above 0.10), row by row, batch sizes in increasing
    order; none when the table has no spread columns. The model is named by the ``model`` column
    (else the row's index). A noisy `baseline` row (position, as in `comparison_table`) makes every
    speed-up at that batch size noise, and its sentence says so.

    Where the table has paired speed-ups at batch N (``speedup_b{N}_spread``, rows measured in
    interleaved rounds), a noisy latency only makes its absolute time noise, and a speed-up whose
    per-round ratios spread by more than 10% gets its own sentence instead."""
    if not len(table):
        return []
    base = baseline % len(table)
    names = table["model"] if "model" in table else pd.Series(table.index, index=table.index)
    paired = dict(_spread_columns(table, SPEEDUP_SPREAD_COLUMN))
    warnings = []
    for i in range(len(table)):
        for n, column in _spread_columns(table):
            spread = table[column].iloc[i]
            if not (_is_number(spread) and spread > NOISY_SPREAD):
                continue
            if n in paired:
                warnings.append(
                    f"latency of {names.iloc[i]} at batch {n} varies by {100 * spread:.0f}% between "
                    "rounds; treat its absolute time as noise (its speed-up pairs the rounds: see the "
                    "speed-up's own spread)"
                )
                continue
            if i == base:
                consequence = f"treat every speed-up at batch {n} (relative to it) as noise"
            else:
                consequence = "treat its speed-up as noise"
            warnings.append(
                f"latency of {names.iloc[i]} at batch {n} varies by {100 * spread:.0f}% between "
                f"repeats; {consequence}"
            )
        for n, column in paired.items():
            spread = table[column].iloc[i]
            if i != base and _is_number(spread) and spread > NOISY_SPREAD:
                warnings.append(
                    f"speed-up of {names.iloc[i]} at batch {n} varies by {100 * spread:.0f}% between "
                    "rounds; treat it as noise"
                )
    return warnings


def write_report(
    table: pd.DataFrame, directory: str | Path, title: str, notes: Sequence[str] = ()
) -> list[Path]:
    """Write ``report.csv`` and ``report.md`` (a title, the table, then `notes` as bullet lines, then
    one ``warning:`` bullet per noisy latency or speed-up, `latency_warnings`) into `directory`;
    returns the two paths."""
    directory = Path(directory)
    csv_path, md_path = directory / "report.csv", directory / "report.md"
    table.to_csv(csv_path, index=False)
    body = [f"# {title}", "", markdown_table(table)]
    lines = [*notes, *(f"warning: {warning}" for warning in latency_warnings(table))]
    if lines:
        body += [f"- {line}" for line in lines] + [""]
    md_path.write_text("\n".join(body))
    return [csv_path, md_path]
