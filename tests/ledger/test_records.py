"""One ledger row's readings: what an upstream's `usage` says of its prompt cache."""

from __future__ import annotations

from qwenproxy.ledger.records import cache_counts, explicit_cache


def test_cache_counts_read_model_studios_fields():
    usage = {
        "prompt_tokens": 3019,
        "prompt_tokens_details": {"cached_tokens": 2048, "cache_creation_input_tokens": 500},
    }
    assert cache_counts(usage) == (2048, 500)
    assert cache_counts({"prompt_tokens": 5}) == (None, None)
    assert cache_counts(None) == (None, None)
    assert cache_counts({"prompt_tokens_details": {"cached_tokens": True}}) == (None, None)


def test_an_explicit_cache_is_told_by_its_cache_type_or_write_count():
    assert explicit_cache({"prompt_tokens_details": {"cache_type": "ephemeral"}})
    assert explicit_cache({"prompt_tokens_details": {"cache_creation_input_tokens": 0}})
    assert not explicit_cache({"prompt_tokens_details": {"cached_tokens": 10}})
    assert not explicit_cache({})
