"""`python -m bench.ledger`: the usage ledger at realistic sizes (issue 14).

For each database (SQLite, and PostgreSQL when --pg URL is given) and each size, fills
`qp_usage` with rows spread over 90 days as an older version would have (one SQL
statement), lets the proxy's own upkeep build the aggregates (the start-up migration),
then starts the proxy (gunicorn, 1 gevent worker) on it and measures:
`/usage/stats?since=30d` for every group_by and `/dashboard?since=30d` (median of 5, each
read fresh), the worker's RSS growth during them, a chat's latency while they run, and
the writer's rows/s with aggregates. Prints a Markdown table.

    python -m bench.ledger [--sizes 100000,10000000] [--pg postgresql+psycopg://...]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from bench.processes import PROXY_KEY, FakeProcess, ProxyProcess, rss_kb

DAY = 86400
GROUPS = ("", "model", "backend", "session", "key", "day")


def fill(url: str, rows: int, now: float) -> None:
    """`rows` raw rows, newest at `now`, evenly over 90 days, without aggregates."""
    import qwenproxy.ledger.upkeep  # noqa: F401 - registers every ledger table
    import qwenproxy.ledger.writer  # noqa: F401
    from qwenproxy.store import Database

    db = Database(url)
    span = 90 * DAY
    # 3 backends, 6 models, 200 sessions, 20 keys; latencies spread over 50 ms..10 s.
    common = (
        "{id}, {now} - ({i} * {span}.0 / {rows}), 's' || ({i} % 200), 'k' || ({i} % 20), "
        "CASE {i} % 3 WHEN 0 THEN 'dashscope' WHEN 1 THEN 'coding-plan' ELSE 'openrouter' END, "
        "'qwen-model-' || ({i} % 6), 'qwen3-coder-plus', ({i} % 3 = 0), "
        "CASE WHEN {i} % 50 = 0 THEN 429 ELSE 200 END, NULL, 1000 + {i} % 5000, "
        "50 + {i} % 700, NULL, {i} % 4 * 256, 50 + ({i} * 7919) % 10000, "
        "CASE WHEN {i} % 3 = 0 THEN 20 + ({i} * 104729) % 2000 ELSE NULL END, NULL, "
        "5 + {i} % 90, 0, ({i} % 1000 = 0), FALSE"
    )
    columns = (
        "id, started_at, session_id, client_key_id, backend, upstream_model, requested_model,"
        " stream, status, error_code, prompt_tokens, completion_tokens, total_tokens,"
        " cached_tokens, latency_ms, ttft_ms, upstream_latency_ms, tokens_per_s,"
        " failover_attempts, loop_detected, command_only"
    )
    with db.engine.begin() as conn:
        conn.exec_driver_sql("DELETE FROM qp_usage")
        conn.exec_driver_sql("DELETE FROM qp_usage_agg")
        conn.exec_driver_sql("DELETE FROM qp_ledger_meta")
        if db.is_sqlite:
            select = common.format(id="lower(hex(randomblob(16)))", i="i", now=now, span=span,
                                   rows=rows)  # fmt: skip
            conn.exec_driver_sql(
                f"WITH RECURSIVE seq(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM seq "
                f"LIMIT {rows}) INSERT INTO qp_usage ({columns}) SELECT {select} FROM seq"
            )
        else:
            select = common.format(id="md5(i::text)", i="i", now=now, span=span, rows=rows)
            select = select.replace("%", "%%")  # psycopg's placeholders
            conn.exec_driver_sql(
                f"INSERT INTO qp_usage ({columns}) SELECT {select} "
                f"FROM generate_series(0::bigint, {rows - 1}) AS i"
            )
    db.dispose()


def build_aggregates(url: str) -> float:
    """The upkeep's migration, run to the end here; returns its rows/s."""
    from qwenproxy.ledger.upkeep import LedgerUpkeep
    from qwenproxy.store import Database

    db = Database(url)
    upkeep = LedgerUpkeep(db, None)
    started = time.perf_counter()
    state = upkeep.prepare()
    while upkeep.backfill_step(chunk=20000):
        pass
    elapsed = time.perf_counter() - started
    db.dispose()
    return state.get("total", 0) / elapsed


def writer_rows_per_s(url: str, count: int = 50000) -> float:
    """Records of one busy minute after another through the real writer (with aggregates)."""
    from qwenproxy.ledger.writer import UsageLedger, UsageRecord
    from qwenproxy.store import Database

    db = Database(url)
    ledger = UsageLedger(db, queue_size=count + 1)
    now = time.time()
    for i in range(count):
        ledger.record(
            UsageRecord(
                started_at=now + i * 0.01,
                session_id=f"s{i % 200}",
                client_key_id=f"k{i % 20}",
                backend="dashscope",
                upstream_model=f"qwen-model-{i % 6}",
                prompt_tokens=1200,
                completion_tokens=300,
                latency_ms=50.0 + i % 5000,
                ttft_ms=180.0,
                tokens_per_s=45.0,
            )
        )
    started = time.perf_counter()
    ledger.flush(timeout=600)
    elapsed = time.perf_counter() - started
    ledger.close()
    db.dispose()
    return count / elapsed


