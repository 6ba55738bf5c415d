"""What each backend's models can take: context window and maximum output tokens.

Three layers, later ones win: what an upstream's own model list said (read in the
background, upstream/model_lists.py), the built-in tables below, and `MODEL_INFO`. A name
the tables do not know is looked up again under the upstream name its alias maps to, so
an alias inherits its target's facts.

Sources of the built-in tables (late 2026):
- dashscope, coding-plan: Alibaba Cloud Model Studio, "Models" (context window / max
  output columns), https://www.alibabacloud.com/help/en/model-studio/models, and the
  Coding Plan model list, https://www.alibabacloud.com/help/en/model-studio/coding-plan;
  glm / kimi / MiniMax on the Coding Plan from their vendors' model cards (Zhipu GLM-5 /
  GLM-4.7 200K, Moonshot Kimi K2.5 256K, MiniMax-M2.5 ~200K).
- qwen-oauth: qwen-code's token limits (packages/core/src/core/tokenLimits.ts), whose
  `coder-model` is served with the 1M window of Qwen3.7 / Qwen3-Coder-Plus.
- openrouter: the model pages https://openrouter.ai/qwen/<model> (context length, max
  output), the same figures as https://openrouter.ai/api/v1/models.
- fireworks: https://fireworks.ai/models/fireworks/<model> (262,144 context).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class ModelFacts:
    context_length: int | None = None
    max_output_tokens: int | None = None

    def over(self, base: ModelFacts | None) -> ModelFacts:
        """These facts, with the gaps filled from `base`."""
        if base is None:
            return self
        return ModelFacts(
            self.context_length if self.context_length is not None else base.context_length,
            self.max_output_tokens
            if self.max_output_tokens is not None
            else base.max_output_tokens,
        )

    @property
    def known(self) -> bool:
        return self.context_length is not None or self.max_output_tokens is not None


def _f(context: int, output: int) -> ModelFacts:
    return ModelFacts(context, output)


_QWEN_COMMON = {
    "qwen3-coder-plus": _f(1_000_000, 65_536),
    "qwen3-coder-flash": _f(1_000_000, 65_536),
    "qwen3-coder-next": _f(262_144, 65_536),
    "qwen3-max": _f(262_144, 65_536),
    "qwen3-max-2026-01-23": _f(262_144, 65_536),
    "qwen3.5-plus": _f(1_000_000, 65_536),
    "qwen3.6-plus": _f(1_000_000, 65_536),
    "qwen3.7-plus": _f(1_000_000, 65_536),
    "qwen-plus": _f(1_000_000, 32_768),
    "qwen-turbo": _f(1_000_000, 16_384),
    "qwen-max": _f(32_768, 8_192),
    "qwen3-vl-plus": _f(262_144, 32_768),
}

BUILTIN_FACTS: dict[str, dict[str, ModelFacts]] = {
    "dashscope": dict(_QWEN_COMMON),
    "coding-plan": {
        **_QWEN_COMMON,
        "glm-5": _f(202_752, 131_072),
        "glm-4.7": _f(202_752, 131_072),
        "kimi-k2.5": _f(262_144, 32_768),
        "MiniMax-M2.5": _f(204_800, 131_072),
    },
    "qwen-oauth": {
        "coder-model": _f(1_000_000, 65_536),  # qwen3-coder-*, vision-model: its aliases
        "qwen-turbo": _f(1_000_000, 16_384),
        "qwen-plus": _f(1_000_000, 32_768),
        "qwen-max": _f(32_768, 8_192),
        "qwen2.5-coder-32b-instruct": _f(131_072, 8_192),
        "qwen2.5-coder-14b-instruct": _f(131_072, 8_192),
        "qwen2.5-coder-7b-instruct": _f(131_072, 8_192),
        "qwen2.5-72b-instruct": _f(131_072, 8_192),
        "qwen2.5-32b-instruct": _f(131_072, 8_192),
        "qwen2.5-14b-instruct": _f(131_072, 8_192),
        "qwen2.5-7b-instruct": _f(131_072, 8_192),
    },
    "openrouter": {
        "qwen/qwen3-coder": _f(262_144, 65_536),
        "qwen/qwen3-coder-plus": _f(1_000_000, 65_536),
        "qwen/qwen3-coder-flash": _f(1_000_000, 65_536),
        "qwen/qwen3-coder-next": _f(262_144, 65_536),
        "qwen/qwen3-max": _f(262_144, 65_536),
    },
    "fireworks": {
        "accounts/fireworks/models/qwen3-coder-480b-a35b-instruct": _f(262_144, 65_536),
        "accounts/fireworks/models/qwen3-coder-30b-a3b-instruct": _f(262_144, 65_536),
    },
}


class ModelFactsBook:
    """Facts per (backend, model), from the upstream lists, the tables and MODEL_INFO."""

    def __init__(
        self,
        overrides: Mapping[str, Mapping[str, ModelFacts]] | None = None,
        builtin: Mapping[str, Mapping[str, ModelFacts]] | None = None,
        upstream_name: Callable[[str, str], str] | None = None,
    ) -> None:
        self._builtin = BUILTIN_FACTS if builtin is None else builtin
        self._overrides = overrides or {}
        self._upstream_name = upstream_name or (lambda backend, model: model)
        self._listed: dict[str, dict[str, ModelFacts]] = {}
        self._listed_ids: dict[str, tuple[str, ...]] = {}

    def set_listed(
        self, backend: str, facts: Mapping[str, ModelFacts], ids: tuple[str, ...]
    ) -> None:
        """What the upstream's model list said (replaces the previous list of `backend`)."""
        self._listed[backend] = dict(facts)
        self._listed_ids[backend] = ids

    def listed_ids(self, backend: str) -> tuple[str, ...]:
        return self._listed_ids.get(backend, ())

    def known_names(self, backend: str) -> set[str]:
        """Models the built-in table or MODEL_INFO describe."""
        return set(self._builtin.get(backend, {})) | set(self._overrides.get(backend, {}))

    def facts(self, backend: str, model: str) -> ModelFacts:
        """Facts of `model` as a client names it on `backend`. Layer by layer (upstream
        list, tables, MODEL_INFO), an alias's own entry fills in over its target's, so an
        alias inherits its target's facts and MODEL_INFO about the target wins over the
        table's entry for the alias."""
        target = self._upstream_name(backend, model)
        found: ModelFacts | None = None
        for layer in (self._listed, self._builtin, self._overrides):
            table = layer.get(backend, {})
            facts = table.get(model)
            if target != model:
                inherited = table.get(target)
                facts = inherited if facts is None else facts.over(inherited)
            if facts is not None:
                found = facts.over(found)
        return found or ModelFacts()
