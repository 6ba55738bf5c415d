"""The upstream transport alone, A/B: one POST round trip (and one 20-chunk stream) from
qwenproxy's shared `requests.Session` to the fake upstream, in µs of CPU per call — the
client's and the fake's, since a parser can move work to either side — for each source
tree given, in alternating rounds so that the shared machine's noise hits all alike.

    python -m bench.transport [--tree PATH ...] [--calls N] [--rounds R] [--json PATH]

Without --tree it measures this checkout. To compare two commits in the same run:
`git archive <commit> | tar -x -C /tmp/before` and pass `--tree /tmp/before --tree .`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.load import chat_body
from bench.processes import CLOCK_TICKS, FakeProcess

# Runs in a child, on the tree's own qwenproxy: N calls of each kind, warm.
CHILD = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
from qwenproxy.upstream.wire import post_prepared
from qwenproxy.container import make_http_session

url, calls = sys.argv[2] + "/v1/chat/completions", int(sys.argv[3])
plain, streamed = sys.argv[4].encode(), sys.argv[5].encode()
http = make_http_session()


def fake_cpu():
    fields = open(f"/proc/{sys.argv[6]}/stat").read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / int(sys.argv[7])


def call(payload):
    headers = {"Authorization": "Bearer x", "Content-Type": "application/json"}
    response = post_prepared(http, url, headers, payload, (10.0, 300.0))
    raw, size = response.raw, 0
    while chunk := raw.read_chunk(None):
        size += len(chunk)
    response.close()
    return size


out = {}
for kind, payload in (("post", plain), ("stream", streamed)):
    for _ in range(200):
        call(payload)
    fake0, cpu0, wall0 = fake_cpu(), time.process_time(), time.perf_counter()
    for _ in range(calls):
        call(payload)
    out[kind] = {
        "client_us": (time.process_time() - cpu0) / calls * 1e6,
        "fake_us": (fake_cpu() - fake0) / calls * 1e6,
        "wall_us": (time.perf_counter() - wall0) / calls * 1e6,
    }
print(json.dumps(out))
"""


def run_tree(tree: Path, fake: FakeProcess, calls: int) -> dict:
    plain = chat_body("bench-model").decode()
    streamed = chat_body("bench-burst", stream=True).decode()
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(tree), fake.url, str(calls), plain, streamed,
         str(fake.pid), str(CLOCK_TICKS)],
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(trees: list[Path], calls: int, rounds: int) -> dict[str, dict]:
    samples: dict[str, list[dict]] = {str(t): [] for t in trees}
    with tempfile.TemporaryDirectory(prefix="bench-transport-") as tmp:
        fake = FakeProcess(Path(tmp), 20, 0.0)
        try:
            for _ in range(rounds):
                for tree in trees:
                    samples[str(tree)].append(run_tree(tree, fake, calls))
        finally:
            fake.stop()
    results: dict[str, dict] = {}
    for tree, runs in samples.items():
        results[tree] = {
            kind: {
                figure: statistics.median(run[kind][figure] for run in runs)
                for figure in ("client_us", "fake_us", "wall_us")
            }
            for kind in ("post", "stream")
        }
    return results


def format_table(results: dict[str, dict]) -> str:
    lines = [
        "| tree | POST: client + fake CPU µs (wall) "
        "| 20-chunk stream: client + fake CPU µs (wall) |",
        "|---|---:|---:|",
    ]
    for tree, kinds in results.items():
        cells = []
        for kind in ("post", "stream"):
            r = kinds[kind]
            cells.append(
                f"{r['client_us']:.0f} + {r['fake_us']:.0f} = "
                f"{r['client_us'] + r['fake_us']:.0f} ({r['wall_us']:.0f})"
            )
        lines.append(f"| {tree} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", type=Path, action="append", help="a source tree (repeat)")
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    trees = [t.resolve() for t in (args.tree or [Path(__file__).resolve().parent.parent])]
    results = measure(trees, args.calls, args.rounds)
    print(format_table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