def get(url: str, path: str) -> float:
    request = urllib.request.Request(url + path, headers={"Authorization": f"Bearer {PROXY_KEY}"})
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=120) as response:
        response.read()
        assert response.status == 200, response.status
    return time.perf_counter() - started


def chat(url: str) -> float:
    body = json.dumps(
        {"model": "qwen3-coder-plus", "messages": [{"role": "user", "content": "hi"}]}
    ).encode()
    request = urllib.request.Request(
        url + "/v1/chat/completions",
        data=body,
        headers={"Authorization": f"Bearer {PROXY_KEY}", "Content-Type": "application/json"},
    )
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=120) as response:
        response.read()
    return time.perf_counter() - started


def reads(proxy: ProxyProcess, repeat: int) -> dict[str, float]:
    """Median seconds per read; `nocache` varies the period by a second so every read is
    fresh (the ledger shares identical reads for 2 s)."""
    results = {}
    for group in GROUPS:
        times = []
        for n in range(repeat):
            query = f"?since={30 * DAY + n}" + (f"&group_by={group}" if group else "")
            times.append(get(proxy.url, "/usage/stats" + query))
        results[f"stats {group or 'all'}"] = statistics.median(times)
    results["dashboard"] = statistics.median(
        get(proxy.url, f"/dashboard?since={30 * DAY + n}") for n in range(repeat)
    )
    return results


def chat_wait(proxy: ProxyProcess) -> tuple[float, float]:
    """A chat's median latency alone, and while dashboards are read back to back."""
    alone = statistics.median(chat(proxy.url) for _ in range(20))
    stop = threading.Event()

    def reader() -> None:
        n = 0
        while not stop.is_set():
            get(proxy.url, f"/dashboard?since={30 * DAY + n}")
            n += 1

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    time.sleep(0.2)
    during = statistics.median(chat(proxy.url) for _ in range(20))
    stop.set()
    thread.join()
    return alone, during


def settled_rss(pid: int, timeout: float = 30.0) -> int:
    """The worker's RSS once two readings a second apart agree within 256 KB."""
    deadline = time.monotonic() + timeout
    last = rss_kb(pid)
    while time.monotonic() < deadline:
        time.sleep(1.0)
        now = rss_kb(pid)
        if abs(now - last) < 256:
            return now
        last = now
    return last


def measure(url: str, rows: int, workdir: Path) -> dict[str, object]:
    now = time.time()
    started = time.perf_counter()
    fill(url, rows, now)
    fill_s = time.perf_counter() - started
    migrate = build_aggregates(url)
    workdir.mkdir(parents=True, exist_ok=True)
    fake = FakeProcess(workdir, chunks=5, chunk_delay=0.0)
    proxy = ProxyProcess(workdir / "proxy", fake, extra_env={"DATABASE_URL": url})
    try:
        reads(proxy, 1)  # warm up, then let the worker finish its start-up work (the
        rss_before = settled_rss(proxy.worker_pid)  # tokenizer loads in the background)
        timings = reads(proxy, 5)
        rss_growth = (rss_kb(proxy.worker_pid) - rss_before) / 1024
        alone, during = chat_wait(proxy)
    finally:
        proxy.stop()
        fake.stop()
    writer = writer_rows_per_s(url)
    return {
        "rows": rows,
        "fill_s": round(fill_s, 1),
        "migration_rows_per_s": round(migrate),
        **{k: round(v * 1000, 1) for k, v in timings.items()},
        "rss_growth_mb": round(rss_growth, 1),
        "chat_ms_alone": round(alone * 1000, 2),
        "chat_ms_during_dashboards": round(during * 1000, 2),
        "writer_rows_per_s": round(writer),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ledger")
    parser.add_argument("--sizes", default="100000,10000000")
    parser.add_argument("--pg", help="PostgreSQL URL (its qp_* tables are emptied)")
    parser.add_argument("--sqlite-only", action="store_true")
    parser.add_argument("--pg-only", action="store_true", help="with --pg: skip SQLite")
    args = parser.parse_args(argv)
    sizes = [int(size) for size in args.sizes.split(",")]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        databases = (
            [] if args.pg and args.pg_only else [("sqlite", f"sqlite:///{Path(tmp) / 'ledger.db'}")]
        )
        if args.pg and not args.sqlite_only:
            databases.append(("postgresql", args.pg))
        for kind, url in databases:
            for rows in sizes:
                result = {"database": kind, **measure(url, rows, Path(tmp) / f"{kind}-{rows}")}
                print(json.dumps(result), flush=True)
                results.append(result)
    keys = [k for k in results[0] if k not in ("fill_s",)]
    print("\n| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for result in results:
        print("| " + " | ".join(str(result[k]) for k in keys) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
