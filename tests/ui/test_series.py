"""The over-time series behind the allocation and pending charts, against a brute-force sum."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from api.ui.data import Series

interval = st.tuples(st.floats(-50, 150), st.floats(0, 120), st.floats(0.1, 8)).map(lambda t: (t[0], t[0] + t[1], t[2]))


@given(st.lists(interval, max_size=20), st.integers(1, 12))
def test_series_is_the_time_weighted_mean_per_bucket(intervals: list[tuple[float, float, float]], buckets: int) -> None:
    series = Series(0.0, 100.0 / buckets, buckets)
    for begin, end, amount in intervals:
        series.add("k", begin, end, amount)
    step = 100.0 / buckets
    expected = [
        sum(amount * max(0.0, min(end, (i + 1) * step) - max(begin, i * step)) for begin, end, amount in intervals)
        / step
        for i in range(buckets)
    ]
    got = series.values.get("k", [0.0] * buckets)
    assert all(abs(a - b) < 1e-6 * max(1.0, abs(b)) for a, b in zip(got, expected, strict=True)), (got, expected)
