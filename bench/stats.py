"""Pure helpers: percentiles, medians of repeated runs, and the Markdown table. Unit-tested."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) by the nearest-rank method; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def summary(latencies_s: Sequence[float]) -> dict[str, float]:
    """p50/p90/p99/max in milliseconds, and the count."""
    return {
        "n": float(len(latencies_s)),
        "p50_ms": percentile(latencies_s, 50) * 1000,
        "p90_ms": percentile(latencies_s, 90) * 1000,
        "p99_ms": percentile(latencies_s, 99) * 1000,
        "max_ms": (max(latencies_s) * 1000) if latencies_s else math.nan,
    }


def median(values: Iterable[float]) -> float:
    present = [v for v in values if v is not None and not math.isnan(v)]
    return statistics.median(present) if present else math.nan


def median_of(runs: Sequence[dict[str, float]], key: str) -> float:
    return median(r.get(key, math.nan) for r in runs)


def fmt(value: float, unit: str = "") -> str:
    """A figure for the table: thousands separated, at most 3 significant decimals."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if abs(value) >= 100:
        text = f"{value:,.0f}"
    elif abs(value) >= 10:
        text = f"{value:.1f}"
    else:
        text = f"{value:.2f}"
    return f"{text} {unit}".strip()


@dataclass
class Row:
    """One line of the results table."""

    benchmark: str
    backend: str
    figure: str
    target: str = ""
    met: bool | None = None
    runs: list[str] = field(default_factory=list)  # each run's figure, for the detail column
    value: float = math.nan  # the median as a number (for --compare's ratios)

    def cells(self) -> list[str]:
        verdict = {True: "yes", False: "**no**", None: ""}[self.met]
        return [self.benchmark, self.backend, self.figure, self.target, verdict, ", ".join(self.runs)]


HEADER = ["benchmark", "db", "median", "target", "met", "each run"]


def table(rows: Sequence[Row]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    for row in rows:
        lines.append("| " + " | ".join(c.replace("|", "/") for c in row.cells()) + " |")
    return "\n".join(lines)


def plain_table(rows: Sequence[Row]) -> str:
    """The same table for a terminal: aligned columns, no Markdown."""
    cells = [HEADER, *(r.cells() for r in rows)]
    widths = [max(len(c[i].replace("**", "")) for c in cells) for i in range(len(HEADER) - 1)]
    out = []
    for c in cells:
        out.append("  ".join(c[i].replace("**", "").ljust(widths[i]) for i in range(len(widths))))
    return "\n".join(out)


def ratio(current: float, ref: float) -> float:
    """current / REF; NaN where either is missing or REF is 0."""
    if current is None or ref is None or math.isnan(current) or math.isnan(ref) or ref == 0:
        return math.nan
    return current / ref


COMPARE_HEADER = ["benchmark", "db", "current", "REF", "current/REF", "target", "met", "each run"]


def compare_cells(current: Row, ref: Row | str) -> list[str]:
    """One line of `--compare`'s table: `ref` is REF's Row, or why it has none."""
    verdict = {True: "yes", False: "no", None: "-"}
    if isinstance(ref, str):
        return [
            current.benchmark,
            current.backend,
            current.figure,
            ref,
            "n/a",
            current.target,
            verdict[current.met] if current.target else "",
            ", ".join(current.runs),
        ]
    r = ratio(current.value, ref.value)
    return [
        current.benchmark,
        current.backend,
        current.figure,
        ref.figure,
        "n/a" if math.isnan(r) else f"{r:.2f}x",
        current.target,
        f"{verdict[current.met]} / {verdict[ref.met]}" if current.target else "",
        f"{', '.join(current.runs)} / {', '.join(ref.runs)}",
    ]


def compare_table(pairs: Sequence[tuple[Row, Row | str]], ref_name: str = "REF") -> str:
    """`--compare`'s terminal table: each row's median on the current checkout and on REF, and the
    ratio; `met` is "current / REF"; `each run` is the current runs / REF's."""
    header = [*COMPARE_HEADER]
    header[3] = ref_name
    cells = [header, *(compare_cells(c, r) for c, r in pairs)]
    widths = [max(len(c[i]) for c in cells) for i in range(len(header) - 1)]
    return "\n".join(
        "  ".join(c[i].ljust(widths[i]) for i in range(len(widths))) + "  " + c[-1] for c in cells
    )
