"""`python -m bench.idle`: the latency a request sees after the proxy sat idle (issue 15),
on its own so it can be repeated and traced. Starts the fake upstream and the proxy as
`python -m bench` does, then measures the fake alone and the proxy, request by request in
turn, back to back and after each of several idle gaps, with the worker's CPU time and
run-queue wait per request (the scheduler's own accounting); with `--strace` it also counts
the worker's system calls (all its threads) over an idle run, and with `--wakeups` it
counts how often the worker woke while nobody sent it anything.

    python -m bench.idle [--requests N] [--gaps 0,0.02,0.2] [--rounds R] [--strace] [--wakeups S]
                           [--env NAME=VALUE ...]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from bench import load
from bench.httpclient import Target
from bench.processes import CLOCK_TICKS, HOST, PROXY_KEY, FakeProcess, ProxyProcess

UPSTREAM_KEY = "bench-upstream-key"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.idle", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--requests", type=int, default=200, help="requests per gap and target")
    parser.add_argument("--gaps", default="0,0.02", help="idle gaps in seconds, comma-separated")
    parser.add_argument("--rounds", type=int, default=3, help="repetitions of every gap")
    parser.add_argument("--strace", action="store_true", help="count the worker's syscalls")
    parser.add_argument(
        "--wakeups", type=float, default=0.0, help="seconds to count the idle worker's wake-ups"
    )
    parser.add_argument(
        "--env", action="append", default=[], help="NAME=VALUE for the proxy (repeatable)"
    )
    return parser.parse_args(argv)


def context_switches(pid: int) -> int:
    """Voluntary context switches of every thread of `pid` (each one a sleep then a wake)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        for line in (task / "status").read_text().splitlines():
            if line.startswith("voluntary_ctxt_switches:"):
                total += int(line.split()[1])
    return total


def sched_ns(pid: int) -> tuple[int, int]:
    """(CPU time of the whole process, dead threads included, from /proc/<pid>/stat; time
    its main thread was runnable but waiting for a CPU, /proc/<pid>/schedstat), in ns."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) * 1_000_000_000 // CLOCK_TICKS
    wait = int(Path(f"/proc/{pid}/schedstat").read_text().split()[1])
    return cpu, wait


def idle_wakeups(pid: int, seconds: float) -> float:
    """Wake-ups per second of the worker with no request in flight."""
    before = context_switches(pid)
    time.sleep(seconds)
    return (context_switches(pid) - before) / seconds


def idle_cpu(pid: int, seconds: float) -> float:
    """CPU ms per second the worker spends with no request in flight."""
    before = sched_ns(pid)[0]
    time.sleep(seconds)
    return (sched_ns(pid)[0] - before) / 1e6 / seconds


def traced(pid: int, out: Path, run) -> str:
    """Run `run()` with strace counting `pid`'s syscalls (every thread); the summary."""
    tracer = subprocess.Popen(
        ["strace", "-f", "-c", "-o", str(out), "-p", str(pid)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(1.0)  # strace attaches to every thread
    try:
        run()
    finally:
        tracer.terminate()
        tracer.wait(10)
    return out.read_text(errors="replace")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    gaps = [float(g) for g in args.gaps.split(",") if g.strip()]
    tmp = Path(tempfile.mkdtemp(prefix="qwenproxy-idle-"))
    fake = proxy = None
    try:
        fake = FakeProcess(tmp, 20, 0.001)
        extra = dict(pair.split("=", 1) for pair in args.env)
        proxy = ProxyProcess(tmp / "proxy", fake, extra_env=extra)
        targets = [
            Target("direct", HOST, fake.port, UPSTREAM_KEY),
            Target("qwenproxy", HOST, proxy.port, PROXY_KEY),
        ]
        load.sequential_latency(targets, 200, 50)  # warm both
        if args.wakeups:
            rate = idle_wakeups(proxy.worker_pid, args.wakeups)
            cpu = idle_cpu(proxy.worker_pid, args.wakeups)
            print(
                f"idle worker: {rate:.1f} wake-ups/s, {cpu:.1f} ms CPU/s over {args.wakeups:g} s",
                flush=True,
            )
        for round_no in range(1, args.rounds + 1):
            for gap in gaps:
                before, fake_before = sched_ns(proxy.worker_pid), sched_ns(fake.pid)[0]
                lat = load.sequential_latency(targets, args.requests, 20, idle_s=gap)
                after, fake_after = sched_ns(proxy.worker_pid), sched_ns(fake.pid)[0]
                fake_cpu = (fake_after - fake_before) / (2000 * (args.requests + 20))
                d, q = lat["direct"], lat["qwenproxy"]
                per = 1000 * (args.requests + 20)  # ns -> µs per request
                cpu, queued = ((a - b) / per for a, b in zip(after, before, strict=True))
                print(
                    f"round {round_no} gap {gap * 1000:5.0f} ms: direct p50 "
                    f"{d.get('p50_ms', 0):.3f} ms, qwenproxy p50 {q.get('p50_ms', 0):.3f} ms, "
                    f"added {q.get('p50_ms', 0) - d.get('p50_ms', 0):+.3f} ms "
                    f"(p90 {q.get('p90_ms', 0):.3f}, errors {d['errors'] + q['errors']}); "
                    f"worker CPU {cpu:.0f} µs/request, "
                    f"hub thread waiting for a CPU {queued:.0f} µs; fake upstream CPU "
                    f"{fake_cpu:.0f} µs/request",
                    flush=True,
                )
        if args.strace and shutil.which("strace"):
            gap = max(gaps)
            summary = traced(
                proxy.worker_pid,
                tmp / "strace.txt",
                lambda: load.sequential_latency(targets[1:], args.requests, 0, idle_s=gap),
            )
            print(f"worker syscalls over {args.requests} requests after {gap * 1000:g} ms idle:")
            print(summary, flush=True)
    finally:
        for process in (proxy, fake):
            if process is not None:
                process.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
