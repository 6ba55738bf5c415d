"""`python -m bench.quota [--requests N]`: what quota windows and client-key budgets add
to a request's hot path, in-process. "before": no limits configured (the pipeline's
checks find no gate); "after": a Coding Plan key with three windows (5h, 7d, 30d) and a client key
with requests/day, tokens/month and cost/month budgets, all far from their limits, on a
SQLite ledger whose writer runs (so leases are handed back and renewed as in service).
Prints p50 / p90 / p99 / mean µs per request of the checks a request makes.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from qwenproxy.ledger.limits import LimitEngine
from qwenproxy.ledger.records import UsageRecord
from qwenproxy.ledger.writer import UsageLedger
from qwenproxy.pipeline.quota import QuotaGate
from qwenproxy.store import Database

# Pro's three windows, with limits far above what the run sends (far from the limit).
FAR = {"5h": 6_000_000, "7d": 45_000_000, "30d": 90_000_000}


@dataclass
class ClientKey:
    key_id: str = "bench-client"
    name: str = "bench"
    requests_per_day: int | None = 10_000_000
    tokens_per_month: int | None = 10_000_000_000
    cost_per_month: float | None = 10_000_000.0


def one_request(gate: QuotaGate | None, key: ClientKey | None, ledger: UsageLedger) -> None:
    """The quota work of one request, as pipeline/service.py does it."""
    spends = []
    if gate is not None and key is not None:
        spends = gate.check_budgets(key)
    if gate is not None:
        gate.admit("coding-plan", "k1")
        gate.remaining("coding-plan", "k1")
    rec = UsageRecord(
        started_at=time.time(),
        backend="coding-plan",
        upstream_key_id="k1",
        client_key_id=key.key_id if key else None,
        total_tokens=10,
        cost=0.0001,
    )
    ledger.record(rec)  # both sides: the row every request writes anyway
    if gate is not None and spends:
        gate.budgets_done(spends, rec)


def measure(requests: int, limits: bool, workdir: Path) -> list[float]:
    db = Database(f"sqlite:///{workdir / ('after.db' if limits else 'before.db')}")
    ledger = UsageLedger(db)
    ledger.start()
    gate = key = None
    if limits:
        engine = LimitEngine(db, flush=ledger.flush)
        ledger.batch_hooks.append(engine.hand_back_sql)
        gate = QuotaGate(engine, {"coding-plan": FAR}, {"coding-plan": ["k1"]})
        key = ClientKey()
    try:
        for _ in range(200):  # warm up: first leases, first reserves
            one_request(gate, key, ledger)
        times = []
        for _ in range(requests):
            started = time.perf_counter_ns()
            one_request(gate, key, ledger)
            times.append((time.perf_counter_ns() - started) / 1000)
            if len(times) % 500 == 0:
                time.sleep(0.002)  # let the writer take its batch, as between requests
        return times
    finally:
        ledger.close()
        db.dispose()


def summary(times: list[float]) -> str:
    ordered = sorted(times)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return (
        f"p50 {at(0.5):6.1f}  p90 {at(0.9):6.1f}  p99 {at(0.99):7.1f}  "
        f"mean {statistics.fmean(times):6.1f} µs"
    )


def main(argv: list[str] | None = None) -> int:
    # The writer's request log lines would compete for the GIL in this threaded bench.
    logging.getLogger("qwenproxy.requests").setLevel(logging.WARNING)
    parser = argparse.ArgumentParser(prog="python -m bench.quota", description=__doc__)
    parser.add_argument("--requests", type=int, default=20000)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        before = measure(args.requests, False, Path(tmp))
        after = measure(args.requests, True, Path(tmp))
    print(f"before (no limits):          {summary(before)}")
    print(f"after (3 windows, 3 budgets): {summary(after)}")
    added = statistics.median(after) - statistics.median(before)
    print(f"added p50: {added:.1f} µs per request (target <= 20 µs)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
