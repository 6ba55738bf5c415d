"""LoopDetector (repeated blocks in a streamed answer) and SecretRedactor (API keys and
configured secrets in outgoing messages).

Ordinary samples are realistic text with differing values per line; key samples are built
at import from a seeded generator (no key-like literals in this file).
"""

from __future__ import annotations

import copy
import json
import random
import re
import string
from collections.abc import Callable
from typing import Any

import pytest

from qwenproxy.services.guards import (
    LOOP_WINDOW,
    PLACEHOLDER,
    SECRET_PATTERNS,
    SHORTEST_PATTERN_MATCH,
    LoopDetector,
    SecretRedactor,
    shorten_snippet,
)
from qwenproxy.services.known_secrets import KnownSecrets

# --- helpers ---------------------------------------------------------------------------------


def feed_pieces(detector: LoopDetector, text: str, size: int) -> int | None:
    """Feed text in pieces of `size` characters; the number of characters fed when a loop
    was reported, or None."""
    for start in range(0, len(text), size):
        if detector.feed(text[start : start + size]) is not None:
            return min(start + size, len(text))
    return None


def feed_tokens(detector: LoopDetector, text: str, seed: int = 1) -> int | None:
    """Feed text like a token stream: pieces of 1 to 40 characters."""
    rng = random.Random(seed)
    start = 0
    while start < len(text):
        size = rng.choice((1, 2, 3, 4, 5, 7, 12, 25, 40))
        if detector.feed(text[start : start + size]) is not None:
            return min(start + size, len(text))
        start += size
    return None


SPLITS = [1, 7, 50, 10_000_000]  # 1-char, 7-char, 50-char, and whole-text pieces

PARAGRAPH = (
    "I apologise for the confusion. Let me re-read the file and fix the import in "
    "handlers.py so the test passes, then run the whole test suite once more. "
)
assert len(PARAGRAPH) == 150

LEAD = "Here is the plan for the refactor:\n\n1. Move the parser.\n2. Update callers.\n\n"


# --- ordinary content that must not trigger ------------------------------------------------

FIRST = ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy"]
CITIES = ["Berlin", "Lyon", "Osaka", "Quito", "Perth", "Lagos", "Austin", "Porto", "Seoul"]


def python_module() -> str:
    rng = random.Random(3)
    lines = ["import os", "import sys", "", "", "class Settings:"]
    for i in range(60):
        name = f"{rng.choice(FIRST)}_{rng.choice(['timeout', 'retries', 'limit', 'port'])}_{i}"
        lines.append(
            f"    {name}: int = int(os.environ.get({name.upper()!r}, {rng.randint(1, 999)}))"
        )
    lines += ["", "", "def check(settings: Settings) -> list[str]:", "    errors = []"]
    for i in range(40):
        field = f"{rng.choice(FIRST)}_limit_{i}"
        lines.append(f"    if settings.{field} < {rng.randint(0, 50)}:")
        lines.append(f'        errors.append("{field} is too small")')
    lines.append("    return errors")
    return "\n".join(lines) + "\n"


def markdown_table() -> str:
    rng = random.Random(4)
    rows = ["| name | city | age | score |", "|------|------|-----|-------|"]
    for _ in range(120):
        rows.append(
            f"| {rng.choice(FIRST)} | {rng.choice(CITIES)} | {rng.randint(18, 90)} | "
            f"{rng.random():.2f} |"
        )
    return "\n".join(rows) + "\n"


def wide_table_header() -> str:
    cols = [f"c{i}" for i in range(24)]
    return "| " + " | ".join(cols) + " |\n|" + "|".join("-----" for _ in cols) + "|\n"


def closing_braces_js_and_go() -> str:
    js = []
    for depth in range(1, 9):
        js.append("  " * depth + f"if (node{depth}.children.length > {depth}) {{")
    for depth in range(8, 0, -1):
        js.append("  " * depth + "}")
    go = ["func walk(n *Node) {", "\tfor _, c := range n.Children {", "\t\tif c.Leaf {"]
    go += ["\t\t\tvisit(c)", "\t\t}", "\t}", "}", ""] * 1
    ruby = [("  " * d) + f"def level_{d}" for d in range(6)] + [
        ("  " * d) + "end" for d in range(5, -1, -1)
    ]
    return "\n".join(js + ["});", "});", "});"] + go + ruby) + "\n"


def numbered_list() -> str:
    rng = random.Random(5)
    verbs = ["Check", "Update", "Review", "Test", "Document", "Deploy"]
    things = ["the login flow", "the cache", "the retry logic", "the billing page", "the CLI"]
    return "".join(
        f"{i}. {rng.choice(verbs)} {rng.choice(things)} for {rng.choice(FIRST)}.\n"
        for i in range(1, 51)
    )


