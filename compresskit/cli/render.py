"""What the commands print: the two consoles (stdout, stderr), a key-value table, percentages,
and the comparison table of compressed models (`_print_report`)."""

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

console = Console()
err_console = Console(stderr=True)


def _print_table(title: str, rows: list[tuple[str, str]]) -> None:
    """`rows` of (key, value) under `title`, keys in bold, no header."""
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column(overflow="fold")  # a long path wraps instead of losing its end
    for key, value in rows:
        table.add_row(key, escape(value))
    console.print(table)


def _pct(value: float | None) -> str:
    """A fraction in [0, 1] as a percentage with two decimals; "—" when unknown."""
    return "—" if value is None else f"{100 * value:.2f}%"


def _print_report(table, title: str) -> None:
    """A `report.comparison_table` in 80 columns: per batch size N the latency in ms as
    median±spread% of its repeats ("ms bN") and the speed-up over the first row ("speed × bN":
    the paired ``speedup_bN``±spread% where measured in interleaved rounds), then one warning per
    latency or speed-up that varies too much between repeats (`report.latency_warnings`).
    Long model names wrap instead of being cut."""
    import math
    import re

    from compresskit.report import latency_warnings

    def known(value: object) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)

    def ms(value: object, spread: object) -> str:
        if not known(value):
            return "—"
        text = f"{value:.2f}" if value < 10 else f"{value:.1f}" if value < 100 else f"{value:.0f}"
        return text + (f"±{100 * spread:.0f}%" if known(spread) else "")

    def number(value: object, fmt: str, scale: float = 1.0, unit: str = "") -> str:
        return f"{value / scale:{fmt}}{unit}" if known(value) else "—"

    found = (re.fullmatch(r"latency_b(\d+)_ms", str(c)) for c in table.columns)
    batches = sorted(int(m.group(1)) for m in found if m)
    # Columns one space apart (the SIMPLE_HEAD divider), no outer edge: 80 columns leave the model
    # name about 20 characters before it wraps.
    view = Table(box=box.SIMPLE_HEAD, title=title, title_justify="left", show_edge=False, padding=0)
    view.add_column("model", overflow="fold")
    labels = ["params", "MACs", *(f"ms\nb{n}" for n in batches), "test\nacc", "MACs\n×"]
    for label in [*labels, *(f"speed ×\nb{n}" for n in batches)]:
        view.add_column(label, justify="right", no_wrap=True)
    for row in table.to_dict("records"):
        speed = []
        for n in batches:  # the paired speed-up ± its spread, else comparison_table's ratio of medians
            if known(row.get(f"speedup_b{n}")):
                speed.append(ms(row[f"speedup_b{n}"], row.get(f"speedup_b{n}_spread")))
                continue
            ratio = row.get(f"latency_reduction_b{n}")
            if ratio is None:
                ratio = table[f"latency_b{n}_ms"].iloc[0] / row[f"latency_b{n}_ms"]
            speed.append(number(ratio, ".2f"))
        view.add_row(
            escape(str(row["model"])), number(row.get("params"), ",.0f", 1e3, "k"),
            number(row.get("macs"), ".1f", 1e6, "M"),
            *(ms(row[f"latency_b{n}_ms"], row.get(f"latency_b{n}_spread")) for n in batches),
            _pct(row["test_acc"] if known(row.get("test_acc")) else None),
            number(row.get("macs_reduction"), ".2f"), *speed,
        )  # fmt: skip
    console.print(view)
    for warning in latency_warnings(table):
        console.print(f"[yellow]warning:[/] {escape(warning)}")
