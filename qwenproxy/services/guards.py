"""Stream and request guards: `LoopDetector` spots a model repeating itself in a streamed
answer; `SecretRedactor` replaces API keys and configured secrets in outgoing messages.
Both are self-contained and cheap enough for the hot path (see bench/loop_detector.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from qwenproxy.services.content import ANY_TYPE, TEXT_PART_TYPES, is_text_part
from qwenproxy.services.known_secrets import KnownSecrets

# --- loop detection ------------------------------------------------------------------------

# The detector looks back over the last LOOP_WINDOW characters of the stream (it holds at
# most twice that, compacting now and then). A block is found only if all its repetitions
# fit in the window, so blocks longer than LOOP_WINDOW // min_repeats (4096 characters with
# the defaults) are not detected.
LOOP_WINDOW = 16_384


@dataclass(frozen=True)
class LoopThresholds:
    """What counts as a loop (see LoopDetector). LOOP_DEFAULTS is the one place the
    defaults are written: the LOOP_* settings and the pipeline's guards start from it."""

    min_pattern: int = 100
    min_repeats: int = 4
    short_pattern: int = 20
    short_repeats: int = 12


LOOP_DEFAULTS = LoopThresholds()

# Period searches are split into tiers of growing period ranges, each re-checked on its own
# schedule: long periods need many characters before they can complete, so their (wider)
# search runs less often. Tier bounds grow by this factor from the first one.
_FIRST_TIER = 256
_TIER_GROWTH = 4
_NEVER = 1 << 62


