"""Model facts: built-in tables, MODEL_INFO over them, upstream lists under them, and
aliases that inherit their target's facts."""

from __future__ import annotations

from qwenproxy.upstream.model_facts import BUILTIN_FACTS, ModelFacts, ModelFactsBook

ALIASES = {"dashscope": {"coder-model": "qwen3-coder-plus", "fast": "qwen3-coder-flash"}}


def book(**kwargs) -> ModelFactsBook:
    return ModelFactsBook(
        upstream_name=lambda backend, model: ALIASES.get(backend, {}).get(model, model), **kwargs
    )


def test_built_in_windows_of_the_issue():
    facts = BUILTIN_FACTS
    assert facts["dashscope"]["qwen3-coder-plus"].context_length == 1_000_000
    assert facts["coding-plan"]["qwen3-coder-next"].context_length == 262_144
    assert facts["coding-plan"]["qwen3.7-plus"].context_length == 1_000_000


def test_an_alias_inherits_its_targets_facts():
    assert book().facts("dashscope", "coder-model") == ModelFacts(1_000_000, 65_536)


def test_model_info_wins_and_extends():
    overrides = {
        "dashscope": {
            "qwen3-coder-plus": ModelFacts(500_000, None),
            "my-model": ModelFacts(8_000, 1_000),
        }
    }
    facts = book(overrides=overrides)
    assert facts.facts("dashscope", "qwen3-coder-plus") == ModelFacts(500_000, 65_536)
    assert facts.facts("dashscope", "coder-model") == ModelFacts(500_000, 65_536)
    assert facts.facts("dashscope", "my-model") == ModelFacts(8_000, 1_000)


def test_an_alias_own_entry_wins_over_its_target():
    overrides = {"dashscope": {"fast": ModelFacts(None, 4_096)}}
    assert book(overrides=overrides).facts("dashscope", "fast") == ModelFacts(1_000_000, 4_096)


def test_upstream_lists_fill_gaps_under_the_tables():
    facts = book()
    facts.set_listed(
        "dashscope",
        {"qwen4-max": ModelFacts(1_000_000, None), "qwen3-coder-plus": ModelFacts(1, 1)},
        ("qwen4-max", "qwen3-coder-plus"),
    )
    assert facts.facts("dashscope", "qwen4-max").context_length == 1_000_000
    assert facts.facts("dashscope", "qwen3-coder-plus") == ModelFacts(1_000_000, 65_536)


def test_unknown_models_have_no_facts():
    assert book().facts("dashscope", "nope") == ModelFacts()
    assert not ModelFacts().known
