"""The sketches' bins (agentbus.metrics.sketches): a bin's value is within 1% of every value in it,
bins sort as their values do, and the nearest-rank percentile over bins is within 1% of the exact
one, checked against values sorted here."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from agentbus.metrics.sketches import ALPHA, bin_of, percentile, value_of

finite = st.floats(allow_nan=False, allow_infinity=False)


@given(finite)
def test_a_bins_value_is_within_alpha_of_the_value(v: float) -> None:
    got = value_of(bin_of(v))
    assert math.isclose(got, v, rel_tol=ALPHA * 1.0001) or (v != 0 and abs(v) < 1e-300)
    assert (got > 0) == (v > 0) and (got < 0) == (v < 0)


@given(finite, finite)
def test_bins_sort_as_their_values(a: float, b: float) -> None:
    if a < b:
        assert bin_of(a) <= bin_of(b)


def nearest_rank(values: list[float], p: int) -> float:
    ordered = sorted(values)
    return ordered[-(-p * len(ordered) // 100) - 1]


@given(st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=1, max_size=300), st.sampled_from([50, 95]))
def test_percentile_over_bins_is_within_alpha_of_nearest_rank(values: list[float], p: int) -> None:
    bins: dict[int, int] = {}
    for v in values:
        bins[bin_of(v)] = bins.get(bin_of(v), 0) + 1
    got, want = percentile(bins, p, min(values), max(values)), nearest_rank(values, p)
    assert math.isclose(got, want, rel_tol=ALPHA * 1.0001, abs_tol=1e-300)
