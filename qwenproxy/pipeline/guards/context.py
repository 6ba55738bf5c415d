"""The context guard: a prompt that cannot fit the model's window is answered before any
upstream call; one that leaves less room than the `max_tokens` asked for gets
`max_tokens` lowered to what fits. Upstream refusals for length become the same error
(upstream/length_refusals.py reads them).

Cost on the hot path: a byte bound first (`PromptCounter.upper_bound`, ~1 µs per KB); the
exact Qwen count only when that bound comes near the window, run off the gevent hub.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from qwenproxy.errors import ContextLengthExceededError
from qwenproxy.pipeline.guards.tokens import PromptCounter
from qwenproxy.upstream.model_facts import ModelFacts

log = logging.getLogger(__name__)

MAX_TOKENS_HEADER = "X-Qwenproxy-Max-Tokens"
OUTPUT_FIELDS = ("max_tokens", "max_completion_tokens")


@dataclass
class PromptSize:
    """One request's prompt, counted at most once whatever the number of targets."""

    messages: list[Any]
    tools: Any
    counter: PromptCounter
    _bound: int | None = None
    _exact: int | None = None
    counted: bool = field(default=False)

    def bound(self) -> int:
        if self._bound is None:
            self._bound = self.counter.upper_bound(self.messages, self.tools)
        return self._bound

    def exact(self) -> int:
        if self._exact is None:
            self._exact = self.counter.count_chat_off_hub(self.messages, self.tools)
            self.counted = True
        return self._exact


@dataclass(frozen=True)
class Fit:
    """What to change in the body for one target: `max_tokens` lowered, or nothing."""

    max_tokens: int | None = None
    field: str = "max_tokens"


class ContextGuard:
    def __init__(self, counter: PromptCounter, enabled: bool = True, floor: int = 1024) -> None:
        self.counter = counter
        self.enabled = enabled
        self.floor = floor

    def measure(self, body: dict[str, Any]) -> PromptSize:
        return PromptSize(body.get("messages") or [], body.get("tools"), self.counter)

    def fit(self, size: PromptSize, body: dict[str, Any], facts: ModelFacts) -> Fit:
        """Raise ContextLengthExceededError when the prompt leaves the answer less than
        the floor (or than the `max_tokens` asked for, when that is smaller); return the
        lowered `max_tokens` when the one asked for does not fit."""
        window = facts.context_length
        if not self.enabled or window is None:
            return Fit()
        name, asked = _asked_output(body)
        cap = facts.max_output_tokens
        wanted = asked if asked is not None else 0
        need = min(self.floor, asked) if asked is not None else self.floor
        # Cheap first: no exact count while the byte bound leaves room for what is asked.
        if size.bound() + max(wanted, need) <= window:
            return self._capped(name, asked, cap)
        prompt = size.exact()
        room = window - prompt
        if room < max(need, 1):
            raise ContextLengthExceededError(prompt, window)
        if asked is not None and asked > room:
            return Fit(room if cap is None else min(room, cap), name)
        return self._capped(name, asked, cap)

    @staticmethod
    def _capped(name: str, asked: int | None, cap: int | None) -> Fit:
        if asked is not None and cap is not None and asked > cap:
            return Fit(cap, name)
        return Fit()


def _asked_output(body: dict[str, Any]) -> tuple[str, int | None]:
    for name in OUTPUT_FIELDS:
        value = body.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return name, value
    return "max_tokens", None


def refusal_with_numbers(
    error: ContextLengthExceededError,
    guard: ContextGuard | None,
    size: PromptSize | None,
    upstream: dict[str, Any],
    facts: ModelFacts,
) -> ContextLengthExceededError:
    """An upstream's refusal for length, with the prompt's tokens and the window filled in
    where its words did not say them (counted now: the error path only)."""
    prompt = None
    if error.prompt_tokens is None:
        if size is None and guard is not None:
            size = guard.measure(upstream)
        if size is not None:
            try:
                prompt = size.exact()
            except Exception:  # a count is a nicety here, never a new failure
                log.exception("counting a refused prompt failed")
    return error.completed(prompt, facts.context_length)
