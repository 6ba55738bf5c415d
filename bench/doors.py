"""CPU per relayed frame on each front door (issue 15): the chat door, Anthropic's
/v1/messages and OpenAI's /v1/responses, each under many concurrent streams on one
gunicorn gevent worker against the paced fake upstream.

    python -m bench.doors [--streams 500] [--chunks 50] [--delay 0.02] [--rounds 2] [--json P]
                          [--profile DIR]   # + one round per door under py-spy
    python -m bench.doors --in-process [--chunks 20000]   # the relay + translation alone

Each round opens `--streams` streams at once on one door; the fake sends every stream a
role chunk, `--chunks` content chunks `--delay` s apart, a finish, usage and [DONE]. The
worker's CPU (utime + stime from /proc) over the round, divided by the upstream frames
relayed (streams × (chunks + 3)), is the figure: it holds the whole request too (auth,
body, routing, accounting), spread over its frames. The doors take turns round by round
so that they share the machine's conditions; the best round of each door is reported
(the machine is shared, and other load only ever adds CPU).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.httpclient import Connection, build_request
from bench.processes import (
    CLOCK_TICKS,
    HOST,
    PROXY_KEY,
    FakeProcess,
    ProxyProcess,
    raise_fd_limit,
)

MODEL = "qwen3-coder-plus"
PROMPT = "Write a Python function that checks whether a string is a palindrome."
HEADERS = {"Content-Type": "application/json", "Authorization": f"Bearer {PROXY_KEY}"}

DOORS: dict[str, tuple[str, dict[str, Any]]] = {
    "chat": (
        "/v1/chat/completions",
        {"model": MODEL, "stream": True, "messages": [{"role": "user", "content": PROMPT}]},
    ),
    "anthropic": (
        "/v1/messages",
        {
            "model": MODEL,
            "stream": True,
            "max_tokens": 256,
            "messages": [{"role": "user", "content": PROMPT}],
        },
    ),
    "responses": ("/v1/responses", {"model": MODEL, "stream": True, "input": PROMPT}),
}
# What ends a door's stream: the last frame a client waits for.
LAST = {"chat": b"data: [DONE]", "anthropic": b"event: message_stop", "responses": b"event: "}


def _ended(door: str, frame: bytes) -> bool:
    if door == "responses":
        return frame.startswith((b"event: response.completed", b"event: response.failed"))
    return frame.startswith(LAST[door])


def user_system_s(pid: int) -> tuple[float, float]:
    """(utime, stime) of one process, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / CLOCK_TICKS, int(fields[12]) / CLOCK_TICKS


def one_round(port: int, worker_pid: int, door: str, streams: int, timeout: float) -> dict:
    import gevent
    import gevent.socket

    path, body = DOORS[door]
    raw = build_request(HOST, port, "POST", path, json.dumps(body).encode(), HEADERS)
    counts = {"ok": 0, "failed": 0, "frames": 0}

    def client() -> None:
        conn = Connection(HOST, port, timeout, gevent.socket)
        try:
            status, _, frames = conn.stream(raw)
            ended = False
            for _, frame in frames:
                counts["frames"] += 1
                if _ended(door, frame):
                    ended = True
                    break
            counts["ok" if status == 200 and ended else "failed"] += 1
        except Exception:  # noqa: BLE001 - counted
            counts["failed"] += 1
        finally:
            conn.close()

    user_before, system_before = user_system_s(worker_pid)
    started = time.perf_counter()
    gevent.joinall([gevent.spawn(client) for _ in range(streams)], timeout=timeout)
    elapsed = time.perf_counter() - started
    user, system = user_system_s(worker_pid)
    user, system = user - user_before, system - system_before
    return {
        **counts,
        "elapsed_s": round(elapsed, 2),
        "cpu_s": round(user + system, 3),
        "user_s": round(user, 3),
        "system_s": round(system, 3),
    }


def profile_doors(proxy: ProxyProcess, args: argparse.Namespace) -> dict[str, Any]:
    """One more round per door while py-spy samples the worker; the summaries' paths."""
    from bench.profile import record_during

    written = {}
    for door in DOORS:
        stem = args.profile / f"{time.strftime('%Y-%m-%d')}-doors-profile-{door}"
        summary = record_during(
            proxy.worker_pid,
            lambda door=door: one_round(proxy.port, proxy.worker_pid, door, args.streams, 300),
            4.0,
            stem,
        )
        written[door] = summary.get("summary_file") or summary.get("error")
        print(f"profile {door}: {written[door]}", flush=True)
    return written


