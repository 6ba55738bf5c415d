"""The context guard's cost (issue 16): the Qwen token counter's speed, and what the
guard adds to a request with a ~100k-token prompt, measured through the real proxy
(gunicorn, 1 gevent worker) against the fast fake upstream, guard on vs off.

    python -m bench.context [--requests N] [--json PATH]

Prompt: ~100k Qwen tokens of mixed English prose, code and Chinese (~330 KB). Three
proxy runs: guard off; guard on with a 1M window (the byte bound settles it: no exact
count); guard on with a 200k window (the bound is over the window, so the exact count
runs, in gevent's thread pool). Each run sends the same non-stream request N times over
one keep-alive connection; p50/p90 of the client-side latency.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench.httpclient import Connection, Target
from bench.processes import PROXY_KEY, FakeProcess, ProxyProcess

WINDOW_SETTLED_BY_BOUND = 1_000_000
WINDOW_NEEDING_EXACT = 200_000

PROSE = (
    "The proxy forwards each request to the upstream that serves the model, counts what "
    "it spent, and answers in the shape the client expects. "
)
CODE = (
    "def handle(request):\n    body = parse(request.body)\n    if not body.get('model'):\n"
    "        raise InvalidRequest('model is required')\n    return route(body)\n\n"
)
CHINESE = "代理把每个请求转发给提供该模型的上游服务，并记录它花费了多少令牌。"


def sample_text(target_tokens: int) -> str:
    """Mixed prose, code and Chinese of about `target_tokens` Qwen tokens."""
    from qwenproxy.pipeline.guards.tokens import PromptCounter

    counter = PromptCounter()
    unit = PROSE + CODE + CHINESE + "\n"
    per_unit = counter.count_text(unit)
    return unit * max(1, target_tokens // per_unit)


def counter_speed(text: str, repeats: int = 5) -> dict[str, float]:
    from qwenproxy.pipeline.guards.tokens import PromptCounter, QwenTokenizer

    QwenTokenizer().encoding()
    messages = [{"role": "user", "content": text}]
    tokens = PromptCounter().count_chat(messages)
    exact = []
    for _ in range(repeats):
        counter = PromptCounter()  # a fresh cache: the tokenizer's own speed
        t0 = time.perf_counter()
        counter.count_chat(messages)
        exact.append(time.perf_counter() - t0)
    cached_counter = PromptCounter()
    cached_counter.count_chat(messages)
    t0 = time.perf_counter()
    cached_counter.count_chat(messages)
    cached_s = time.perf_counter() - t0
    bound = []
    for _ in range(repeats * 20):
        t0 = time.perf_counter()
        PromptCounter.upper_bound(messages)
        bound.append(time.perf_counter() - t0)
    exact_s = statistics.median(exact)
    return {
        "prompt_tokens": tokens,
        "cached_count_ms": round(cached_s * 1000, 3),
        "prompt_bytes": len(text.encode()),
        "exact_count_ms": round(exact_s * 1000, 2),
        "tokens_per_s": round(tokens / exact_s),
        "byte_bound_ms": round(statistics.median(bound) * 1000, 3),
        "byte_bound": PromptCounter.upper_bound(messages),
    }


def chat_body(messages: list[dict]) -> bytes:
    return json.dumps(
        {"model": "qwen3-coder-plus", "messages": messages, "max_tokens": 32000}
    ).encode()


def cold_bodies(text: str):
    """A prompt never seen before each time (nothing in the count cache helps)."""
    return lambda i: chat_body([{"role": "user", "content": f"{i}:{text}"}])


def session_bodies(text: str):
    """An agent's session: the same long history, a new short turn each time."""
    history = [{"role": "user", "content": text}, {"role": "assistant", "content": "ok"}]
    return lambda i: chat_body([*history, {"role": "user", "content": f"step {i}: go on"}])


def proxy_latency(workdir: Path, fake: FakeProcess, env: dict[str, str], bodies, n: int):
    proxy = ProxyProcess(workdir, fake, extra_env=env)
    try:
        target = Target("qwenproxy", "127.0.0.1", proxy.port, PROXY_KEY)
        conn = Connection("127.0.0.1", proxy.port, 30.0)
        samples = []
        try:
            for i in range(n + 5):
                raw = target.chat_request(bodies(i))
                t0 = time.perf_counter()
                status, _, answer = conn.request(raw)
                elapsed = time.perf_counter() - t0
                if status != 200:
                    raise RuntimeError(f"HTTP {status}: {answer[:300]!r}")
                if i >= 5:  # the first few warm the worker (vocabulary, connections)
                    samples.append(elapsed)
        finally:
            conn.close()
    finally:
        proxy.stop()
    samples.sort()
    return {
        "p50_ms": round(samples[len(samples) // 2] * 1000, 2),
        "p90_ms": round(samples[int(len(samples) * 0.9)] * 1000, 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.context", description=__doc__)
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--tokens", type=int, default=100_000)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)

    from qwenproxy.pipeline.guards.tokens import QwenTokenizer

    started = time.perf_counter()
    QwenTokenizer().encoding()
    load_s = time.perf_counter() - started
    text = sample_text(args.tokens)
    results: dict = {"counter": {**counter_speed(text), "vocab_load_s": round(load_s, 3)}}
    print("counter:", json.dumps(results["counter"]), flush=True)
    small_window = {
        "CONTEXT_GUARD": "true",
        "MODEL_INFO": json.dumps(
            {"qwen-oauth": {"coder-model": {"context_length": WINDOW_NEEDING_EXACT}}}
        ),
    }
    runs = {
        "guard_off": ({"CONTEXT_GUARD": "false"}, cold_bodies(text)),
        "guard_on_bound_only": ({"CONTEXT_GUARD": "true"}, cold_bodies(text)),
        "guard_on_exact_count": (small_window, cold_bodies(text)),
        "guard_off_session": ({"CONTEXT_GUARD": "false"}, session_bodies(text)),
        "guard_on_exact_count_session": (small_window, session_bodies(text)),
    }
    with tempfile.TemporaryDirectory(prefix="qp-bench-context-") as tmp:
        root = Path(tmp)
        fake = FakeProcess(root, chunks=5, chunk_delay=0.0)
        try:
            for name, (env, bodies) in runs.items():
                results[name] = proxy_latency(root / name, fake, env, bodies, args.requests)
                print(f"{name}:", json.dumps(results[name]), flush=True)
        finally:
            fake.stop()
    off = results["guard_off"]["p50_ms"]
    results["added_p50_ms"] = {
        "bound_only": round(results["guard_on_bound_only"]["p50_ms"] - off, 2),
        "exact_count": round(results["guard_on_exact_count"]["p50_ms"] - off, 2),
        "exact_count_session": round(
            results["guard_on_exact_count_session"]["p50_ms"]
            - results["guard_off_session"]["p50_ms"],
            2,
        ),
    }
    results["cpus"] = os.cpu_count()
    print("added p50:", json.dumps(results["added_p50_ms"]))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