def csv_rows() -> str:
    rng = random.Random(6)
    lines = ["id,name,city,amount,currency,created_at"]
    for i in range(200):
        lines.append(
            f"{1000 + i},{rng.choice(FIRST)},{rng.choice(CITIES)},{rng.randint(1, 99999) / 100},"
            f"EUR,2024-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
        )
    return "\n".join(lines) + "\n"


def json_array() -> str:
    rng = random.Random(7)
    items = [
        {"id": i, "user": rng.choice(FIRST), "active": rng.random() > 0.5, "tags": ["a", "b"]}
        for i in range(150)
    ]
    return json.dumps(items, indent=2)


def separators() -> str:
    parts = []
    for title in ["Setup", "Usage", "Options", "Troubleshooting", "License"]:
        parts += ["=" * 80, title, "=" * 80, f"Text about {title.lower()} goes here.", ""]
    parts += ["-" * 120, "#" * 100, "=" * 200]
    return "\n".join(parts) + "\n"


def few_repeated_words() -> str:
    return "No no no, that is not what I meant. Yes, yes, yes! Ha ha ha ha. " * 3


ORDINARY: dict[str, Callable[[], str]] = {
    "python_module": python_module,
    "markdown_table": markdown_table,
    "wide_table_header": wide_table_header,
    "closing_braces": closing_braces_js_and_go,
    "numbered_list": numbered_list,
    "csv": csv_rows,
    "json_array": json_array,
    "separators": separators,
    "few_repeated_words": few_repeated_words,
}


@pytest.mark.parametrize("size", [1, 7, 40, 10_000_000])
@pytest.mark.parametrize("sample", sorted(ORDINARY))
def test_ordinary_content_is_not_a_loop(sample: str, size: int) -> None:
    text = ORDINARY[sample]()
    detector = LoopDetector()
    assert feed_pieces(detector, text, size) is None
    assert detector.detected is None


def test_a_long_answer_mixing_all_ordinary_samples_is_not_a_loop() -> None:
    text = "\n".join(make() for make in ORDINARY.values()) * 2  # 2 copies: far apart, not a loop
    detector = LoopDetector()
    assert feed_tokens(detector, text) is None


# --- loops that must trigger ----------------------------------------------------------------


@pytest.mark.parametrize("size", SPLITS)
def test_paragraph_repeated_four_times_is_found_before_a_sixth_copy(size: int) -> None:
    text = LEAD + PARAGRAPH * 8
    detector = LoopDetector()
    fed = feed_pieces(detector, text, size)
    assert fed is not None
    if size < len(text):
        assert len(LEAD) + 4 * len(PARAGRAPH) <= fed <= len(LEAD) + 5 * len(PARAGRAPH)
    assert detector.detected == PARAGRAPH


@pytest.mark.parametrize("size", SPLITS)
def test_exactly_four_copies_fed_at_once_or_in_pieces_are_a_loop(size: int) -> None:
    detector = LoopDetector()
    assert feed_pieces(detector, LEAD + PARAGRAPH * 4, size) == len(LEAD) + 4 * len(PARAGRAPH)


def test_three_copies_of_a_paragraph_are_not_a_loop() -> None:
    assert feed_pieces(LoopDetector(), LEAD + PARAGRAPH * 3 + "Done.", 7) is None


@pytest.mark.parametrize("size", SPLITS)
def test_short_phrase_repeated_twelve_times_is_a_loop(size: int) -> None:
    phrase = "Let me check that again. "
    assert len(phrase) == 25
    detector = LoopDetector()
    text = LEAD + phrase * 14
    fed = feed_pieces(detector, text, size)
    assert fed is not None
    if size < len(text):
        assert len(LEAD) + 12 * len(phrase) <= fed <= len(LEAD) + 13 * len(phrase)
    assert detector.detected == phrase


def test_short_phrase_repeated_eleven_times_is_not_a_loop() -> None:
    phrase = "Let me check that again. "
    assert feed_pieces(LoopDetector(), LEAD + phrase * 11 + "OK, found it.", 3) is None


def test_loop_after_five_kilobytes_of_ordinary_text_is_found() -> None:
    lead = (python_module() + markdown_table())[:5_000]
    detector = LoopDetector()
    fed = feed_tokens(detector, lead + PARAGRAPH * 6)
    assert fed is not None and fed <= len(lead) + 5 * len(PARAGRAPH)
    assert detector.detected == PARAGRAPH


def test_long_block_of_1500_characters_is_found() -> None:
    block = csv_rows()[:1_500]
    detector = LoopDetector()
    fed = feed_tokens(detector, LEAD + block * 6)
    assert fed is not None and len(LEAD) + 4 * 1_500 <= fed <= len(LEAD) + 5 * 1_500
    assert detector.detected == block


