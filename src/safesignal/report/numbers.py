"""How numbers are written in the report: rates as percentages, one way everywhere.

Every formatter takes whatever the results file holds and returns text; a missing or
non-numeric value becomes MISSING rather than an error, because optional fields are optional.
"""

from __future__ import annotations

import math

MISSING = "—"


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def percent(rate, digits: int = 1) -> str:
    """A fraction in [0, 1] as a percentage without the sign: 0.125 -> "12.5"."""
    return f"{rate * 100:.{digits}f}" if is_number(rate) else MISSING


def interval_of(value) -> tuple[float, float] | None:
    """(lo, hi) when `value` is a two-number list, else None."""
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(is_number(v) for v in value):
        return float(value[0]), float(value[1])
    return None


def percent_interval(ci) -> str:
    """A 95% interval of a rate as "[8.1, 19.0]"; empty when there is none."""
    bounds = interval_of(ci)
    return f"[{percent(bounds[0])}, {percent(bounds[1])}]" if bounds else ""


def rate_with_interval(rate, ci) -> str:
    if not is_number(rate):
        return MISSING
    shown = percent_interval(ci)
    return f"{percent(rate)} {shown}" if shown else percent(rate)


def decimal(value, digits: int = 3) -> str:
    return f"{value:.{digits}f}" if is_number(value) else MISSING


def times(value) -> str:
    """A ratio as "1.12×"."""
    return f"{value:.2f}×" if is_number(value) else MISSING


def count(value) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return MISSING
    return str(int(value)) if float(value).is_integer() else f"{value:.1f}"


def wall_time(results: dict) -> str:
    """A results file's wall time, saying when it covers only a resumed invocation."""
    text = seconds(results.get("wall_seconds"))
    if results.get("reused_batches"):
        text += (f" (this invocation only: {results['reused_batches']} batches were read back from "
                 "an earlier run's cells)")
    return text


def seconds(value) -> str:
    if not is_number(value):
        return MISSING
    minutes, rest = divmod(value, 60)
    return f"{int(minutes)} min {rest:.0f} s" if minutes else f"{rest:.1f} s"
