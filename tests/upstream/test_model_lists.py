"""The upstreams' model lists: parsed, cached in the database, refetched only when stale
and by one worker at a time, merged under the tables; a failure changes nothing."""

from __future__ import annotations

import threading

import pytest
import requests

from qwenproxy.upstream.model_facts import ModelFacts, ModelFactsBook
from qwenproxy.upstream.model_lists import (
    ListedModel,
    ModelListRefresher,
    ModelListSource,
    fetch_model_list,
    parse_model_list,
)

OPENROUTER_LIST = {
    "data": [
        {
            "id": "qwen/qwen4-max",
            "context_length": 1_000_000,
            "top_provider": {"context_length": 1_000_000, "max_completion_tokens": 65_536},
            "pricing": {"prompt": "0.0000015", "completion": "0.0000045"},
        },
        {"id": "qwen/qwen3-coder-plus", "context_length": 5},
        {"id": "vendor/other"},
    ]
}
SOURCE = ModelListSource("openrouter", "http://unused.test/api/v1/models")


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


class Lists:
    """A fetch that answers from a script and counts its calls."""

    def __init__(self, *answers) -> None:
        self.answers = list(answers)
        self.calls = 0

    def __call__(self, http, source):
        self.calls += 1
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        return parse_model_list(answer)


def refresher(database, fetch, clock, facts=None, interval=3600.0):
    return ModelListRefresher(
        database, requests.Session(), [SOURCE], facts or ModelFactsBook(), interval, clock, fetch
    )


def test_openrouters_list_gives_windows_output_limits_and_prices():
    models = {m.id: m for m in parse_model_list(OPENROUTER_LIST)}
    assert models["qwen/qwen4-max"] == ListedModel(
        "qwen/qwen4-max", 1_000_000, 65_536, {"prompt": "0.0000015", "completion": "0.0000045"}
    )
    assert models["vendor/other"].context_length is None


def test_a_vllm_list_gives_max_model_len():
    [model] = parse_model_list({"data": [{"id": "Qwen/Qwen3-8B", "max_model_len": 32768}]})
    assert model.context_length == 32768


def test_a_new_model_becomes_known_but_the_tables_win(database):
    facts = ModelFactsBook()
    refresher(database, Lists(OPENROUTER_LIST), Clock(), facts).run_once()
    assert facts.facts("openrouter", "qwen/qwen4-max") == ModelFacts(1_000_000, 65_536)
    assert facts.facts("openrouter", "qwen/qwen3-coder-plus").context_length == 1_000_000
    assert "qwen/qwen4-max" in facts.listed_ids("openrouter")


def test_a_fresh_cache_is_not_refetched_and_other_workers_read_it(database):
    clock, fetch = Clock(), Lists(OPENROUTER_LIST)
    refresher(database, fetch, clock).run_once()
    other_facts = ModelFactsBook()
    other = refresher(database, fetch, clock, other_facts)  # another worker or instance
    other.run_once()
    clock.now += 1800
    other.run_once()
    assert fetch.calls == 1
    assert other_facts.facts("openrouter", "qwen/qwen4-max").context_length == 1_000_000
    clock.now += 1801
    other.run_once()
    assert fetch.calls == 2


def test_only_one_worker_fetches_a_stale_list(database):
    clock, fetch = Clock(), Lists(OPENROUTER_LIST)
    first, second = refresher(database, fetch, clock), refresher(database, fetch, clock)
    assert first.refresh_stale() == ["openrouter"]
    assert second.refresh_stale() == []
    clock.now += 3601
    assert first._claim("openrouter", clock.now) is True
    assert second._claim("openrouter", clock.now) is False


def test_an_unreachable_list_changes_nothing_and_is_retried_later(database):
    clock = Clock()
    fetch = Lists(OPENROUTER_LIST, requests.ConnectionError("down"), OPENROUTER_LIST)
    facts = ModelFactsBook()
    worker = refresher(database, fetch, clock, facts)
    worker.run_once()
    clock.now += 3601
    worker.run_once()  # fails: the cached list stays
    assert facts.facts("openrouter", "qwen/qwen4-max").context_length == 1_000_000
    assert worker.cached()["openrouter"][1][0].id == "qwen/qwen4-max"
    worker.run_once()  # not before the retry delay
    assert fetch.calls == 2
    clock.now += 601
    worker.run_once()
    assert fetch.calls == 3


def test_fetch_reads_the_upstreams_list_with_its_key(fake):
    fake.model_list = OPENROUTER_LIST
    source = ModelListSource("dashscope", fake.api_base + "/models", {"Authorization": "Bearer k"})
    with requests.Session() as http:
        models = fetch_model_list(http, source)
    assert [m.id for m in models][:1] == ["qwen/qwen4-max"]
    assert fake.model_list_requests[-1]["authorization"] == "Bearer k"


def test_fetch_failure_raises(fake):
    source = ModelListSource("dashscope", fake.api_base + "/models")
    with requests.Session() as http, pytest.raises(ValueError, match="HTTP 404"):
        fetch_model_list(http, source)


def test_refresh_off_starts_nothing(database):
    worker = refresher(database, Lists(OPENROUTER_LIST), Clock(), interval=0)
    worker.start()
    assert not any(t.name == "qwenproxy-model-lists" for t in threading.enumerate())
