"""SecretRedactor: API keys in every provider format and the configured secrets are
replaced in outgoing messages; ordinary text is left alone. Key samples are built at
import from a seeded generator (no key-like literals in this file)."""

from __future__ import annotations

import copy
import json
import random
import re
import string
from collections.abc import Callable
from typing import Any

import pytest

from qwenproxy.config.secrets import KnownSecrets
from qwenproxy.pipeline.guards.redaction import (
    PLACEHOLDER,
    SECRET_PATTERNS,
    SHORTEST_PATTERN_MATCH,
    SecretRedactor,
)
from tests.pipeline.guards.test_loops import csv_rows, python_module

# --- secret redaction -----------------------------------------------------------------------

_rng = random.Random(42)
ALNUM = string.ascii_letters + string.digits


def rand(n: int, alphabet: str = ALNUM) -> str:
    while True:
        value = "".join(_rng.choice(alphabet) for _ in range(n))
        if any(c.isdigit() for c in value):
            return value


PEM = (
    "-----BEGIN RSA PRIVATE KEY-----\n"
    + "\n".join(rand(64, ALNUM + "+/") for _ in range(5))
    + "\n-----END RSA PRIVATE KEY-----"
)

KEY_SAMPLES: dict[str, list[str]] = {
    "private_key": [PEM, PEM.replace("RSA ", ""), PEM.replace("RSA", "OPENSSH")],
    "anthropic": ["sk-ant-api03-" + rand(93, ALNUM + "-_") + "AA"],
    "openrouter": ["sk-or-v1-" + rand(64, "0123456789abcdef")],
    "coding_plan": ["sk-sp-" + rand(32)],
    "openai_project": [
        "sk-proj-" + rand(156, ALNUM + "-_"),
        "sk-svcacct-" + rand(80, ALNUM + "-_"),
    ],
    "openai": ["sk-" + rand(20) + "T3BlbkFJ" + rand(20)],
    "dashscope": ["sk-" + rand(32, "0123456789abcdef")],
    "aws_access_key_id": [
        "AKIA" + rand(16, string.ascii_uppercase + string.digits),
        "ASIA" + rand(16, string.ascii_uppercase + string.digits),
    ],
    "github_token": [prefix + rand(36) for prefix in ("ghp_", "gho_", "ghs_", "ghu_", "ghr_")],
    "github_pat": ["github_pat_" + rand(22) + "_" + rand(59)],
    "google_api_key": ["AIza" + rand(35, ALNUM + "-_")],
    "slack_token": [
        "xoxb-" + rand(12, string.digits) + "-" + rand(13, string.digits) + "-" + rand(24),
        "xoxp-1-" + rand(40, ALNUM + "-"),
    ],
    "fireworks": ["fw_" + rand(24)],
}
ALL_KEYS = [(name, key) for name, keys in KEY_SAMPLES.items() for key in keys]
KEY_IDS = [f"{name}-{i}" for i, (name, _) in enumerate(ALL_KEYS)]

CONFIGURED = ["proxy-client-key-one", "backend-secret-Zq81", "oauth.access.token.0a9b8c7d"]


@pytest.fixture
def redactor() -> SecretRedactor:
    return SecretRedactor(KnownSecrets(lambda: CONFIGURED))


def test_every_pattern_has_samples_here() -> None:
    assert set(KEY_SAMPLES) == {name for name, _ in SECRET_PATTERNS}


def test_no_pattern_matches_text_shorter_than_the_declared_shortest_match() -> None:
    parser = getattr(re, "_parser", None)
    if parser is None:
        pytest.skip("re._parser not available")
    for name, pattern in SECRET_PATTERNS:
        assert parser.parse(pattern.pattern).getwidth()[0] >= SHORTEST_PATTERN_MATCH, name