def in_process(chunks: int) -> dict[str, float]:
    """µs per frame of the proxy's own stream code alone, in this process: the relay
    (loop detection on) and each door's encoding, over a `chunks`-delta answer."""
    import orjson

    from qwenproxy.doors.anthropic.request import AnthropicRequest
    from qwenproxy.doors.anthropic.stream import AnthropicStream
    from qwenproxy.doors.responses.request import to_chat_request
    from qwenproxy.doors.responses.stream import ResponsesStream
    from qwenproxy.doors.translator import translate_events
    from qwenproxy.pipeline.context import RequestContext
    from qwenproxy.pipeline.guards.loops import LoopDetector
    from qwenproxy.pipeline.relay import StreamRelaySettings, chat_frames, relay_stream
    from qwenproxy.sse import SSEEvent

    def chunk(delta: dict, finish: str | None = None) -> SSEEvent:
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        head = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1}
        return SSEEvent(orjson.dumps({**head, "model": MODEL, "choices": [choice]}))

    reads = [[chunk({"content": f"w{i} "})] for i in range(chunks)]
    reads.append([chunk({}, "stop"), SSEEvent(b"[DONE]")])

    class Upstream:
        def batches(self, quiet: float | None) -> Any:
            return iter(reads)

        def close(self) -> None:
            pass

    encoders = {
        "chat": (False, chat_frames),
        "anthropic": (
            True,
            lambda e: translate_events(e, AnthropicStream(AnthropicRequest({}, MODEL))),
        ),
        "responses": (
            True,
            lambda e: translate_events(e, ResponsesStream(to_chat_request({"input": "hi"}, {}))),
        ),
    }
    figures = {}
    for door, (typed, encode) in encoders.items():
        ctx = RequestContext("bench", "bench", translated=typed)
        settings = StreamRelaySettings(True, LoopDetector(), None, typed)
        events = relay_stream(Upstream(), "bench", ctx, settings, lambda: None, lambda: None)
        started = time.perf_counter()
        for _ in encode(events):
            pass
        figures[door] = round((time.perf_counter() - started) / chunks * 1e6, 2)
        print(f"{door:10s} {figures[door]:6.2f} µs/frame in process", flush=True)
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.doors", description=__doc__)
    parser.add_argument("--streams", type=int, default=500)
    parser.add_argument("--chunks", type=int, default=50)
    parser.add_argument("--delay", type=float, default=0.02)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--profile", type=Path, help="write py-spy summaries here")
    parser.add_argument("--in-process", action="store_true", help="the stream code alone")
    args = parser.parse_args(argv)
    if args.in_process:
        figures = in_process(args.chunks if args.chunks != 50 else 20000)
        if args.json:
            args.json.write_text(json.dumps(figures, indent=2) + "\n")
        return 0
    from gevent import monkey

    monkey.patch_all()
    raise_fd_limit(4 * args.streams + 1024)
    frames_per_stream = args.chunks + 3  # role, content..., finish, usage ([DONE] aside)
    settings = {k: v for k, v in vars(args).items() if k not in ("json", "profile")}
    results: dict[str, Any] = {"settings": settings, "doors": {}}
    with tempfile.TemporaryDirectory(prefix="qp-bench-doors-") as tmp:
        fake = FakeProcess(Path(tmp), chunks=args.chunks, chunk_delay=args.delay)
        proxy = ProxyProcess(Path(tmp) / "proxy", fake, extra_env={"LOG_LEVEL": "WARNING"})
        try:
            for door in DOORS:  # warm every door's code and connections
                one_round(proxy.port, proxy.worker_pid, door, 20, 60)
            rounds: dict[str, list[dict]] = {door: [] for door in DOORS}
            for _ in range(args.rounds):
                for door in DOORS:
                    got = one_round(proxy.port, proxy.worker_pid, door, args.streams, 300)
                    got["us_per_frame"] = round(
                        got["cpu_s"] / (args.streams * frames_per_stream) * 1e6, 1
                    )
                    rounds[door].append(got)
                    print(door, json.dumps(got), flush=True)
            if args.profile:
                results["profiles"] = profile_doors(proxy, args)
        finally:
            proxy.stop()
            fake.stop()
    chat = min(r["us_per_frame"] for r in rounds["chat"])
    for door, runs in rounds.items():
        best = min(r["us_per_frame"] for r in runs)
        results["doors"][door] = {
            "best_us_per_frame": best,
            "vs_chat": round(best / chat, 3),
            "rounds": runs,
        }
        print(f"{door:10s} {best:6.1f} µs/frame  ({best / chat:.2f}× chat)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
