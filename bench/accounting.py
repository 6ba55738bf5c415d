"""Cost of accounting on the request path: `UsageLedger.record()` + `Metrics.observe()` per
request, timed one by one over 100k requests while the writer thread inserts into SQLite.
Target: < 50 µs at p50. Run: python bench/accounting.py [requests]"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from qwenproxy.ledger.metrics import Metrics  # noqa: E402
from qwenproxy.ledger.writer import UsageLedger, UsageRecord  # noqa: E402
from qwenproxy.store import Database  # noqa: E402

TARGET_P50_US = 50.0


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run(count: int) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        db = Database(f"sqlite:///{Path(tmp) / 'bench.db'}")
        ledger = UsageLedger(db, queue_size=count + 1)
        metrics = Metrics()
        ledger.start()
        models = [("qwen-oauth", "coder-model"), ("dashscope", "qwen3-coder-plus")]
        records = [
            UsageRecord(
                started_at=time.time(),
                session_id=f"session-{i % 50}",
                client_key_id="3f2a9c1b7d4e",
                backend=models[i % 2][0],
                upstream_model=models[i % 2][1],
                requested_model="qwen3-coder-plus",
                stream=i % 3 == 0,
                status=200 if i % 20 else 429,
                prompt_tokens=1200,
                completion_tokens=300,
                total_tokens=1500,
                latency_ms=850.0,
                ttft_ms=180.0 if i % 3 == 0 else None,
                tokens_per_s=45.0,
            )
            for i in range(count)
        ]
        clock = time.perf_counter
        timings = []
        started = clock()
        for rec in records:
            t0 = clock()
            ledger.record(rec)
            metrics.observe(rec)
            timings.append(clock() - t0)
        elapsed = clock() - started
        flush_started = clock()
        ledger.close(timeout=120)
        flush_s = clock() - flush_started
        db.dispose()
    us = [t * 1e6 for t in timings]
    p50, p95, p99 = (percentile(us, q) for q in (0.50, 0.95, 0.99))
    print(f"{count} requests: record() + observe() per request")
    print(f"  p50 {p50:.2f} µs   p95 {p95:.2f} µs   p99 {p99:.2f} µs   max {max(us):.0f} µs")
    print(f"  mean {elapsed / count * 1e6:.2f} µs (loop included)")
    print(f"  rows written {ledger.written}, dropped {ledger.dropped}, failed {ledger.failed};")
    print(f"  rest of the queue written {flush_s:.2f} s after the loop")
    verdict = "ok" if p50 < TARGET_P50_US else "over target"
    print(f"  target p50 < {TARGET_P50_US:.0f} µs: {verdict}")
    return 0 if p50 < TARGET_P50_US else 1


if __name__ == "__main__":
    raise SystemExit(run(int(sys.argv[1]) if len(sys.argv) > 1 else 100_000))
