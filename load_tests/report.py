"""How the benchmark writes figures: a cell is the median (min–max) of the repetitions; a
target is a figure or ratio taken within each repetition, then its median and range."""

from __future__ import annotations

import statistics

VERDICT = {True: "pass", False: "**FAIL**", None: "n/a"}


def num(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:.{0 if abs(value) >= 100 else 1 if abs(value) >= 10 else 2}f}"


def spread(values: list[float | None]) -> str:
    measured = [v for v in values if v is not None]
    if not measured:
        return "–"
    return f"{num(statistics.median(measured))} ({num(min(measured))}–{num(max(measured))})"


def table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def target(name: str, values: list[float | None], wanted: float, higher: bool) -> dict:
    """One target's value in each repetition (None: not measured), its median and range,
    and whether the median meets ``wanted``."""
    measured = [v for v in values if v is not None]
    median = statistics.median(measured) if measured else None
    passed = None if median is None else (median >= wanted if higher else median <= wanted)
    spread_ = {"min": min(measured, default=None), "max": max(measured, default=None)}
    figures = {"target": name, "values": values, "median": median, **spread_}
    return {**figures, "wanted": wanted, "higher_is_better": higher, "passed": passed}


def targets_table(targets: list[dict], heading: str = "target (ratio)") -> str:
    rows = [
        [
            t["target"],
            num(t["median"]),
            f"{num(t['min'])}–{num(t['max'])}",
            ("≥ " if t["higher_is_better"] else "≤ ") + num(t["wanted"]),
            VERDICT[t["passed"]],
        ]
        for t in targets
    ]
    return table([heading, "median", "range", "wanted", "result"], rows)
