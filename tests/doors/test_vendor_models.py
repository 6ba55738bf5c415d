"""Vendor model names (claude-*, gpt-*) map through ANTHROPIC_MODEL_MAP; ours pass through."""

from __future__ import annotations

import pytest

from qwenproxy.doors.vendor_models import map_vendor_model


@pytest.mark.parametrize(
    "name",
    [
        "claude-sonnet-4-6",
        "claude-haiku-4-5-20251001",
        "gpt-5-codex",
        "o3",
        "o4-mini",
        "codex-mini",
    ],
)
def test_vendor_names_go_to_the_default_model_without_a_map(name):
    assert map_vendor_model(name, {}) is None


@pytest.mark.parametrize(
    "name",
    ["dashscope:qwen3-coder-plus", "qwen3-coder-plus", "coder-model", "main", "qwen/qwen3-coder"],
)
def test_our_own_names_pass_through(name):
    assert map_vendor_model(name, {"*": "dashscope:qwen-max"}) == name


def test_star_maps_every_vendor_name():
    model_map = {"*": "dashscope:qwen3-coder-plus"}
    assert map_vendor_model("claude-opus-4-1", model_map) == "dashscope:qwen3-coder-plus"
    assert map_vendor_model("gpt-5", model_map) == "dashscope:qwen3-coder-plus"


def test_specific_patterns_win_over_star_in_their_order():
    model_map = {
        "*": "dashscope:qwen3-coder-plus",
        "claude-haiku-*": "dashscope:qwen3-coder-flash",
        "claude-*": "coding-plan:qwen3-coder-plus",
    }
    assert map_vendor_model("claude-haiku-4-5", model_map) == "dashscope:qwen3-coder-flash"
    assert map_vendor_model("Claude-Sonnet-4-6", model_map) == "coding-plan:qwen3-coder-plus"
    assert map_vendor_model("gpt-5-codex", model_map) == "dashscope:qwen3-coder-plus"


def test_an_explicit_pattern_may_name_any_model():
    assert map_vendor_model("fast", {"fast": "dashscope:qwen3-coder-flash"}) == (
        "dashscope:qwen3-coder-flash"
    )


@pytest.mark.parametrize("name", [None, "", "  "])
def test_no_model_means_the_default(name):
    assert map_vendor_model(name, {"*": "x:y"}) is None
