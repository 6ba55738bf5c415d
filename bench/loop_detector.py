"""LoopDetector cost and reach: CPU time on 1 MB of ordinary streamed text, and where a
looping stream is cut. Run: python bench/loop_detector.py"""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from qwenproxy.pipeline.guards.loops import LoopDetector  # noqa: E402

MB = 1 << 20

WORDS = (
    "request response stream token model proxy backend client server cache session error "
    "retry header body json field value config default route failover timeout latency "
    "worker process thread queue buffer chunk parser decoder encoder schema table column "
    "index query commit branch merge review test fixture mock assert result output input "
    "the a an of to in for on with by from as is are was be this that it we you they can "
    "should will may must not only also then when while if because so but and or"
).split()
NAMES = (
    "user order item account invoice payment address product cart event message report "
    "job task node edge graph tree file path record entry batch page"
).split()
VERBS = "get load save parse build send fetch update delete create check render apply".split()


def sentence(rng: random.Random) -> str:
    words = [rng.choice(WORDS) for _ in range(rng.randint(6, 18))]
    return " ".join(words).capitalize() + rng.choice([".", ".", ".", "!", "?", ":"])


def prose(rng: random.Random) -> str:
    return " ".join(sentence(rng) for _ in range(rng.randint(2, 6))) + "\n\n"


def python_function(rng: random.Random) -> str:
    name, verb = rng.choice(NAMES), rng.choice(VERBS)
    args = ", ".join(f"{rng.choice(NAMES)}_{i}: int" for i in range(rng.randint(1, 4)))
    lines = [f"def {verb}_{name}_{rng.randint(1, 999)}({args}) -> dict:"]
    lines.append(f'    """{sentence(rng)}"""')
    for j in range(rng.randint(3, 12)):
        field = rng.choice(NAMES)
        op = rng.choice(["+", "-", "*", "//"])
        lines.append(f"    {field}_{j} = {rng.choice(NAMES)}_{j % 3} {op} {rng.randint(0, 500)}")
        if rng.random() < 0.3:
            lines.append(f"    if {field}_{j} > {rng.randint(1, 99)}:")
            lines.append(f'        raise ValueError("{rng.choice(WORDS)} {field} too large")')
    lines.append(f"    return {{'{name}': {rng.choice(NAMES)}_0, 'ok': True}}\n\n")
    return "```python\n" + "\n".join(lines) + "```\n\n"


def markdown_table(rng: random.Random) -> str:
    cols = rng.sample(NAMES, rng.randint(3, 6))
    rows = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for _ in range(rng.randint(4, 20)):
        rows.append("| " + " | ".join(str(rng.randint(0, 9999)) for _ in cols) + " |")
    return "\n".join(rows) + "\n\n"


def json_block(rng: random.Random) -> str:
    items = []
    for i in range(rng.randint(3, 10)):
        items.append(
            f'  {{"id": {rng.randint(1, 99999)}, "name": "{rng.choice(NAMES)}-{i}", '
            f'"active": {rng.choice(["true", "false"])}, "score": {rng.random():.3f}}}'
        )
    return "```json\n[\n" + ",\n".join(items) + "\n]\n```\n\n"


def shell_steps(rng: random.Random) -> str:
    steps = []
    for i in range(1, rng.randint(3, 8)):
        steps.append(
            f"{i}. Run `{rng.choice(VERBS)} --{rng.choice(NAMES)}={rng.randint(1, 64)}`"
            f" — {sentence(rng)}"
        )
    return "\n".join(steps) + "\n\n"


MIXED: list[Callable[[random.Random], str]] = [
    prose,
    prose,
    python_function,
    markdown_table,
    json_block,
    shell_steps,
]
STRUCTURED = [python_function, markdown_table, json_block]  # many similar lines


def ordinary_text(size: int, seed: int = 7, makers: list[Callable[..., str]] = MIXED) -> str:
    rng = random.Random(seed)
    parts, total = [], 0
    while total < size:
        part = rng.choice(makers)(rng)
        parts.append(part)
        total += len(part)
    return "".join(parts)[:size]


def token_chunks(text: str, seed: int = 11) -> list[str]:
    rng = random.Random(seed)
    chunks, i = [], 0
    while i < len(text):
        step = rng.randint(5, 40)
        chunks.append(text[i : i + step])
        i += step
    return chunks


def run(chunks: list[str]) -> tuple[float, int | None, LoopDetector]:
    detector = LoopDetector()
    feed = detector.feed
    fed = 0
    started = time.process_time()
    for chunk in chunks:
        fed += len(chunk)
        if feed(chunk) is not None:
            return time.process_time() - started, fed, detector
    return time.process_time() - started, None, detector


def baseline(chunks: list[str]) -> float:
    """The same loop with a no-op instead of the detector (the harness's own cost)."""
    sink: list[str] = []
    feed = sink.append
    fed = 0
    started = time.process_time()
    for chunk in chunks:
        fed += len(chunk)
        if feed(chunk) is not None:
            break
    return time.process_time() - started


def best_of(times: int, fn: Callable[[], float]) -> float:
    return min(fn() for _ in range(times))


def main() -> None:
    clean = token_chunks(ordinary_text(MB))
    cpu = best_of(5, lambda: run(clean)[0])
    _, found, _ = run(clean)
    loop_free = best_of(5, lambda: baseline(clean))
    print(f"clean 1 MB stream, {len(clean)} chunks of 5-40 chars:")
    print(
        f"  detector CPU {cpu * 1000:.1f} ms (harness loop alone {loop_free * 1000:.1f} ms);"
        f" false positive: {'at ' + str(found) if found else 'none'}"
    )

    structured = token_chunks(ordinary_text(MB, seed=8, makers=STRUCTURED))
    cpu = best_of(5, lambda: run(structured)[0])
    found = run(structured)[1]
    print(f"clean 1 MB of code, tables and JSON only, {len(structured)} chunks:")
    verdict = f"at {found}" if found else "none"
    print(f"  detector CPU {cpu * 1000:.1f} ms; false positive: {verdict}")

    rng = random.Random(3)
    lead = ordinary_text(5_000, seed=5)
    for period in (25, 150, 1_500):
        block = "Let me check that again. " if period == 25 else ordinary_text(period, seed=period)
        text = (lead + block * (MB // period))[:MB]
        chunks = token_chunks(text, seed=rng.randint(0, 999))
        cpu, fed, detector = run(chunks)
        reps = 12 if period < 100 else 4
        complete = len(lead) + reps * period
        # The cut comes at the end of the chunk in which the repeats complete.
        print(f"looping 1 MB stream, period {period} after {len(lead)} ordinary chars:")
        print(
            f"  cut after {fed} chars ({fed - len(lead) if fed else '-'} into the loop; "
            f"{reps} repeats complete at {complete}, delay {fed - complete if fed else '-'})"
            f", detector CPU {cpu * 1000:.2f} ms, block {len(detector.detected or '')} chars"
        )

    singles = list(ordinary_text(MB // 8, seed=99))
    cpu = run(singles)[0]
    print(f"clean 128 KB stream fed 1 char at a time: detector CPU {cpu * 1000:.1f} ms")


if __name__ == "__main__":
    main()
