"""The context guard's decisions, and upstream length refusals read in each wording."""

from __future__ import annotations

import pytest

from qwenproxy.errors import ContextLengthExceededError
from qwenproxy.pipeline.guards.context import ContextGuard
from qwenproxy.pipeline.guards.tokens import PromptCounter
from qwenproxy.upstream.model_facts import ModelFacts


class CountingCounter(PromptCounter):
    """The real counter, noting how often the exact count runs."""

    def __init__(self) -> None:
        super().__init__()
        self.exact_counts = 0

    def count_chat(self, messages, tools=None):
        self.exact_counts += 1
        return super().count_chat(messages, tools)


def body(text: str, **extra):
    return {"messages": [{"role": "user", "content": text}], **extra}


@pytest.fixture
def counter():
    return CountingCounter()


def fit(guard, request, facts):
    return guard.fit(guard.measure(request), request, facts)


def test_a_prompt_far_below_the_window_is_not_counted(counter):
    guard = ContextGuard(counter)
    result = fit(guard, body("hello " * 1000, max_tokens=32000), ModelFacts(1_000_000, 65_536))
    assert result.max_tokens is None
    assert counter.exact_counts == 0


def test_a_prompt_over_the_window_is_refused_with_both_numbers(counter):
    guard = ContextGuard(counter)
    request = body("hello " * 2000)  # 2000 tokens: " hello" is one token, "hello" one more
    with pytest.raises(ContextLengthExceededError) as caught:
        fit(guard, request, ModelFacts(1500, 1000))
    error = caught.value
    assert error.limit == 1500
    assert error.prompt_tokens == counter.count_chat(request["messages"])
    assert error.status == 400 and error.code == "context_length_exceeded"
    assert error.message == (
        f"This model's maximum context length is 1500 tokens. However, your messages "
        f"resulted in {error.prompt_tokens} tokens."
    )
    assert error.anthropic_message() == (
        f"prompt is too long: {error.prompt_tokens} tokens > 1500 maximum"
    )


def test_max_tokens_is_lowered_to_what_fits(counter):
    guard = ContextGuard(counter, floor=100)
    request = body("hello " * 2000, max_tokens=32000)
    prompt = counter.count_chat(request["messages"])
    result = fit(guard, request, ModelFacts(prompt + 5000, 65_536))
    assert (result.field, result.max_tokens) == ("max_tokens", 5000)


def test_max_completion_tokens_is_lowered_too(counter):
    guard = ContextGuard(counter, floor=100)
    request = body("hello " * 2000, max_completion_tokens=32000)
    prompt = counter.count_chat(request["messages"])
    result = fit(guard, request, ModelFacts(prompt + 700, None))
    assert (result.field, result.max_tokens) == ("max_completion_tokens", 700)


def test_room_below_the_floor_is_the_error(counter):
    guard = ContextGuard(counter, floor=1024)
    request = body("hello " * 2000, max_tokens=32000)
    prompt = counter.count_chat(request["messages"])
    with pytest.raises(ContextLengthExceededError):
        fit(guard, request, ModelFacts(prompt + 500, None))


def test_a_small_max_tokens_that_fits_is_kept_under_the_floor(counter):
    guard = ContextGuard(counter, floor=1024)
    request = body("hello " * 2000, max_tokens=50)
    prompt = counter.count_chat(request["messages"])
    assert fit(guard, request, ModelFacts(prompt + 500, None)).max_tokens is None


def test_max_tokens_above_the_models_output_limit_is_capped(counter):
    guard = ContextGuard(counter)
    assert fit(guard, body("hi", max_tokens=32000), ModelFacts(32_768, 8_192)).max_tokens == 8_192


def test_unknown_window_or_guard_off_changes_nothing(counter):
    request = body("hello " * 2000, max_tokens=32000)
    assert fit(ContextGuard(counter), request, ModelFacts()).max_tokens is None
    assert fit(ContextGuard(counter, enabled=False), request, ModelFacts(10, 10)).max_tokens is None
    assert counter.exact_counts == 0
