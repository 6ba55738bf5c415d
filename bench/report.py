"""Turns one run's figures into bench/results/<date>.json, a Markdown table (<date>.md) and
a bar chart (<date>.png), and says which targets are met."""

from __future__ import annotations

import json
import math
import os
import platform
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

# Targets of issue 7.
ADDED_LATENCY_P50_MS = 0.5
ADDED_TTFT_P50_MS = 1.0
THROUGHPUT_FACTOR = 10.0
LITELLM_REFERENCE_RPS = 112.0  # LiteLLM's proxy, 32 clients, 1 worker, measured before
STREAMS_TARGET = 2000
RSS_PER_STREAM_KB = 40.0
REFRESHES_TARGET = 1
BURST_REQUESTS = 200


def machine_info() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory_gb = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_gb = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    versions = {}
    for package in ("flask", "werkzeug", "gunicorn", "gevent", "requests", "urllib3", "orjson"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    wrk = shutil.which("wrk")
    if wrk:
        done = subprocess.run([wrk, "-v"], capture_output=True, text=True)
        versions["wrk"] = (done.stdout + done.stderr).split("[")[0].replace("wrk", "").strip()
    commit = None
    try:
        head = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        commit = head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": memory_gb,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "kernel": platform.release(),
        "os": platform.platform(terse=True),
        "packages": versions,
        "commit": commit,
    }


# --- the table ---------------------------------------------------------------------------


def _get(data: dict, *path: str) -> Any:
    for key in path:
        if not isinstance(data, dict) or key not in data:
            return None
        data = data[key]
    return data


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, float):
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        if abs(value) >= 100:
            return f"{value:.0f}"
        return f"{value:.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _met(ok: bool | None) -> str:
    return "—" if ok is None else ("yes" if ok else "**no**")


