"""The measurements: sequential latency, throughput at fixed concurrency (wrk, else a gevent
client), stream time-to-first-token and inter-chunk gaps, many concurrent streams with frame
integrity, and a burst of requests on an expired token. Each takes `Target`s from
bench.httpclient and returns plain dicts of figures."""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson

from bench.httpclient import CHAT_PATH, Connection, Target, frame_data, simple_post
from bench.processes import HOST, cpu_seconds, rss_kb

SYSTEM = "You are a careful coding assistant. Answer briefly and show code when it helps."
PROMPT = "Write a Python function that checks whether a string is a palindrome."


def chat_body(model: str, stream: bool = False) -> bytes:
    body: dict[str, Any] = {
        "model": model,
        "messages": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": PROMPT},
        ],
        "max_tokens": 256,
        "temperature": 0.2,
    }
    if stream:
        body["stream"] = True
    return json.dumps(body).encode()


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def summary_ms(values_s: list[float]) -> dict[str, float]:
    ms = [v * 1000 for v in values_s]
    if not ms:
        return {"count": 0}
    return {
        "count": len(ms),
        "p50_ms": percentile(ms, 50),
        "p90_ms": percentile(ms, 90),
        "p99_ms": percentile(ms, 99),
        "mean_ms": statistics.fmean(ms),
        "min_ms": min(ms),
        "max_ms": max(ms),
    }


# --- 1. non-stream latency at low load ---------------------------------------------------

BLOCK = 50  # requests a target gets back to back before the next target's turn
BLOCK_WARMUP = 3  # unmeasured requests at the start of each block


def schedule(
    targets: list[Target], count: int, warmup: int, block: int = BLOCK
) -> Iterator[tuple[Target, bool]]:
    """(target, measured?) in the order to send: a warm-up per target, then each target's
    requests in blocks of `block` back to back (each block starts with a few unmeasured
    requests, as the other targets ran meanwhile), the targets taking turns block by block
    so that they share the machine's conditions over the run. `block=1`: turn by turn."""
    for t in targets:
        for _ in range(warmup):
            yield t, False
    done = {t.name: 0 for t in targets}
    while any(done[t.name] < count for t in targets):
        for t in targets:
            n = min(block, count - done[t.name])
            if n <= 0:
                continue
            if block > 1:
                for _ in range(BLOCK_WARMUP):
                    yield t, False
            for _ in range(n):
                yield t, True
            done[t.name] += n


def sequential_latency(
    targets: list[Target], count: int, warmup: int, idle_s: float = 0.0
) -> dict[str, dict]:
    """`count` requests per target, one at a time on one keep-alive connection per target,
    in blocks (see `schedule`). With `idle_s`, every request follows that much idle time
    (as in real, sparse use), and the targets take turns request by request."""
    conns = {t.name: Connection(t.host, t.port, timeout=30) for t in targets}
    raws = {t.name: t.chat_request(chat_body(t.model)) for t in targets}
    timings: dict[str, list[float]] = {t.name: [] for t in targets}
    errors = {t.name: 0 for t in targets}
    clock = time.perf_counter
    for t, measured in schedule(targets, count, warmup, 1 if idle_s else BLOCK):
        conn, raw = conns[t.name], raws[t.name]
        if idle_s:
            time.sleep(idle_s)
        t0 = clock()
        try:
            status, _, body = conn.request(raw)
        except (OSError, Exception):  # noqa: BLE001 - counted, then reconnect
            errors[t.name] += 1
            conn.close()
            continue
        elapsed = clock() - t0
        if status != 200 or b'"choices"' not in body:
            errors[t.name] += 1
        elif measured:
            timings[t.name].append(elapsed)
    for conn in conns.values():
        conn.close()
    return {name: {**summary_ms(timings[name]), "errors": errors[name]} for name in timings}


# --- 2. throughput at fixed concurrency ---------------------------------------------------