class _LoopRules:
    """Precomputed thresholds for one set of parameters (shared by all detectors)."""

    def __init__(
        self, min_pattern: int, min_repeats: int, short_pattern: int, short_repeats: int
    ) -> None:
        self.max_block = LOOP_WINDOW // max(min_repeats, 1)
        self.probe = max(1, min(short_pattern, min_pattern, 20))
        # For a period d: the block length to report (the cheapest multiple of d that
        # counts as a block) and how many characters of d-periodic text make a loop.
        self.block = [0] * (self.max_block + 1)
        self.required = [_NEVER] * (self.max_block + 1)
        for d in range(1, self.max_block + 1):
            options = []
            if short_pattern < min_pattern:
                b = -(-short_pattern // d) * d
                if b < min_pattern:
                    options.append((b * short_repeats, b))
            b = -(-min_pattern // d) * d
            options.append((b * min_repeats, b))
            need, b = min(options)
            if b <= self.max_block and need <= LOOP_WINDOW:
                self.required[d], self.block[d] = need, b
        # Tiers: (first period, last period, skip after a check that finds no candidate,
        # stream length of the first check). A period p that the last `probe` characters
        # did not occur at has fewer than p + probe periodic characters, so it cannot
        # complete a loop in fewer than required(p) - p - probe + 1 more characters.
        self.tiers: list[tuple[int, int, int, int]] = []
        lo, hi = 1, _FIRST_TIER
        while lo <= self.max_block:
            hi = min(hi, self.max_block)
            periods = range(lo, hi + 1)
            gap = min(self.required[p] - p for p in periods) - self.probe + 1
            first = min(self.required[p] for p in periods)
            self.tiers.append((lo, hi, max(1, gap), first))
            lo, hi = hi + 1, hi * _TIER_GROWTH


@lru_cache(maxsize=16)
def _loop_rules(
    min_pattern: int, min_repeats: int, short_pattern: int, short_repeats: int
) -> _LoopRules:
    return _LoopRules(min_pattern, min_repeats, short_pattern, short_repeats)


class LoopDetector:
    """Finds the tail of a stream that is one block repeated back-to-back.

    A loop is a block of >= min_pattern characters repeated >= min_repeats times, or a block
    of short_pattern..min_pattern-1 characters repeated >= short_repeats times. The text
    may arrive in pieces of any size; a loop is reported at the first checkpoint where its
    repetitions are complete (checkpoints are scheduled exactly, see `_check_tier`).

    Cost: feed() appends to a list; work happens only at checkpoints, spaced by how soon
    a loop could possibly complete (every 150-200 characters on ordinary text), and is
    C-level string search and slice comparison. Memory: at most 2 * LOOP_WINDOW characters.
    """

    def __init__(
        self,
        min_pattern: int = LOOP_DEFAULTS.min_pattern,
        min_repeats: int = LOOP_DEFAULTS.min_repeats,
        short_pattern: int = LOOP_DEFAULTS.short_pattern,
        short_repeats: int = LOOP_DEFAULTS.short_repeats,
    ) -> None:
        if min(min_pattern, min_repeats, short_pattern, short_repeats) < 1:
            raise ValueError("loop thresholds must be positive")
        self._rules = _loop_rules(min_pattern, min_repeats, short_pattern, short_repeats)
        self._tier_next = [tier[3] for tier in self._rules.tiers]
        self._next = min(self._tier_next, default=_NEVER)
        self._buf = ""  # the last characters seen (LOOP_WINDOW to 2 * LOOP_WINDOW of them)
        self._pending: list[str] = []  # pieces fed since the last checkpoint
        self._total = 0  # characters fed so far
        self._detected: str | None = None

    @property
    def detected(self) -> str | None:
        return self._detected

    def feed(self, text: str) -> str | None:
        """Feed the next piece of streamed assistant text. Returns the repeated block (the
        first time a loop is found) or None. After a loop is found, further feeds return
        None."""
        if self._detected is not None or not text:
            return None
        self._pending.append(text)
        self._total += len(text)
        if self._total < self._next:
            return None
        return self._run_checkpoints()

    def _run_checkpoints(self) -> str | None:
        buf = self._buf + "".join(self._pending)
        self._pending = []
        base = self._total - len(buf)  # stream position of buf[0]
        rules, tier_next = self._rules, self._tier_next
        while self._next <= self._total:
            at = self._next
            for k, (lo, hi, gap, _) in enumerate(rules.tiers):
                if tier_next[k] == at:
                    skip = self._check_tier(buf, at - base, lo, hi, gap)
                    if self._detected is not None:
                        self._buf = ""
                        return self._detected
                    tier_next[k] = at + skip
            self._next = min(tier_next)
        # Compact only when twice the window: one copy per LOOP_WINDOW characters fed.
        self._buf = buf[-LOOP_WINDOW:] if len(buf) > 2 * LOOP_WINDOW else buf
        return None

    def _check_tier(self, buf: str, n: int, lo: int, hi: int, gap: int) -> int:
        """Look for periods lo..hi in buf[:n]. Returns how many characters may pass before
        one of them could complete a loop (sets `_detected` if one already has).

        Candidates are the distances d at which the last `probe` characters occurred
        before; for each, the common suffix of buf[:n-d] and buf[:n] (its length `lcs`)
        is measured by doubling slice comparisons. A d-periodic tail of d + lcs characters
        is a loop once d + lcs >= required(d), and cannot become one sooner than that.
        """
        rules = self._rules
        m = rules.probe
        if n < m:
            return gap
        probe = buf[n - m : n]
        start = max(0, n - m - hi)
        end = n - lo  # occurrences at index i with i + m <= end, i.e. distance d >= lo
        skip = gap
        first = lo == 1
        while True:
            i = buf.rfind(probe, start, end)
            if i < 0:
                return skip
            d = n - m - i
            end = i + m - 1
            limit = rules.required[d] - d  # lcs needed for a loop of period d
            most = min(limit, n - d)  # lcs cannot exceed the text before the copy
            low, high = m, m + 1  # lcs in [low, high)
            size = min(2 * m, most)
            while size > low:
                if buf[n - d - size : n - d] == buf[n - size : n]:
                    low = size
                    size = min(2 * size, most)
                else:
                    high = size
                    break
            else:
                high = low + 1
            if low >= limit:
                self._detected = buf[n - rules.block[d] : n]
                return 0
            if low > m:
                # A real run of repetition: measure it exactly, so that the next check comes
                # exactly when it could complete (not one character at a time near the end).
                while high - low > 1:
                    mid = (low + high) // 2
                    if buf[n - d - mid : n - d] == buf[n - mid : n]:
                        low = mid
                    else:
                        high = mid
                if first:
                    # The nearest candidate heads a periodic run: the other candidates inside
                    # it are multiples of d, which cannot complete sooner. Skip them.
                    end = min(end, n - d - low + m - 1)
            skip = min(skip, limit - high + 1)
            first = False


def shorten_snippet(block: str, limit: int = 60) -> str:
    """One line of at most `limit` characters: whitespace collapsed, "…" when cut."""
    line = " ".join(block.split())
    if len(line) <= limit:
        return line
    return line[: max(limit - 1, 0)].rstrip() + "…"


# --- secret redaction ----------------------------------------------------------------------

PLACEHOLDER = "(API_KEY_HAS_BEEN_REDACTED)"

_KEY = "[A-Za-z0-9_-]"  # the characters of most key bodies
_DIGIT = r"(?=[A-Za-z0-9_.-]*[0-9])"  # the body holds a digit: random keys do, words don't


def _key_pattern(source: str) -> re.Pattern[str]:
    return re.compile(source, re.ASCII)


# Well-known key formats, one entry each: add a line to cover a new one. Patterns are ASCII
# (compiled with re.ASCII, so a key followed by Chinese text still ends at a word boundary).
# Each starts with its literal prefix and no leading \b (that would stop the regex engine
# from skipping ahead to the prefix's first character, about 4x slower); the redactor
# instead skips matches that start inside a longer word. Minimum lengths keep words out.
SECRET_PATTERNS: list[tuple[str, re.Pattern[str]]] = [
    (
        "private_key",
        _key_pattern(
            r"-----BEGIN[A-Z0-9 ]{0,40} PRIVATE KEY(?: BLOCK)?-----"
            r"(?:[\s\S]*?-----END[A-Z0-9 ]{0,40} PRIVATE KEY(?: BLOCK)?-----"
            r"|(?:(?:\s|\\[nr])+[A-Za-z0-9+/=]{16,})*)"  # no END (cut short): its base64 lines
        ),
    ),
    ("anthropic", _key_pattern(r"sk-ant-" + _DIGIT + _KEY + "{20,}")),
    ("openrouter", _key_pattern(r"sk-or-v1-[A-Za-z0-9]{32,}")),
    ("coding_plan", _key_pattern(r"sk-sp-" + _DIGIT + _KEY + r"{16,}(?:\." + _KEY + "+)*")),
    ("openai_project", _key_pattern(r"sk-(?:proj|svcacct|admin)-" + _DIGIT + _KEY + "{20,}")),
    ("openai", _key_pattern(r"sk-[A-Za-z0-9]{40,}\b")),
    ("dashscope", _key_pattern(r"sk-[0-9a-f]{32}\b")),
    ("aws_access_key_id", _key_pattern(r"(?:AKIA|ASIA)[0-9A-Z]{16}\b")),
    ("github_token", _key_pattern(r"gh[pousr]_[A-Za-z0-9]{36,}\b")),
    ("github_pat", _key_pattern(r"github_pat_" + _DIGIT + r"[A-Za-z0-9_]{22,}")),
    ("google_api_key", _key_pattern(r"AIza" + _KEY + "{35}(?!" + _KEY + ")")),
    ("slack_token", _key_pattern(r"xox[bpoas]-[0-9]+-[A-Za-z0-9-]{8,}")),
    ("fireworks", _key_pattern(r"fw_" + _DIGIT + r"[A-Za-z0-9]{20,}\b")),
]

# The shortest text any pattern above can match (xoxb-1- and 8 more): shorter texts are
# skipped unless a configured secret is shorter still. Keep in step with SECRET_PATTERNS.
SHORTEST_PATTERN_MATCH = 15


def _secret_pattern() -> re.Pattern[str]:
    """SECRET_PATTERNS as one alternation: one pass over a text finds any of them."""
    return _key_pattern("|".join(f"(?:{pattern.pattern})" for _, pattern in SECRET_PATTERNS))


def _starts_inside_word(text: str, start: int) -> bool:
    """True if text[start] continues a word (so a match there is part of something longer).
    A JSON escape such as \\n just before counts as a break, as in tool-call arguments."""
    if start == 0:
        return False
    before = text[start - 1]
    if not (before.isascii() and (before.isalnum() or before == "_")):
        return False
    return not (start >= 2 and text[start - 2] == "\\" and before in "nrtbf")


class SecretRedactor:
    """Replaces API keys (SECRET_PATTERNS) and the proxy's own configured secrets with
    PLACEHOLDER in the text that is about to leave for an upstream. The configured
    secrets are `known` (services/known_secrets.py), the matcher the log filter uses too."""

    def __init__(self, known: KnownSecrets | None = None) -> None:
        self._known = known if known is not None else KnownSecrets()
        self._pattern = _secret_pattern()

    def redact_text(self, text: str) -> tuple[str, int]:
        """(text with secrets replaced, number of replacements)."""
        return self._redact(text)

    def redact_messages(self, messages: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], int]:
        """Redact chat messages: string content, text parts, tool-call arguments and tool
        results. Never mutates the input: returns the same list when nothing changed, else
        a new list where only the changed messages (and the dicts inside them that changed)
        are copies."""
        result: list[dict[str, Any]] | None = None
        total = 0
        for index, message in enumerate(messages):
            if not isinstance(message, dict):
                continue
            changed, count = self._redact_message(message)
            if count:
                if result is None:
                    result = list(messages)
                result[index] = changed
                total += count
        return (messages if result is None else result), total

    def _redact_message(self, message: dict[str, Any]) -> tuple[dict[str, Any], int]:
        total = 0
        updates: dict[str, Any] = {}
        content = message.get("content")
        if isinstance(content, str):
            new_text, count = self._redact(content)
            if count:
                updates["content"], total = new_text, total + count
        elif isinstance(content, list):
            any_text = message.get("role") == "tool"
            new_parts, count = self._redact_parts(content, any_text)
            if count:
                updates["content"], total = new_parts, total + count
        tool_calls = message.get("tool_calls")
        if isinstance(tool_calls, list):
            new_calls, count = self._redact_tool_calls(tool_calls)
            if count:
                updates["tool_calls"], total = new_calls, total + count
        if not total:
            return message, 0
        return {**message, **updates}, total

    def _redact_parts(self, parts: list[Any], any_text: bool) -> tuple[list[Any], int]:
        result: list[Any] | None = None
        total = 0
        for index, part in enumerate(parts):
            if not is_text_part(part, ANY_TYPE if any_text else TEXT_PART_TYPES):
                continue
            new_text, count = self._redact(part["text"])
            if count:
                if result is None:
                    result = list(parts)
                result[index] = {**part, "text": new_text}
                total += count
        return (parts if result is None else result), total

    def _redact_tool_calls(self, calls: list[Any]) -> tuple[list[Any], int]:
        result: list[Any] | None = None
        total = 0
        for index, call in enumerate(calls):
            function = call.get("function") if isinstance(call, dict) else None
            if not isinstance(function, dict) or not isinstance(function.get("arguments"), str):
                continue
            new_arguments, count = self._redact(function["arguments"])
            if count:
                if result is None:
                    result = list(calls)
                result[index] = {**call, "function": {**function, "arguments": new_arguments}}
                total += count
        return (calls if result is None else result), total

    def _redact(self, text: str) -> tuple[str, int]:
        shortest = min(SHORTEST_PATTERN_MATCH, self._known.shortest or SHORTEST_PATTERN_MATCH)
        if len(text) < shortest:
            return text, 0
        text, total = self._known.replace(text, PLACEHOLDER)
        if self._pattern.search(text) is None:
            return text, total
        replaced = 0

        def replace(match: re.Match[str]) -> str:
            nonlocal replaced
            if _starts_inside_word(match.string, match.start()):
                return match.group()
            replaced += 1
            return PLACEHOLDER

        text = self._pattern.sub(replace, text)
        return text, total + replaced
