"""Ledger periods (ledger/stats.py): durations."""

from __future__ import annotations

import pytest

from qwenproxy.ledger.stats import parse_duration


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
