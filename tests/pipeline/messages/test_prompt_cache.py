"""Cache markers: counting, the per-backend switch, and taking them off again."""

from __future__ import annotations

import copy

from qwenproxy.pipeline.messages.prompt_cache import (
    count_markers,
    markers_enabled,
    without_markers,
)

EPHEMERAL = {"type": "ephemeral"}


def marked_chat() -> dict:
    return {
        "model": "qwen3-coder-plus",
        "tools": [
            {"type": "function", "function": {"name": "Read"}},
            {"type": "function", "function": {"name": "Edit"}, "cache_control": EPHEMERAL},
        ],
        "messages": [
            {
                "role": "system",
                "content": [
                    {"type": "text", "text": "one", "cache_control": EPHEMERAL},
                    {"type": "text", "text": "two"},
                ],
            },
            {
                "role": "user",
                "content": [{"type": "text", "text": "hi"}, {"type": "text", "text": "x"}],
            },
            {
                "role": "tool",
                "tool_call_id": "t1",
                "content": [{"type": "text", "text": "out", "cache_control": EPHEMERAL}],
            },
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "see", "cache_control": EPHEMERAL},
                    {"type": "image_url", "image_url": {"url": "https://x/a.png"}},
                ],
            },
        ],
    }


def test_without_markers_gives_back_the_plain_forms():
    chat = marked_chat()
    before = copy.deepcopy(chat)
    plain = without_markers(chat)
    assert chat == before  # the marked body is left as it was
    assert count_markers(plain) == 0
    assert plain["tools"] == [
        {"type": "function", "function": {"name": "Read"}},
        {"type": "function", "function": {"name": "Edit"}},
    ]
    assert plain["messages"] == [
        {"role": "system", "content": "one\n\ntwo"},
        chat["messages"][1],  # never marked: untouched, parts and all
        {"role": "tool", "tool_call_id": "t1", "content": "out"},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "see"},
                {"type": "image_url", "image_url": {"url": "https://x/a.png"}},
            ],
        },
    ]


def test_the_switch_defaults_on_for_verified_backends_only_and_can_be_flipped():
    assert markers_enabled("dashscope", {}) is True
    assert markers_enabled("coding-plan", {}) is True
    assert markers_enabled("qwen-oauth", {}) is True
    assert markers_enabled("openrouter", {}) is False
    assert markers_enabled("my-vllm", {}) is False
    assert markers_enabled("dashscope", {"dashscope": False}) is False
    assert markers_enabled("my-vllm", {"my-vllm": True}) is True
