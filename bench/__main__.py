"""`python -m bench`: qwenproxy's benchmark (issue 7). Starts a fast fake upstream and the
proxy (gunicorn, 1 gevent worker, every feature on), optionally LiteLLM's proxy, measures
them side by side, and writes bench/results/<date>.json, .md and .png.

    python -m bench [--quick] [--streams N] [--duration S] [--peers litellm] [--profile]
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

from bench import load, report
from bench.fake_upstream import BURST_MODEL
from bench.httpclient import Target
from bench.processes import (
    HOST,
    PROXY_KEY,
    FakeProcess,
    Process,
    ProxyProcess,
    raise_fd_limit,
)

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"
UPSTREAM_KEY = "bench-upstream-key"
IDLE_GAP_S = 0.02
TTFT_CHUNKS = 20
TTFT_CHUNK_DELAY_S = 0.001
CAPACITY_CHUNKS = 20
CAPACITY_CHUNK_DELAY_S = 0.1


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small numbers: a smoke run")
    parser.add_argument("--streams", type=int, help="concurrent streams (default 2000)")
    parser.add_argument("--duration", type=float, help="seconds per throughput run (10)")
    parser.add_argument("--requests", type=int, help="sequential requests per system (2000)")
    parser.add_argument("--connections", type=int, default=32, help="throughput clients")
    parser.add_argument(
        "--peers", default="", help="comma-separated peers to compare with: litellm"
    )
    parser.add_argument("--no-wrk", action="store_true", help="use the gevent load client")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also profile the proxy worker with py-spy (non-stream and stream load) and "
        "time each hot-path step in-process (bench/hotpath.py)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="results directory")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs)")
    args = parser.parse_args(argv)
    quick = args.quick
    args.streams = args.streams or (200 if quick else 2000)
    args.duration = args.duration or (3.0 if quick else 10.0)
    args.requests = args.requests or (300 if quick else 2000)
    args.warmup = 50 if quick else 200
    args.stream_requests = 100 if quick else 1000
    args.paced_requests = 40 if quick else 200
    args.idle_requests = 100 if quick else 300
    args.peers = [p.strip().lower() for p in args.peers.split(",") if p.strip()]
    unknown = set(args.peers) - {"litellm"}
    if unknown:
        parser.error(f"unknown peer(s): {', '.join(sorted(unknown))} (known: litellm)")
    return args


def say(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    limit = raise_fd_limit(max(8192, 4 * args.streams + 2000))
    if limit < 2 * args.streams + 500:
        say(f"open-file limit {limit} is too low for {args.streams} streams; lowering streams")
        args.streams = max(10, (limit - 500) // 2)
    tmp = Path(tempfile.mkdtemp(prefix="qwenproxy-bench-"))
    started: list[Process] = []
    date = dt.date.today().isoformat()
    results: dict[str, Any] = {
        "date": date,
        "started_at": dt.datetime.now().isoformat(timespec="seconds"),
        "machine": report.machine_info(),
        "settings": {
            "command": " ".join(["python -m bench", *(sys.argv[1:] if argv is None else argv)]),
            "quick": args.quick,
            "profile": args.profile,
            "requests": args.requests,
            "warmup": args.warmup,
            "duration_s": args.duration,
            "connections": args.connections,
            "stream_requests": args.stream_requests,
            "paced_requests": args.paced_requests,
            "idle_requests": args.idle_requests,
            "idle_gap_s": IDLE_GAP_S,
            "chunks": TTFT_CHUNKS,
            "chunk_delay_s": TTFT_CHUNK_DELAY_S,
            "streams": args.streams,
            "capacity_chunks": CAPACITY_CHUNKS,
            "capacity_chunk_delay_s": CAPACITY_CHUNK_DELAY_S,
            "peers": args.peers,
            "load_tool": "gevent" if args.no_wrk or not load.wrk_available() else "wrk",
            "fd_limit": limit,
        },
        "peers": {},
        "failures": [],
    }
    say(f"logs and temp files in {tmp}")

    def start(process_factory, *a, **kw):
        process = process_factory(*a, **kw)
        started.append(process)
        return process

    def stop(process: Process) -> None:
        process.stop()
        if process in started:
            started.remove(process)

    try:
        run_all(args, results, tmp, start, stop)
    except KeyboardInterrupt:
        results["failures"].append("interrupted")
    except Exception as exc:  # noqa: BLE001 - report what ran, then the failure
        results["failures"].append(f"{type(exc).__name__}: {exc}")
        traceback.print_exc()
    finally:
        for process in reversed(started):
            process.stop()
    stem = date + ("-quick" if args.quick else "")
    paths = report.write(results, args.out, stem)
    print()
    print(report.markdown(results))
    print()
    for failure in results["failures"]:
        print(f"FAILED: {failure}")
    for name, info in results["peers"].items():
        print(f"peer {name}: {info.get('message')}")
    print("written: " + ", ".join(str(p) for p in paths.values()))
    if args.keep or results["failures"]:
        print(f"logs kept in {tmp}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    return 1 if results["failures"] else 0


def side_by_side(
    args, targets: list[Target], cpu_pids: dict[str, Any], skip_direct_throughput: bool = False
) -> dict[str, dict[str, Any]]:
    """Latency (back to back and after idle), stream timing and throughput of `targets`,
    measured in the same conditions: the first target is `direct`, the reference."""
    out: dict[str, dict[str, Any]] = {}
    names = ", ".join(t.name for t in targets)
    say(f"sequential latency: {args.requests} requests each ({names}), in blocks")
    out["latency"] = load.sequential_latency(targets, args.requests, args.warmup)
    for name, lat in out["latency"].items():
        say(
            f"  {name:10s} p50 {lat.get('p50_ms', 0):.3f} ms  p99 {lat.get('p99_ms', 0):.3f} ms"
            f"  errors {lat['errors']}"
        )

    say(f"latency after idle: {args.idle_requests} requests each, every one after 20 ms idle")
    out["latency_idle"] = load.sequential_latency(
        targets, args.idle_requests, 20, idle_s=IDLE_GAP_S
    )
    for name, lat in out["latency_idle"].items():
        say(f"  {name:10s} p50 {lat.get('p50_ms', 0):.3f} ms  errors {lat['errors']}")

    say(f"stream timing: {args.stream_requests} streams each, in blocks")
    burst = load.stream_timing(
        [dataclasses.replace(t, model=BURST_MODEL) for t in targets], args.stream_requests, 20
    )
    paced = load.stream_timing(targets, args.paced_requests, 10)
    out["stream"] = {
        name: {
            "ttft": burst[name]["ttft"],
            "ttft_paced": paced[name]["ttft"],
            "inter_chunk": paced[name]["inter_chunk"],
            "stream_total_paced": paced[name]["stream_total"],
            "content_frames_per_stream": paced[name]["content_frames_per_stream"],
            "errors": burst[name]["errors"] + paced[name]["errors"],
        }
        for name in burst
    }
    for name, st in out["stream"].items():
        say(
            f"  {name:10s} ttft p50 {st['ttft'].get('p50_ms', 0):.3f} ms (paced stream "
            f"{st['ttft_paced'].get('p50_ms', 0):.3f} ms)  gap p50 "
            f"{st['inter_chunk'].get('p50_ms', 0):.3f} ms  errors {st['errors']}"
        )

    out["throughput"] = {}
    out["stream_throughput"] = {}
    for target in targets:
        if skip_direct_throughput and target.name == "direct":
            continue
        say(f"throughput: {target.name}, {args.connections} connections, {args.duration:g} s")
        tp = load.throughput(
            target,
            args.duration,
            args.connections,
            cpu_pids[target.name],
            warmup=1.0 if args.quick else 2.0,
            use_wrk=not args.no_wrk,
        )
        out["throughput"][target.name] = tp
        say(
            f"  {tp['rps']:,.0f} req/s, errors {tp['errors']}, p50 {tp['latency_p50_ms']:.2f} "
            f"ms, p99 {tp['latency_p99_ms']:.2f} ms, CPU {tp['cpu_us_per_request'] or 0:.0f} "
            "µs/request"
        )
        seconds = max(2.0, args.duration / 2)
        say(f"stream throughput: {target.name}, {args.connections} clients, {seconds:g} s")
        st = load.stream_throughput(target, seconds, args.connections, cpu_pids[target.name])
        out["stream_throughput"][target.name] = st
        say(
            f"  {st['streams_per_s']:,.0f} streams/s, {st['frames_per_s']:,.0f} frames/s, "
            f"errors {st['errors']}, CPU {st['cpu_us_per_stream'] or 0:.0f} µs/stream"
        )
    return out


def run_all(args, results: dict[str, Any], tmp: Path, start, stop) -> None:
    # --- phase 1: latency, streams and throughput: direct vs qwenproxy ---------------
    fake = start(FakeProcess, tmp, TTFT_CHUNKS, TTFT_CHUNK_DELAY_S)
    say(f"fake upstream on {fake.url} (pid {fake.pid})")
    proxy = start(ProxyProcess, tmp / "proxy", fake)
    say(f"qwenproxy on {proxy.url} (master {proxy.pid}, worker {proxy.worker_pid})")
    direct_t = Target("direct", HOST, fake.port, UPSTREAM_KEY)
    proxy_t = Target("qwenproxy", HOST, proxy.port, PROXY_KEY)
    cpu_pids = {"direct": lambda: [fake.pid], "qwenproxy": lambda: [proxy.worker_pid]}
    results.update(side_by_side(args, [direct_t, proxy_t], cpu_pids))

    if args.profile:
        from bench import profile

        stem = results["date"] + ("-quick" if args.quick else "")
        results["profile"] = {}
        say("profiling the proxy worker with py-spy: non-stream throughput run")
        results["profile"]["non_stream"] = profile.record_during(
            proxy.worker_pid,
            lambda: load.throughput(
                proxy_t,
                args.duration,
                args.connections,
                lambda: [proxy.worker_pid],
                0.5,
                use_wrk=not args.no_wrk,
            ),
            args.duration,
            args.out / f"{stem}-profile-nonstream",
        )
        say("profiling the proxy worker with py-spy: paced streams")
        results["profile"]["stream"] = profile.record_during(
            proxy.worker_pid,
            lambda: load.stream_load(proxy_t, args.duration, args.connections),
            args.duration,
            args.out / f"{stem}-profile-stream",
        )
        for kind, prof in results["profile"].items():
            say(f"  {kind}: {prof.get('summary_file') or prof.get('error')}")

    results["proxy_log"] = log_summary(proxy)
    stop(proxy)

    # --- phase 1b: peers, each alone beside the fake, against its own direct baseline ---
    if "litellm" in args.peers:
        peer_process = start_litellm(results, tmp, fake, start)
        if peer_process is not None:
            peer_t = Target("litellm", HOST, peer_process.port, peer_process_key())
            pid = peer_process.pid
            peer_pids = {"direct": lambda: [fake.pid], "litellm": lambda: _tree(pid)}
            measured = side_by_side(args, [direct_t, peer_t], peer_pids, True)
            results["peer_name"] = "litellm"
            results["peer_baseline"] = {
                kind: measured[kind]["direct"] for kind in ("latency", "latency_idle", "stream")
            }
            for kind, per_target in measured.items():
                results.setdefault(kind, {})["litellm"] = per_target["litellm"]
            stop(peer_process)

    if args.profile:
        from bench import hotpath

        say("hot path: in-process cost of each step of a non-stream request")
        results["hotpath"] = hotpath.measure(500 if args.quick else 3000)
        print(hotpath.format_table(results["hotpath"]), flush=True)

    # --- phase 2: many concurrent streams through one worker ---------------------------
    say(
        f"concurrent streams: {args.streams} at once, {CAPACITY_CHUNKS} chunks "
        f"{CAPACITY_CHUNK_DELAY_S * 1000:g} ms apart"
    )
    slow = start(FakeProcess, tmp, CAPACITY_CHUNKS, CAPACITY_CHUNK_DELAY_S)
    proxy2 = start(ProxyProcess, tmp / "proxy-streams", slow)
    proxy2_t = Target("qwenproxy", HOST, proxy2.port, PROXY_KEY)
    load.warm_streams(proxy2_t, 100 if not args.quick else 30)
    time.sleep(1.0)
    load.hold_fake(slow.port)
    cap = load.stream_capacity(
        proxy2_t,
        proxy2.worker_pid,
        lambda: load.release_fake(slow.port),
        args.streams,
        CAPACITY_CHUNKS,
    )
    cap["fake_max_open_streams"] = slow.stats()["max_open_streams"]
    results["capacity"] = cap
    say(
        f"  open at once {cap['open_at_once']} (in {cap['seconds_to_open_all']:.1f} s), complete "
        f"{cap['complete']}, lost {cap['frames_lost']}, reordered {cap['streams_reordered']}, "
        f"RSS/stream {cap['rss_per_open_stream_kb']:.1f} KB, errors {cap['errors']}"
    )
    results["capacity_proxy_log"] = log_summary(proxy2)
    stop(proxy2)
    stop(slow)

    # --- phase 3: token refresh under a burst -------------------------------------------
    say(f"token refresh: {report.BURST_REQUESTS} concurrent requests on an expired token")
    before = fake.stats()["refresh_calls"]
    proxy3 = start(ProxyProcess, tmp / "proxy-refresh", fake, token_expires_in=-3600)
    at_start = fake.stats()["refresh_calls"] - before
    burst = load.burst(Target("qwenproxy", HOST, proxy3.port, PROXY_KEY), report.BURST_REQUESTS)
    burst["refresh_calls"] = fake.stats()["refresh_calls"] - before
    burst["refresh_calls_at_start"] = at_start
    results["refresh"] = burst
    say(f"  refreshes {burst['refresh_calls']}, statuses {burst['statuses']}")
    results["refresh_proxy_log"] = log_summary(proxy3)
    stop(proxy3)
    stop(fake)


def peer_process_key() -> str:
    from bench.peers import LITELLM_KEY

    return LITELLM_KEY


def start_litellm(results: dict[str, Any], tmp: Path, fake: FakeProcess, start):
    from bench import peers

    say("LiteLLM: checking bench/.venv-litellm (installing if missing)")
    ok, message = peers.ensure_litellm(tmp / "litellm-install.log")
    results["peers"]["litellm"] = {"message": message, "installed": ok}
    if not ok:
        say(f"  LiteLLM unavailable: {message}")
        return None
    try:
        process = start(peers.LiteLLMProcess, tmp / "litellm", fake)
    except Exception as exc:  # noqa: BLE001 - reported instead of crashing
        message = f"{message}; did not start: {str(exc)[-600:]}"
        results["peers"]["litellm"]["message"] = message
        say(f"  LiteLLM did not start: {str(exc)[-300:]}")
        return None
    version = peers.litellm_version()
    results["peers"]["litellm"].update({"version": version, "running": True})
    results["peers"]["litellm"]["message"] = (
        f"litellm[proxy] {version}, 1 worker (`litellm --num_workers 1`), master key set"
    )
    say(f"  LiteLLM {version} on {process.url} (pid {process.pid})")
    return process


def _tree(pid: int) -> list[int]:
    from bench.processes import descendants

    return descendants(pid)


def log_summary(process: Process) -> dict[str, Any]:
    """Warnings and errors the process logged (counts, and a few distinct lines)."""
    text = process.output(tail=2_000_000)
    counts: dict[str, int] = {}
    samples: list[str] = []
    for line in text.splitlines():
        for level in ("WARNING", "ERROR", "CRITICAL", "Traceback"):
            if level in line:
                counts[level] = counts.get(level, 0) + 1
                trimmed = line.split(" ", 2)[-1][:200]
                if len(samples) < 8 and trimmed not in samples:
                    samples.append(trimmed)
                break
    return {"counts": counts, "samples": samples}


if __name__ == "__main__":
    sys.exit(main())
