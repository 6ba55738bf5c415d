"""`LoopDetector`: spots a model repeating itself in a streamed answer (a block of text
over and over), cheaply enough for the hot path (see bench/loop_detector.py).
"""

from __future__ import annotations

from functools import lru_cache

from qwenproxy.config.values import LOOP_DEFAULTS

# The detector looks back over the last LOOP_WINDOW characters of the stream (it holds at
# most twice that, compacting now and then). A block is found only if all its repetitions
# fit in the window, so blocks longer than LOOP_WINDOW // min_repeats (4096 characters with
# the defaults) are not detected.
LOOP_WINDOW = 16_384



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