def build_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows of figure | direct | qwenproxy | peer | target | met."""
    peer = results.get("peer_name")
    lat, stream, tp = (
        results.get("latency", {}),
        results.get("stream", {}),
        results.get("throughput", {}),
    )
    rows: list[dict[str, Any]] = []

    def row(figure, direct=None, proxy=None, other=None, target="", met=None, key=None):
        rows.append(
            {
                "key": key,
                "figure": figure,
                "direct": direct,
                "qwenproxy": proxy,
                "peer": other,
                "target": target,
                "met": met,
            }
        )

    for q in ("p50", "p90", "p99"):
        row(
            f"Non-stream latency {q}, sequential (ms)",
            _get(lat, "direct", f"{q}_ms"),
            _get(lat, "qwenproxy", f"{q}_ms"),
            _get(lat, peer, f"{q}_ms") if peer else None,
            key=f"latency_{q}",
        )
    direct_p50 = _get(lat, "direct", "p50_ms")
    added = _sub(_get(lat, "qwenproxy", "p50_ms"), direct_p50)
    base = results.get("peer_baseline") or {}
    added_peer = (
        _sub(_get(lat, peer, "p50_ms"), _get(base, "latency", "p50_ms") or direct_p50)
        if peer
        else None
    )
    row(
        "Added latency p50, non-stream (proxy − direct, ms)",
        None,
        added,
        added_peer,
        f"≤ {ADDED_LATENCY_P50_MS} ms",
        None if added is None else added <= ADDED_LATENCY_P50_MS,
        key="added_latency_p50",
    )
    idle = results.get("latency_idle", {})
    idle_gap = results.get("settings", {}).get("idle_gap_s", 0.02) * 1000
    row(
        f"Non-stream latency p50, each request after {idle_gap:g} ms idle (ms)",
        _get(idle, "direct", "p50_ms"),
        _get(idle, "qwenproxy", "p50_ms"),
        _get(idle, peer, "p50_ms") if peer else None,
        key="latency_idle_p50",
    )
    row(
        "Stream time to first token p50, back to back (ms)",
        _get(stream, "direct", "ttft", "p50_ms"),
        _get(stream, "qwenproxy", "ttft", "p50_ms"),
        _get(stream, peer, "ttft", "p50_ms") if peer else None,
        key="ttft_p50",
    )
    direct_ttft = _get(stream, "direct", "ttft", "p50_ms")
    added_ttft = _sub(_get(stream, "qwenproxy", "ttft", "p50_ms"), direct_ttft)
    row(
        "Added time to first token p50, stream (ms)",
        None,
        added_ttft,
        _sub(
            _get(stream, peer, "ttft", "p50_ms"),
            _get(base, "stream", "ttft", "p50_ms") or direct_ttft,
        )
        if peer
        else None,
        f"≤ {ADDED_TTFT_P50_MS:g} ms",
        None if added_ttft is None else added_ttft <= ADDED_TTFT_P50_MS,
        key="added_ttft_p50",
    )
    gap = results.get("settings", {}).get("chunk_delay_s")
    chunks = results.get("settings", {}).get("chunks")
    paced_text = f"{chunks} chunks {gap * 1000:g} ms apart" if gap else "paced"
    row(
        f"Time to first token p50, paced stream ({paced_text}) (ms)",
        _get(stream, "direct", "ttft_paced", "p50_ms"),
        _get(stream, "qwenproxy", "ttft_paced", "p50_ms"),
        _get(stream, peer, "ttft_paced", "p50_ms") if peer else None,
        key="ttft_paced_p50",
    )
    row(
        "Inter-chunk gap p50 / p99, paced stream (ms)",
        _pair(
            _get(stream, "direct", "inter_chunk", "p50_ms"),
            _get(stream, "direct", "inter_chunk", "p99_ms"),
        ),
        _pair(
            _get(stream, "qwenproxy", "inter_chunk", "p50_ms"),
            _get(stream, "qwenproxy", "inter_chunk", "p99_ms"),
        ),
        _pair(
            _get(stream, peer, "inter_chunk", "p50_ms"), _get(stream, peer, "inter_chunk", "p99_ms")
        )
        if peer
        else None,
        key="inter_chunk",
    )
    conns = _get(tp, "qwenproxy", "connections") or results.get("settings", {}).get("connections")
    proxy_rps = _get(tp, "qwenproxy", "rps")
    peer_rps = _get(tp, peer, "rps") if peer else None
    reference = peer_rps if peer_rps else LITELLM_REFERENCE_RPS
    reference_text = (
        f"LiteLLM measured {reference:.0f}" if peer_rps else f"LiteLLM ref. {reference:.0f}"
    )
    row(
        f"Throughput, non-stream, {conns} connections, 1 worker (req/s)",
        _get(tp, "direct", "rps"),
        proxy_rps,
        peer_rps,
        f"≥ {THROUGHPUT_FACTOR:g}× LiteLLM = {THROUGHPUT_FACTOR * reference:,.0f} "
        f"({reference_text})",
        None if proxy_rps is None else proxy_rps >= THROUGHPUT_FACTOR * reference,
        key="throughput",
    )
    row(
        "Throughput vs LiteLLM (×)",
        None,
        proxy_rps / reference if proxy_rps else None,
        1.0 if peer_rps else None,
        f"≥ {THROUGHPUT_FACTOR:g}×",
        None if proxy_rps is None else proxy_rps / reference >= THROUGHPUT_FACTOR,
        key="throughput_factor",
    )
    if peer_rps and proxy_rps:
        row(
            f"Throughput vs LiteLLM's earlier {LITELLM_REFERENCE_RPS:.0f} req/s (×)",
            None,
            proxy_rps / LITELLM_REFERENCE_RPS,
            peer_rps / LITELLM_REFERENCE_RPS,
            f"≥ {THROUGHPUT_FACTOR:g}× (= {THROUGHPUT_FACTOR * LITELLM_REFERENCE_RPS:,.0f} req/s)",
            proxy_rps >= THROUGHPUT_FACTOR * LITELLM_REFERENCE_RPS,
            key="throughput_factor_reference",
        )
    row(
        "Latency under load p50 / p99 (ms)",
        _pair(_get(tp, "direct", "latency_p50_ms"), _get(tp, "direct", "latency_p99_ms")),
        _pair(_get(tp, "qwenproxy", "latency_p50_ms"), _get(tp, "qwenproxy", "latency_p99_ms")),
        _pair(_get(tp, peer, "latency_p50_ms"), _get(tp, peer, "latency_p99_ms")) if peer else None,
        key="latency_under_load",
    )
    row(
        "CPU per request under load (µs; direct = the fake upstream)",
        _get(tp, "direct", "cpu_us_per_request"),
        _get(tp, "qwenproxy", "cpu_us_per_request"),
        _get(tp, peer, "cpu_us_per_request") if peer else None,
        key="cpu_per_request",
    )
    stp = results.get("stream_throughput") or {}
    if stp:
        row(
            f"Stream throughput, {_get(stp, 'qwenproxy', 'concurrency')} clients, paced streams "
            "(streams/s)",
            _get(stp, "direct", "streams_per_s"),
            _get(stp, "qwenproxy", "streams_per_s"),
            _get(stp, peer, "streams_per_s") if peer else None,
            key="stream_throughput",
        )
        row(
            "CPU per stream (µs; direct = the fake upstream)",
            _get(stp, "direct", "cpu_us_per_stream"),
            _get(stp, "qwenproxy", "cpu_us_per_stream"),
            _get(stp, peer, "cpu_us_per_stream") if peer else None,
            key="cpu_per_stream",
        )
    cap = results.get("capacity") or {}
    if cap:
        n = cap.get("streams")
        ok = (
            cap.get("open_at_once", 0) >= min(n or 0, STREAMS_TARGET)
            and cap.get("complete") == n
            and cap.get("frames_lost") == 0
            and cap.get("streams_reordered") == 0
        )
        if n is not None and n < STREAMS_TARGET:
            ok = None  # a smaller run cannot show the target
        row(
            "Concurrent open streams, one worker (open at once / complete)",
            None,
            f"{_fmt(cap.get('open_at_once'))} / {_fmt(cap.get('complete'))} of {_fmt(n)}",
            None,
            f"{STREAMS_TARGET:,}, 0 lost or reordered",
            ok,
            key="streams",
        )
        row(
            "Frames lost / streams reordered / streams incomplete",
            None,
            f"{cap.get('frames_lost')} / {cap.get('streams_reordered')} / "
            f"{cap.get('streams_incomplete')}",
            None,
            "0 / 0 / 0",
            cap.get("frames_lost") == 0
            and cap.get("streams_reordered") == 0
            and cap.get("streams_incomplete") == 0,
            key="integrity",
        )
        per = cap.get("rss_per_open_stream_kb")
        row(
            "RSS per open stream, worker (KB)",
            None,
            per,
            None,
            f"≤ {RSS_PER_STREAM_KB:g} KB",
            None if per is None else per <= RSS_PER_STREAM_KB,
            key="rss_per_stream",
        )
        row(
            "Worker RSS idle → with streams open → peak (MB)",
            None,
            f"{cap.get('worker_rss_idle_kb', 0) / 1024:.1f} → "
            f"{cap.get('worker_rss_open_kb', 0) / 1024:.1f} → "
            f"{cap.get('worker_rss_peak_kb', 0) / 1024:.1f}",
            None,
            key="rss",
        )
    refresh = results.get("refresh") or {}
    if refresh:
        calls = refresh.get("refresh_calls")
        n = refresh.get("requests")
        row(
            f"Upstream token refreshes for {n} concurrent requests on an expired token",
            None,
            f"{calls} ({refresh.get('ok')}/{n} answered 200)",
            None,
            f"{REFRESHES_TARGET}",
            calls == REFRESHES_TARGET and refresh.get("ok") == n,
            key="refresh",
        )
    return rows


def _sub(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def _pair(a: float | None, b: float | None) -> str | None:
    if a is None and b is None:
        return None
    return f"{_fmt(a)} / {_fmt(b)}"


def markdown(results: dict[str, Any]) -> str:
    peer = results.get("peer_name")
    peer_header = peer or "peer"
    lines = [
        f"| figure | direct | qwenproxy | {peer_header} | target | met? |",
        "|---|---:|---:|---:|---|---|",
    ]
    for r in results["rows"]:
        lines.append(
            f"| {r['figure']} | {_fmt(r['direct'])} | {_fmt(r['qwenproxy'])} | "
            f"{_fmt(r['peer'])} | {r['target'] or '—'} | {_met(r['met'])} |"
        )
    return "\n".join(lines)


def markdown_document(results: dict[str, Any]) -> str:
    m = results["machine"]
    s = results["settings"]
    peer_note = ""
    for name, info in (results.get("peers") or {}).items():
        peer_note += f"- peer `{name}`: {info.get('message')}\n"
    return (
        f"# qwenproxy benchmark, {results['date']}{' (quick)' if s.get('quick') else ''}\n\n"
        f"`{s.get('command') or 'python -m bench'}` — "
        f"direct = client → fake upstream; qwenproxy = client → proxy (gunicorn, 1 gevent "
        f"worker, qwen-oauth backend, client keys, accounting and guards on) → fake upstream.\n\n"
        + markdown(results)
        + "\n\n"
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gb']} GB; Python {m['python']}; "
        f"Linux {m['kernel']}; commit {m.get('commit')}.\n"
        f"Settings: {s['requests']} sequential requests per system after {s['warmup']} warm-up; "
        f"throughput {s['duration_s']:g} s at {s['connections']} connections with "
        f"{results.get('throughput', {}).get('qwenproxy', {}).get('tool', '?')}; "
        f"TTFT over {s['stream_requests']} streams sent in one piece, inter-chunk gaps over "
        f"{s.get('paced_requests')} streams of {s['chunks']} chunks "
        f"{s['chunk_delay_s'] * 1000:g} ms apart; "
        f"{s['streams']} concurrent streams of {s['capacity_chunks']} chunks "
        f"{s['capacity_chunk_delay_s'] * 1000:g} ms apart; refresh burst of {BURST_REQUESTS}.\n"
        + (
            f"\n{peer_note}- The peer runs alone beside the fake, after qwenproxy has stopped; "
            "its added latency and TTFT are against the direct figures measured with it.\n"
            if peer_note
            else ""
        )
        + ("\nChart: " + f"![chart]({results['chart']})\n" if results.get("chart") else "")
        + _appendix(results)
    )


def _appendix(results: dict[str, Any]) -> str:
    parts = []
    for failure in results.get("failures") or ():
        parts.append(f"**Failed:** {failure}\n")
    for kind, prof in (results.get("profile") or {}).items():
        if "error" in prof:
            parts.append(f"Profile ({kind}): {prof['error']}\n")
            continue
        areas = ", ".join(f"{name} {pct:.0f}%" for name, pct in prof["area_self_pct"][:10])
        parts.append(
            f"Profile of the worker, {kind} ({prof['samples']} py-spy samples; "
            f"`{Path(prof['summary_file']).name}`): {areas}.\n"
        )
    hot = results.get("hotpath")
    if hot:
        from bench.hotpath import format_table

        note = f" ({results['hotpath_note']})" if results.get("hotpath_note") else ""
        parts.append(
            f"In-process cost of each step (`python -m bench.hotpath`){note}:\n\n"
            + format_table(hot)
            + "\n"
        )
    return ("\n" + "\n".join(parts)) if parts else ""


# --- the chart -------------------------------------------------------------------------


def chart(results: dict[str, Any], path: Path) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install -r bench/requirements-bench.txt)"
    systems = [s for s in ("direct", "qwenproxy", results.get("peer_name")) if s]
    colors = {"direct": "#9e9e9e", "qwenproxy": "#1f77b4"}
    lat, tp, stream = (
        results.get("latency", {}),
        results.get("throughput", {}),
        results.get("stream", {}),
    )
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.6))
    # 1. latency p50 / p99
    ax = axes[0]
    width = 0.8 / len(systems)
    for i, name in enumerate(systems):
        values = [_get(lat, name, "p50_ms") or 0, _get(lat, name, "p99_ms") or 0]
        xs = [x + (i - (len(systems) - 1) / 2) * width for x in range(2)]
        bars = ax.bar(xs, values, width, label=name, color=colors.get(name, "#ff7f0e"))
        ax.bar_label(bars, labels=[f"{v:.2f}" for v in values], fontsize=7, padding=2)
    ax.set_xticks(range(2), ["p50", "p99"])
    ax.set_ylabel("ms")
    ax.set_title("Non-stream latency, sequential")
    ax.legend(fontsize=8)
    # 2. throughput
    ax = axes[1]
    values = [_get(tp, name, "rps") or 0 for name in systems]
    bars = ax.bar(systems, values, color=[colors.get(n, "#ff7f0e") for n in systems])
    ax.bar_label(bars, labels=[f"{v:,.0f}" for v in values], fontsize=8, padding=2)
    conns = results["settings"]["connections"]
    ax.set_yscale("log")
    peer_rps = _get(tp, results.get("peer_name") or "", "rps")
    goal = THROUGHPUT_FACTOR * (peer_rps or LITELLM_REFERENCE_RPS)
    ax.axhline(goal, color="#d62728", linestyle="--", linewidth=1)
    ax.annotate(
        f"target {goal:,.0f} (10× LiteLLM)",
        (len(systems) - 0.5, goal),
        xytext=(0, 3),
        textcoords="offset points",
        ha="right",
        fontsize=7,
        color="#d62728",
    )
    ax.set_title(f"Throughput, {conns} connections, 1 worker (log scale)")
    ax.set_ylabel("requests / s")
    # 3. TTFT
    ax = axes[2]
    for i, name in enumerate(systems):
        values = [
            _get(stream, name, "ttft", "p50_ms") or 0,
            _get(stream, name, "ttft", "p99_ms") or 0,
        ]
        xs = [x + (i - (len(systems) - 1) / 2) * width for x in range(2)]
        bars = ax.bar(xs, values, width, label=name, color=colors.get(name, "#ff7f0e"))
        ax.bar_label(bars, labels=[f"{v:.2f}" for v in values], fontsize=7, padding=2)
    ax.set_xticks(range(2), ["p50", "p99"])
    ax.set_ylabel("ms")
    ax.set_title("Stream time to first token")
    m = results["machine"]
    fig.suptitle(
        f"qwenproxy vs direct{' vs ' + results['peer_name'] if results.get('peer_name') else ''}"
        f" — {results['date']}, {m['cpu']} ({m['cores']} cores), Python {m['python']}",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


def write(results: dict[str, Any], out_dir: Path, stem: str) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "json": out_dir / f"{stem}.json",
        "md": out_dir / f"{stem}.md",
        "png": out_dir / f"{stem}.png",
    }
    results["rows"] = build_rows(results)
    problem = chart(results, paths["png"])
    if problem:
        results["chart_error"] = problem
        paths.pop("png")
    else:
        try:
            results["chart"] = str(paths["png"].relative_to(ROOT))
        except ValueError:
            results["chart"] = str(paths["png"])
        results["chart"] = paths["png"].name
    paths["md"].write_text(markdown_document(results))
    paths["json"].write_text(json.dumps(results, indent=2, default=str) + "\n")
    return paths


if __name__ == "__main__":  # re-render a saved run: python -m bench.report results/X.json
    saved = json.loads(Path(sys.argv[1]).read_text())
    target = Path(sys.argv[1])
    print(markdown(saved) if "rows" in saved else "no rows")
    write(saved, target.parent, target.stem)