WRK_SCRIPT = r"""
local f = assert(io.open(os.getenv("BENCH_BODY_FILE"), "rb"))
wrk.body = f:read("*a")
f:close()
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. os.getenv("BENCH_API_KEY")

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"bytes":%d,"connect_errors":%d,' ..
    '"read_errors":%d,"write_errors":%d,"status_errors":%d,"timeouts":%d,' ..
    '"p50_us":%d,"p90_us":%d,"p99_us":%d,"mean_us":%.1f,"max_us":%d}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write,
    e.status, e.timeout, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.mean, latency.max))
end
"""


def wrk_available() -> str | None:
    return shutil.which("wrk")


def throughput(
    target: Target,
    duration: float,
    connections: int,
    cpu_pids: Callable[[], list[int]],
    warmup: float = 2.0,
    use_wrk: bool = True,
) -> dict[str, Any]:
    """Requests/s at `connections` concurrent keep-alive clients for `duration` seconds,
    plus the CPU seconds the pids in `cpu_pids()` used per request."""
    runner = _wrk_run if use_wrk and wrk_available() else _gevent_run
    if warmup > 0:
        runner(target, warmup, connections)
    pids = cpu_pids()
    cpu_before = _cpu(pids)
    result = runner(target, duration, connections)
    cpu_used = _cpu(pids) - cpu_before
    ok = result["requests"] - result["errors"]
    result["cpu_s"] = cpu_used
    result["cpu_us_per_request"] = cpu_used / ok * 1e6 if ok > 0 else None
    result["cpu_cores_busy"] = cpu_used / result["elapsed_s"] if result["elapsed_s"] else None
    return result


