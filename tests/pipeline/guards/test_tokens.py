"""Qwen token counts.

Where the expected numbers come from (never from qwenproxy): a one-off run of the
`dashscope` 2.0.2 wheel's own tokenizer (`pip download dashscope==2.0.2 --no-deps`,
unzipped; `dashscope/tokenizers/qwen_tokenizer.py`'s `QwenTokenizer` built on the wheel's
`resources/qwen.tiktoken`), imported by file path without the rest of the package:

    tok = QwenTokenizer("dashscope/resources/qwen.tiktoken")
    len(tok.encode(ENGLISH, allowed_special=set()))   # 21
    len(tok.encode(CHINESE, allowed_special=set()))   # 23
    len(tok.encode(CODE, allowed_special=set()))      # 48
    len(tok.encode("<|im_start|>system\\nYou are terse.<|im_end|>\\n<|im_start|>user\\n"
                   + CHINESE + "<|im_end|>\\n<|im_start|>assistant\\n"))   # 40
"""

from __future__ import annotations

import gzip
import hashlib

import pytest

from qwenproxy.pipeline.guards.tokens import (
    IMAGE_TOKENS,
    VOCAB_PATH,
    VOCAB_SIZE,
    PromptCounter,
    QwenTokenizer,
)

ENGLISH = (
    "The quick brown fox jumps over the lazy dog. Proxies forward requests; they don't answer them."
)
CHINESE = "通义千问是阿里云研发的大语言模型，能够回答问题、创作文字，还能编写代码。"
CODE = (
    "def fib(n: int) -> int:\n    if n < 2:\n        return n\n    return fib(n - 1) + "
    "fib(n - 2)\n\nprint([fib(i) for i in range(10)])\n"
)
# sha256 of dashscope 2.0.2's dashscope/resources/qwen.tiktoken (before gzip).
VOCAB_SHA256 = "b2b1b8dfb5cc5f024bafc373121c6aba3f66f9a5a0269e243470a1de16a33186"


@pytest.fixture(scope="module")
def counter() -> PromptCounter:
    return PromptCounter()


def test_vendored_vocabulary_is_dashscopes_file():
    raw = gzip.decompress(VOCAB_PATH.read_bytes())
    assert hashlib.sha256(raw).hexdigest() == VOCAB_SHA256
    assert len(raw.splitlines()) == VOCAB_SIZE == 151_643


@pytest.mark.parametrize("text, expected", [(ENGLISH, 21), (CHINESE, 23), (CODE, 48), ("", 0)])
def test_text_counts_match_dashscopes_tokenizer(counter, text, expected):
    assert counter.count_text(text) == expected


def test_chinese_is_not_counted_as_characters_over_four(counter):
    assert counter.count_text(CHINESE) > len(CHINESE) / 4 * 2


def test_chat_count_matches_the_rendered_template(counter):
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": CHINESE},
    ]
    assert counter.count_chat(messages) == 40


def test_text_parts_count_like_a_string(counter):
    as_parts = [{"role": "user", "content": [{"type": "text", "text": CHINESE}]}]
    as_string = [{"role": "user", "content": CHINESE}]
    assert counter.count_chat(as_parts) == counter.count_chat(as_string)


def test_long_text_is_counted_in_pieces_without_changing_the_count(counter):
    # CODE ends with a line break and starts with a letter: a pre-token boundary, so the
    # repeated text has exactly 3000 times the sample's 48 tokens.
    assert counter.count_text(CODE * 3000) == 48 * 3000


def test_each_image_counts_at_the_documented_cap(counter):
    image = {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}
    text_only = [{"role": "user", "content": [{"type": "text", "text": "look"}]}]
    with_two = [{"role": "user", "content": [{"type": "text", "text": "look"}, image, image]}]
    assert counter.count_chat(with_two) - counter.count_chat(text_only) == 2 * IMAGE_TOKENS
    assert IMAGE_TOKENS == 1282


def test_tools_and_tool_calls_add_their_json(counter):
    tool = {
        "type": "function",
        "function": {"name": "shell", "parameters": {"type": "object", "properties": {}}},
    }
    plain = [{"role": "user", "content": "run ls"}]
    assert counter.count_chat(plain, [tool]) > counter.count_chat(plain) + 60
    call = {
        "id": "c1",
        "type": "function",
        "function": {"name": "shell", "arguments": '{"cmd": "ls"}'},
    }
    turns = [
        *plain,
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c1", "content": "a.py\nb.py"},
    ]
    assert counter.count_chat(turns) > counter.count_chat(plain) + 20


@pytest.mark.parametrize(
    "messages",
    [
        [{"role": "user", "content": CHINESE * 50}],
        [{"role": "user", "content": "\n\n\n   \t" * 200}],
        [{"role": "system", "content": CODE}, {"role": "user", "content": ENGLISH}],
        [
            {"role": "user", "content": [{"type": "text", "text": "x"}, {"type": "image_url"}]},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {"id": "1", "function": {"name": "f", "arguments": '{"a":1,"b":[1,2]}'}}
                ],
            },
            {"role": "tool", "tool_call_id": "1", "content": "{}"},
        ],
    ],
)
def test_byte_bound_is_never_below_the_exact_count(counter, messages):
    tools = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
    for with_tools in (None, tools):
        assert counter.upper_bound(messages, with_tools) >= counter.count_chat(messages, with_tools)


def test_tokenizers_share_one_loaded_vocabulary():
    first, second = QwenTokenizer(), QwenTokenizer()
    assert first.encoding() is second.encoding()
    assert first.max_token_bytes >= 16