def test_blocks_too_long_for_the_window_are_not_detected() -> None:
    block = (json_array() * 3)[: LOOP_WINDOW // 4 + 100]
    assert feed_pieces(LoopDetector(), block * 6, 4_000) is None


def test_a_long_run_of_one_character_is_a_loop() -> None:
    # A 20-character block of "=" repeated 12 times: the definition counts it.
    detector = LoopDetector()
    assert feed_pieces(detector, "Result:\n" + "=" * 400, 1) == 8 + 240
    assert detector.detected == "=" * 20


def test_a_half_block_phrase_repeated_eight_times_is_a_long_block_repeated_four_times() -> None:
    phrase = PARAGRAPH[:50]
    detector = LoopDetector()
    assert feed_pieces(detector, phrase * 9, 10) == 400
    assert detector.detected == phrase * 2


def test_min_repeats_is_respected() -> None:
    text = LEAD + PARAGRAPH * 5
    assert feed_pieces(LoopDetector(min_repeats=6), text, 9) is None
    assert feed_pieces(LoopDetector(min_repeats=6), text + PARAGRAPH, 9) is not None


def test_short_thresholds_are_respected() -> None:
    phrase = "All tests pass now. "  # 20 characters
    text = phrase * 8
    assert feed_pieces(LoopDetector(), text, 3) is None
    assert feed_pieces(LoopDetector(short_repeats=8), text, 3) == len(text)
    assert feed_pieces(LoopDetector(short_pattern=25, short_repeats=8), text, 3) is None


def test_min_pattern_is_respected() -> None:
    text = LEAD + PARAGRAPH * 6
    assert feed_pieces(LoopDetector(min_pattern=200, short_pattern=200), text, 11) is None


def test_a_loop_is_reported_once_and_then_feeds_return_none() -> None:
    detector = LoopDetector()
    results = [detector.feed(piece) for piece in [LEAD] + [PARAGRAPH] * 10]
    found = [r for r in results if r is not None]
    assert found == [PARAGRAPH]
    assert results.index(PARAGRAPH) == 4  # LEAD + 4 copies
    assert detector.detected == PARAGRAPH
    assert detector.feed(PARAGRAPH * 4) is None
    assert detector.detected == PARAGRAPH


def test_empty_pieces_are_ignored() -> None:
    detector = LoopDetector()
    assert detector.feed("") is None
    assert detector.detected is None


def test_thresholds_must_be_positive() -> None:
    with pytest.raises(ValueError):
        LoopDetector(min_repeats=0)


def first_loop_end(text: str, thresholds: tuple[int, int, int, int]) -> int | None:
    """The definition, brute force: the first prefix whose tail is block * repeats."""
    min_pattern, min_repeats, short_pattern, short_repeats = thresholds
    longest = LOOP_WINDOW // min_repeats
    for end in range(1, len(text) + 1):
        for size in range(min(short_pattern, min_pattern), min(longest, end) + 1):
            repeats = min_repeats if size >= min_pattern else short_repeats
            block = text[end - size : end]
            if size * repeats <= end and text[end - size * repeats : end] == block * repeats:
                return end
    return None


def test_detection_point_matches_the_definition_for_random_texts_and_splits() -> None:
    rng = random.Random(2024)
    for _ in range(300):
        thresholds = (
            rng.randint(2, 12),
            rng.randint(2, 5),
            rng.randint(1, 14),
            rng.randint(2, 8),
        )
        alphabet = rng.choice(["ab", "abc", "abcdefgh"])
        pieces = []
        while sum(map(len, pieces)) < 250:
            block = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 20)))
            pieces.append(block * rng.randint(1, 6) if rng.random() < 0.5 else block)
        text = "".join(pieces)[:250]
        expected = first_loop_end(text, thresholds)
        detector = LoopDetector(*thresholds)
        start = 0
        while start < len(text):
            size = rng.choice((1, 2, 5, 33, 250))
            if detector.feed(text[start : start + size]) is not None:
                break
            start += size
        if expected is None:
            assert detector.detected is None, (text, thresholds)
        else:
            assert start < expected <= start + size, (text, thresholds)
            block = detector.detected
            assert block is not None
            repeats = thresholds[1] if len(block) >= thresholds[0] else thresholds[3]
            assert text[expected - len(block) * repeats : expected] == block * repeats


def test_shorten_snippet_collapses_whitespace_and_cuts_with_an_ellipsis() -> None:
    assert shorten_snippet("  a\n\tb   c ") == "a b c"
    cut = shorten_snippet(PARAGRAPH, 40)
    assert len(cut) <= 40 and cut.endswith("…") and "\n" not in cut
    assert cut.startswith("I apologise for the confusion.")
    assert shorten_snippet("x" * 60) == "x" * 60


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