def places(key: str) -> list[tuple[list[dict[str, Any]], Callable[[list[dict[str, Any]]], str]]]:
    """(messages holding the key, getter of the text where it was) in each place we scan."""
    sentence = f"My key is {key} - please use it."
    arguments = json.dumps({"command": f"export OPENAI_API_KEY={key}\nrun", "env": {"K": key}})
    return [
        ([{"role": "user", "content": sentence}], lambda m: m[0]["content"]),
        (
            [{"role": "user", "content": [{"type": "text", "text": sentence}]}],
            lambda m: m[0]["content"][0]["text"],
        ),
        (
            [{"role": "user", "content": [{"type": "input_text", "text": sentence}]}],
            lambda m: m[0]["content"][0]["text"],
        ),
        (
            [
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "c1",
                            "type": "function",
                            "function": {"name": "shell", "arguments": arguments},
                        }
                    ],
                }
            ],
            lambda m: m[0]["tool_calls"][0]["function"]["arguments"],
        ),
        (
            [{"role": "tool", "tool_call_id": "c1", "content": f"KEY={key}\n"}],
            lambda m: m[0]["content"],
        ),
        (
            [
                {
                    "role": "tool",
                    "tool_call_id": "c1",
                    "content": [{"type": "text", "text": sentence}],
                }
            ],
            lambda m: m[0]["content"][0]["text"],
        ),
    ]


@pytest.mark.parametrize(("name", "key"), ALL_KEYS, ids=KEY_IDS)
def test_each_key_format_is_redacted_everywhere_messages_carry_text(
    redactor: SecretRedactor, name: str, key: str
) -> None:
    for messages, text_of in places(key):
        before = copy.deepcopy(messages)
        redacted, count = redactor.redact_messages(messages)
        text = text_of(redacted)
        assert key not in text and PLACEHOLDER in text, (name, text)
        assert count == text.count(PLACEHOLDER)
        assert messages == before  # input untouched
    if name != "private_key":
        assert redactor.redact_text(key) == (PLACEHOLDER, 1)


def test_tool_call_arguments_stay_valid_json(redactor: SecretRedactor) -> None:
    key = KEY_SAMPLES["openai_project"][0]
    arguments = json.dumps({"cmd": f"curl -H 'Authorization: Bearer {key}'", "pem": PEM})
    message = {"role": "assistant", "tool_calls": [{"function": {"arguments": arguments}}]}
    redacted, count = redactor.redact_messages([message])
    parsed = json.loads(redacted[0]["tool_calls"][0]["function"]["arguments"])
    assert count == 2
    assert parsed == {"cmd": f"curl -H 'Authorization: Bearer {PLACEHOLDER}'", "pem": PLACEHOLDER}


def test_keys_next_to_chinese_text_or_punctuation_are_redacted(redactor: SecretRedactor) -> None:
    key = KEY_SAMPLES["dashscope"][0]
    text = f"我的密钥是{key}，请帮我调用。({key}) '{key}' \"{key}\" `{key}`"
    redacted, count = redactor.redact_text(text)
    assert count == 5 and key not in redacted


def test_a_private_key_cut_short_is_still_redacted(redactor: SecretRedactor) -> None:
    cut = PEM[: PEM.index("-----END")].rstrip()
    redacted, count = redactor.redact_text(f"Here it is:\n{cut}\nCan you check it?")
    assert (redacted, count) == (f"Here it is:\n{PLACEHOLDER}\nCan you check it?", 1)


def test_configured_secrets_are_redacted_and_counted(redactor: SecretRedactor) -> None:
    text = f"a {CONFIGURED[0]} b {CONFIGURED[1]} c {CONFIGURED[0]} d {CONFIGURED[2]}."
    redacted, count = redactor.redact_text(text)
    assert count == 4
    assert redacted == f"a {PLACEHOLDER} b {PLACEHOLDER} c {PLACEHOLDER} d {PLACEHOLDER}."


def test_configured_secrets_are_read_again_when_the_matcher_is_refreshed() -> None:
    secrets: list[str] = []
    known = KnownSecrets(lambda: secrets)
    redactor = SecretRedactor(known)
    assert redactor.redact_text("token new-secret-123 here") == ("token new-secret-123 here", 0)
    secrets.append("new-secret-123")
    known.refresh()
    assert redactor.redact_text("token new-secret-123 here") == (f"token {PLACEHOLDER} here", 1)