def _cpu(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            total += cpu_seconds(pid)
        except OSError:
            pass
    return total


def _wrk_run(target: Target, duration: float, connections: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-wrk-") as tmp:
        script = Path(tmp) / "post.lua"
        script.write_text(WRK_SCRIPT)
        body = Path(tmp) / "body.json"
        body.write_bytes(chat_body(target.model))
        env = {**os.environ, "BENCH_BODY_FILE": str(body), "BENCH_API_KEY": target.api_key}
        command = [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{max(1, round(duration))}s",
            "--timeout",
            "10s",
            "-s",
            str(script),
            f"{target.url}{CHAT_PATH}",
        ]
        done = subprocess.run(
            command, env=env, capture_output=True, text=True, timeout=duration + 60
        )
    line = next((x for x in done.stdout.splitlines() if x.startswith("BENCH_JSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk failed: {done.stdout[-2000:]} {done.stderr[-2000:]}")
    raw = json.loads(line[len("BENCH_JSON ") :])
    elapsed = raw["duration_us"] / 1e6
    errors = (
        raw["connect_errors"]
        + raw["read_errors"]
        + raw["write_errors"]
        + raw["status_errors"]
        + raw["timeouts"]
    )
    return {
        "tool": "wrk",
        "connections": connections,
        "elapsed_s": elapsed,
        "requests": raw["requests"],
        "errors": errors,
        "rps": (raw["requests"] - errors) / elapsed if elapsed else 0.0,
        "latency_p50_ms": raw["p50_us"] / 1000,
        "latency_p90_ms": raw["p90_us"] / 1000,
        "latency_p99_ms": raw["p99_us"] / 1000,
        "latency_max_ms": raw["max_us"] / 1000,
        "wrk": raw,
    }


def _gevent_run(target: Target, duration: float, connections: int) -> dict[str, Any]:
    import gevent
    import gevent.event
    import gevent.socket

    raw = target.chat_request(chat_body(target.model))
    timings: list[float] = []
    errors = [0]
    clock = time.perf_counter
    deadline = clock() + duration

    def client() -> None:
        conn = Connection(target.host, target.port, 30, gevent.socket)
        while clock() < deadline:
            t0 = clock()
            try:
                status, _, _ = conn.request(raw)
            except Exception:  # noqa: BLE001 - counted
                errors[0] += 1
                conn.close()
                continue
            if status == 200:
                timings.append(clock() - t0)
            else:
                errors[0] += 1
        conn.close()

    started = clock()
    gevent.joinall([gevent.spawn(client) for _ in range(connections)])
    elapsed = clock() - started
    lat = summary_ms(timings)
    return {
        "tool": "gevent",
        "connections": connections,
        "elapsed_s": elapsed,
        "requests": len(timings) + errors[0],
        "errors": errors[0],
        "rps": len(timings) / elapsed if elapsed else 0.0,
        "latency_p50_ms": lat.get("p50_ms"),
        "latency_p90_ms": lat.get("p90_ms"),
        "latency_p99_ms": lat.get("p99_ms"),
        "latency_max_ms": lat.get("max_ms"),
    }


# --- 3. stream time to first token and inter-chunk gaps -----------------------------------


def _content_of(data: bytes) -> str | None:
    try:
        chunk = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    for choice in chunk.get("choices") or ():
        content = (choice.get("delta") or {}).get("content")
        if content:
            return content
    return None


def stream_timing(targets: list[Target], count: int, warmup: int) -> dict[str, dict]:
    """Sequential streams, in blocks per target (see `schedule`): time to the first content
    frame, and the gaps between content frames as the client sees them."""
    conns = {t.name: Connection(t.host, t.port, timeout=30) for t in targets}
    raws = {t.name: t.chat_request(chat_body(t.model, stream=True)) for t in targets}
    ttft: dict[str, list[float]] = {t.name: [] for t in targets}
    gaps: dict[str, list[float]] = {t.name: [] for t in targets}
    totals: dict[str, list[float]] = {t.name: [] for t in targets}
    frames: dict[str, list[int]] = {t.name: [] for t in targets}
    errors = {t.name: 0 for t in targets}
    for t, measured in schedule(targets, count, warmup):
        conn = conns[t.name]
        t0 = time.perf_counter()
        first = last = None
        content_frames = 0
        done = False
        gaps_now: list[float] = []
        try:
            status, _, stream = conn.stream(raws[t.name])
            for arrived, frame in stream:
                data = frame_data(frame)
                if data is None:
                    continue
                if data == b"[DONE]":
                    done = True
                    continue
                if _content_of(data) is None:
                    continue
                content_frames += 1
                if first is None:
                    first = arrived
                else:
                    gaps_now.append(arrived - last)
                last = arrived
        except Exception:  # noqa: BLE001 - counted, then reconnect
            errors[t.name] += 1
            conn.close()
            continue
        end = time.perf_counter()
        if status != 200 or first is None or not done:
            errors[t.name] += 1
            continue
        if measured:
            ttft[t.name].append(first - t0)
            totals[t.name].append(end - t0)
            frames[t.name].append(content_frames)
            gaps[t.name].extend(gaps_now)
    for conn in conns.values():
        conn.close()
    return {
        name: {
            "ttft": summary_ms(ttft[name]),
            "inter_chunk": summary_ms(gaps[name]),
            "stream_total": summary_ms(totals[name]),
            "content_frames_per_stream": statistics.median(frames[name]) if frames[name] else 0,
            "errors": errors[name],
        }
        for name in ttft
    }


# --- 4. many concurrent streams through one worker ----------------------------------------


def check_stream(indices: list[int], chunks: int) -> tuple[int, bool]:
    """(frames lost, reordered?) for the content-chunk indices one client received."""
    lost = len(set(range(chunks)) - set(indices))
    return lost, indices != sorted(indices) or len(indices) != len(set(indices))


def stream_capacity(
    proxy: Target,
    worker_pid: int,
    release: Callable[[], None],
    streams: int,
    chunks: int,
    open_timeout: float = 120.0,
    finish_timeout: float = 300.0,
) -> dict[str, Any]:
    """Open `streams` streams at once through the proxy to a fake that holds each one after
    its first content chunk; when all are open, note the worker's RSS, release the fake, and
    check that every client got chunks 0..chunks-1 in order, a finish and [DONE]."""
    import gevent
    import gevent.event
    import gevent.socket

    raw = proxy.chat_request(chat_body(proxy.model, stream=True))
    opened = [0]
    all_open = gevent.event.Event()
    results: list[dict[str, Any]] = []
    clock = time.perf_counter

    def client(n: int) -> None:
        conn = Connection(proxy.host, proxy.port, finish_timeout, gevent.socket)
        info: dict[str, Any] = {"indices": [], "done": False, "finish": False, "error": None}
        counted = False
        t0 = clock()
        try:
            status, _, stream = conn.stream(raw)
            info["status"] = status
            for _, frame in stream:
                data = frame_data(frame)
                if data is None:
                    info["pings"] = info.get("pings", 0) + 1
                    continue
                if info["done"]:
                    info["after_done"] = info.get("after_done", 0) + 1
                    continue
                if data == b"[DONE]":
                    info["done"] = True
                    break
                chunk = orjson.loads(data)
                if "error" in chunk:
                    info["error"] = str(chunk["error"])[:200]
                    break
                for choice in chunk.get("choices") or ():
                    content = (choice.get("delta") or {}).get("content")
                    if content:
                        info["indices"].append(int(content.strip()[1:]))
                        if not counted:
                            counted = True
                            info["open_s"] = clock() - t0
                            opened[0] += 1
                            if opened[0] >= streams:
                                all_open.set()
                    if choice.get("finish_reason"):
                        info["finish"] = True
        except Exception as exc:  # noqa: BLE001 - reported per stream
            info["error"] = f"{type(exc).__name__}: {exc}"[:200]
        finally:
            conn.close()
            if not counted:
                opened[0] += 1  # a failed stream counts, so the wait ends
                if opened[0] >= streams:
                    all_open.set()
            results.append(info)

    rss_idle = rss_kb(worker_pid)
    peak = [rss_idle]
    sampling = [True]

    def sampler() -> None:
        while sampling[0]:
            try:
                peak[0] = max(peak[0], rss_kb(worker_pid))
            except OSError:
                return
            gevent.sleep(0.05)

    sampler_greenlet = gevent.spawn(sampler)
    cpu_before = cpu_seconds(worker_pid)
    started = clock()
    greenlets = [gevent.spawn(client, n) for n in range(streams)]
    all_open.wait(open_timeout)
    open_elapsed = clock() - started
    open_now = opened[0]
    gevent.sleep(0.5)  # let the worker settle, then measure
    rss_open = rss_kb(worker_pid)
    release()
    released_at = clock()
    gevent.joinall(greenlets, timeout=finish_timeout)
    finish_elapsed = clock() - released_at
    sampling[0] = False
    sampler_greenlet.join(2)
    cpu_used = cpu_seconds(worker_pid) - cpu_before
    for g in greenlets:
        if not g.dead:
            g.kill(block=False)
    lost = reordered = incomplete = failed = 0
    errors: dict[str, int] = {}
    for info in results:
        missing, out_of_order = check_stream(info["indices"], chunks)
        lost += missing
        reordered += out_of_order
        if info["error"]:
            failed += 1
            errors[info["error"]] = errors.get(info["error"], 0) + 1
        elif not (info["done"] and info["finish"]) or missing or info.get("after_done"):
            incomplete += 1
    unfinished = streams - len(results)
    complete = sum(
        1
        for info in results
        if info["done"] and info["finish"] and not info["error"] and not out_of(info, chunks)
    )
    open_times = [info["open_s"] for info in results if "open_s" in info]
    return {
        "streams": streams,
        "chunks_per_stream": chunks,
        "open_at_once": open_now,
        "seconds_to_open_all": open_elapsed,
        "open_time": summary_ms(open_times),
        "seconds_to_finish_after_release": finish_elapsed,
        "complete": complete,
        "frames_lost": lost + unfinished * chunks,
        "streams_reordered": reordered,
        "streams_incomplete": incomplete + unfinished,
        "streams_failed": failed,
        "errors": dict(sorted(errors.items(), key=lambda kv: -kv[1])[:5]),
        "worker_rss_idle_kb": rss_idle,
        "worker_rss_open_kb": rss_open,
        "worker_rss_peak_kb": peak[0],
        "rss_per_open_stream_kb": (rss_open - rss_idle) / max(1, open_now),
        "worker_cpu_s": cpu_used,
    }


def out_of(info: dict[str, Any], chunks: int) -> bool:
    lost, reordered = check_stream(info["indices"], chunks)
    return bool(lost or reordered or info.get("after_done"))


def warm_streams(target: Target, count: int, concurrency: int = 50) -> None:
    """Streams (`concurrency` at a time) to warm a fresh worker — imports, pools, caches —
    before its idle memory is measured."""
    import gevent
    import gevent.pool
    import gevent.socket

    raw = target.chat_request(chat_body(target.model, stream=True))

    def one(_: int) -> None:
        conn = Connection(target.host, target.port, 60, gevent.socket)
        try:
            _, _, stream = conn.stream(raw)
            for _ in stream:
                pass
        finally:
            conn.close()

    gevent.pool.Pool(concurrency).map(one, range(count))


def release_fake(port: int) -> None:
    simple_post(HOST, port, "/release")


def hold_fake(port: int) -> None:
    simple_post(HOST, port, "/hold")


# --- 5. token refresh under a burst ------------------------------------------------------


def burst(target: Target, requests: int, timeout: float = 60.0) -> dict[str, Any]:
    """`requests` concurrent non-stream requests, each on its own new connection."""
    import gevent
    import gevent.event
    import gevent.socket

    raw = target.chat_request(chat_body(target.model))
    statuses: dict[str, int] = {}
    timings: list[float] = []
    gate = gevent.event.Event()

    def one() -> None:
        conn = Connection(target.host, target.port, timeout, gevent.socket)
        try:
            conn.connect()
            gate.wait()
            t0 = time.perf_counter()
            status, _, _ = conn.request(raw)
            timings.append(time.perf_counter() - t0)
            key = str(status)
        except Exception as exc:  # noqa: BLE001 - reported
            key = type(exc).__name__
        finally:
            conn.close()
        statuses[key] = statuses.get(key, 0) + 1

    greenlets = [gevent.spawn(one) for _ in range(requests)]
    gevent.sleep(0.2)  # every connection is open: now send all requests at once
    started = time.perf_counter()
    gate.set()
    gevent.joinall(greenlets, timeout=timeout)
    return {
        "requests": requests,
        "statuses": statuses,
        "ok": statuses.get("200", 0),
        "seconds": time.perf_counter() - started,
        "latency": summary_ms(timings),
    }


def stream_load(target: Target, duration: float, concurrency: int) -> dict[str, Any]:
    """Streams back to back from `concurrency` clients for `duration` seconds (for CPU per
    stream and profiling): streams/s and frames/s the clients received."""
    import gevent
    import gevent.socket

    raw = target.chat_request(chat_body(target.model, stream=True))
    done = [0, 0, 0]  # streams, frames, errors
    clock = time.perf_counter
    deadline = clock() + duration

    def client() -> None:
        conn = Connection(target.host, target.port, 30, gevent.socket)
        while clock() < deadline:
            try:
                status, _, stream = conn.stream(raw)
                frames = sum(1 for _ in stream)
            except Exception:  # noqa: BLE001 - counted
                done[2] += 1
                conn.close()
                continue
            if status == 200:
                done[0] += 1
                done[1] += frames
            else:
                done[2] += 1
        conn.close()

    started = clock()
    gevent.joinall([gevent.spawn(client) for _ in range(concurrency)])
    elapsed = clock() - started
    return {
        "concurrency": concurrency,
        "elapsed_s": elapsed,
        "requests": done[0] + done[2],
        "streams": done[0],
        "errors": done[2],
        "streams_per_s": done[0] / elapsed if elapsed else 0.0,
        "frames_per_s": done[1] / elapsed if elapsed else 0.0,
    }


def stream_throughput(
    target: Target, duration: float, concurrency: int, cpu_pids: Callable[[], list[int]]
) -> dict[str, Any]:
    stream_load(target, min(1.0, duration), concurrency)  # warm-up
    pids = cpu_pids()
    before = _cpu(pids)
    result = stream_load(target, duration, concurrency)
    used = _cpu(pids) - before
    result["cpu_s"] = used
    result["cpu_us_per_stream"] = used / result["streams"] * 1e6 if result["streams"] else None
    return result
