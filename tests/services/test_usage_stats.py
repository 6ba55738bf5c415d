"""Ledger arithmetic (services/usage_stats.py): durations and percentiles."""

from __future__ import annotations

import pytest

from qwenproxy.services.usage_stats import parse_duration, percentile


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90", 90), ("90s", 90), ("30m", 1800), ("24h", 86400), ("7d", 604800), (" 1.5h ", 5400)],
)
def test_durations_parse(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "h", "abc", "-1h", "0", "5w", "9999d", "nan"])
def test_bad_durations_are_rejected(text):
    with pytest.raises(ValueError):
        parse_duration(text)


def test_percentiles_interpolate_linearly():
    assert percentile([], 0.5) is None
    assert percentile([7.0], 0.95) == 7.0
    assert percentile([4, 1, 3, 2], 0.5) == 2.5
    assert percentile(list(range(1, 101)), 0.95) == pytest.approx(95.05)