def test_configured_secrets_shorter_than_eight_characters_are_ignored() -> None:
    redactor = SecretRedactor(KnownSecrets(lambda: ["abc", "1234567", "", "test"]))
    text = "abc 1234567 test: a tiny string is everywhere"
    assert redactor.redact_text(text) == (text, 0)


def test_a_secret_containing_another_is_replaced_whole() -> None:
    redactor = SecretRedactor(KnownSecrets(lambda: ["key-12345", "key-12345-extended"]))
    assert redactor.redact_text("use key-12345-extended") == (f"use {PLACEHOLDER}", 1)


def test_counts_add_up_over_messages_and_only_changed_messages_are_copied(
    redactor: SecretRedactor,
) -> None:
    aws = KEY_SAMPLES["aws_access_key_id"][0]
    google = KEY_SAMPLES["google_api_key"][0]
    untouched_parts = {"role": "user", "content": [{"type": "text", "text": "hello"}]}
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "You are helpful."},
        {"role": "user", "content": [{"type": "text", "text": f"{aws} and {aws}"}, image]},
        untouched_parts,
        {
            "role": "assistant",
            "content": "ok",
            "tool_calls": [
                {"id": "1", "function": {"name": "a", "arguments": "{}"}},
                {"id": "2", "function": {"name": "b", "arguments": json.dumps({"k": google})}},
            ],
        },
        {"role": "tool", "tool_call_id": "2", "content": f"{CONFIGURED[1]}"},
    ]
    before = copy.deepcopy(messages)
    redacted, count = redactor.redact_messages(messages)
    assert count == 4
    assert messages == before
    assert redacted is not messages
    assert redacted[0] is messages[0] and redacted[2] is messages[2]
    assert redacted[1]["content"][1] is image  # unchanged parts are shared
    assert redacted[3]["tool_calls"][0] is messages[3]["tool_calls"][0]
    assert redacted[3]["content"] == "ok"
    assert redacted[4]["content"] == PLACEHOLDER


def test_messages_without_secrets_come_back_as_the_same_list(redactor: SecretRedactor) -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": python_module()}]},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "1", "function": {"name": "read", "arguments": '{"path": "a.py"}'}}
            ],
        },
        {"role": "tool", "tool_call_id": "1", "content": csv_rows()},
        {"role": "user", "content": None},
        "not a message",
    ]
    redacted, count = redactor.redact_messages(messages)  # type: ignore[arg-type]
    assert redacted is messages and count == 0


NOT_SECRETS = [
    "550e8400-e29b-41d4-a716-446655440000",  # UUID
    "commit 3f786850e387550fdab836ed7e6dc881de23001b",  # git SHA
    "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk"
    "YPhfDwAChwGA60e6kgAAAABJRU5ErkJggg== is the sk image, AKIA alone, ghp and fw.",
    "pip install scikit-learn  # sk-learn, also the task-list and ask-me buttons",
    "The AKIA prefix marks AWS access key ids; AIza marks Google keys; xoxb marks Slack bots.",
    "risk-assessment-for-the-quarterly-planning-meeting-2024 and sk-proj-management-page",
    "task-0123456789abcdef0123456789abcdef and desk-ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnop",
    "fw_update_firmware_version(device) and fw_getDeviceInformationNow()",
    "github_pat_ is the prefix of fine-grained tokens; ghp_ of classic ones.",
    "github_pat_is_the_prefix_of_fine_grained_tokens, xoxo-gossip-girl-season-2-episodes",
    "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE\n-----END PUBLIC KEY-----",
    "ordinary words, code and prose " * 20,
]


@pytest.mark.parametrize("text", NOT_SECRETS)
def test_ordinary_text_is_left_alone(redactor: SecretRedactor, text: str) -> None:
    assert redactor.redact_text(text) == (text, 0)


def test_texts_shorter_than_any_match_are_returned_unchanged(redactor: SecretRedactor) -> None:
    for text in ["", "hi", "sk-", "AKIA1234"]:
        result, count = redactor.redact_text(text)
        assert result is text and count == 0
