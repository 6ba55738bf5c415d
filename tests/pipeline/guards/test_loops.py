"""LoopDetector: repeated blocks in a streamed answer are found, ordinary content (code,
tables, lists, separators) is not. Ordinary samples are realistic text with differing
values per line.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable

import pytest

from qwenproxy.pipeline.guards.loops import LOOP_WINDOW, LoopDetector, shorten_snippet

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


