"""Where the proxy worker's CPU goes: py-spy samples the gunicorn worker while a throughput
run loads it, and the collapsed stacks are summed per function (inclusive and self time)
and per area (Flask/Werkzeug, requests/urllib3, SQLAlchemy, logging, qwenproxy, ...).

    python -m bench.profile bench/results/<stem>.stacks [N]   # summarise saved stacks again
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^():]+)(?::(?P<line>\d+))?\)$")

# Areas, by the path of the innermost frame that falls into one (first match wins).
AREAS = (
    ("qwenproxy (own code)", ("qwenproxy/",)),
    ("logging", ("logging/",)),
    ("sqlalchemy + sqlite", ("sqlalchemy/", "sqlite3/")),
    ("requests", ("requests/",)),
    ("urllib3", ("urllib3/",)),
    ("http.client", ("http/client.py",)),
    ("flask", ("flask/",)),
    ("werkzeug", ("werkzeug/",)),
    ("gunicorn", ("gunicorn/",)),
    ("gevent", ("gevent/",)),
    ("marshmallow", ("marshmallow/",)),
    ("prometheus_client", ("prometheus_client/",)),
    ("json / orjson", ("json/",)),
    ("threading / queue", ("threading.py", "queue.py")),
    ("email / header parsing", ("email/",)),
    ("typing (runtime Protocol checks)", ("typing.py",)),
)


def _in_area(file: str, prefixes: tuple[str, ...]) -> bool:
    """py-spy names files relative to site-packages / the stdlib when it can."""
    return any(file.startswith(p) or f"/{p}" in file for p in prefixes)


def py_spy() -> str | None:
    found = shutil.which("py-spy")
    if found:
        return found
    candidate = Path(sys.executable).parent / "py-spy"
    return str(candidate) if candidate.exists() else None


def record_during(
    pid: int, workload: Callable[[], dict[str, Any]], duration: float, out_stem: Path
) -> dict[str, Any]:
    """Run `workload` while py-spy records `pid`; write <stem>.stacks (collapsed stacks, not
    kept in git) and <stem>-summary.txt. Returns the summary (or why there is none)."""
    tool = py_spy()
    if tool is None:
        return {"error": "py-spy not installed (pip install -r bench/requirements-bench.txt)"}
    out_stem.parent.mkdir(parents=True, exist_ok=True)
    raw = out_stem.parent / f"{out_stem.name}.stacks"
    command = [
        tool,
        "record",
        "-p",
        str(pid),
        "-d",
        str(max(1, round(duration))),
        "-r",
        "250",
        "-f",
        "raw",
        "-o",
        str(raw),
    ]
    holder: dict[str, Any] = {}

    def spy() -> None:
        holder["done"] = subprocess.run(command, capture_output=True, text=True)

    thread = threading.Thread(target=spy)
    thread.start()
    result = workload()
    thread.join(duration + 60)
    done = holder.get("done")
    if done is None or done.returncode != 0 or not raw.exists():
        stderr = done.stderr[-500:] if done is not None else "timed out"
        return {"error": f"py-spy failed: {stderr}", "throughput_while_profiled": result}
    summary = summarise(raw.read_text())
    summary_file = out_stem.parent / f"{out_stem.name}-summary.txt"
    summary_file.write_text(format_summary(summary))
    summary["summary_file"] = str(summary_file)
    summary["stacks_file"] = str(raw)
    summary["throughput_while_profiled"] = {
        k: result.get(k) for k in ("rps", "requests", "cpu_us_per_request")
    }
    return summary


def _parse(line: str) -> tuple[list[tuple[str, str]], int] | None:
    stack, _, count = line.rstrip().rpartition(" ")
    if not stack or not count.isdigit():
        return None
    frames = []
    for raw in stack.split(";"):
        match = FRAME.match(raw)
        if match:
            frames.append((match["func"], match["file"]))
        else:
            frames.append((raw, ""))
    return frames, int(count)


def _short(file: str) -> str:
    for marker in ("/site-packages/", "/lib/python3.11/", "/work/main/"):
        if marker in file:
            return file.split(marker, 1)[1]
    return file


def summarise(collapsed: str, top: int = 40) -> dict[str, Any]:
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    areas: Counter[str] = Counter()
    total = 0
    for line in collapsed.splitlines():
        parsed = _parse(line)
        if parsed is None:
            continue
        frames, count = parsed
        total += count
        seen = set()
        for func, file in frames:
            name = f"{func} ({_short(file)})"
            if name not in seen:
                seen.add(name)
                inclusive[name] += count
        if frames:
            func, file = frames[-1]
            own[f"{func} ({_short(file)})"] += count
        areas[_area(frames)] += count

    def pct(counter: Counter[str], n: int) -> list[tuple[str, float]]:
        return [(name, 100.0 * c / total) for name, c in counter.most_common(n)] if total else []

    return {
        "samples": total,
        "inclusive_pct": pct(inclusive, top),
        "self_pct": pct(own, 25),
        "area_self_pct": pct(areas, 20),
    }


def _area(frames: list[tuple[str, str]]) -> str:
    """The area of a sample: that of the innermost frame that belongs to a known area, so
    time in C or the standard library is charged to the library that called it."""
    for _func, file in reversed(frames):
        for area, prefixes in AREAS:
            if _in_area(file, prefixes):
                return area
    return "other"


def format_summary(summary: dict[str, Any]) -> str:
    lines = [f"py-spy samples: {summary['samples']}", "", "area (self time, innermost known):"]
    lines += [f"  {p:5.1f}%  {name}" for name, p in summary["area_self_pct"]]
    lines += ["", "inclusive time (function and what it calls):"]
    lines += [f"  {p:5.1f}%  {name}" for name, p in summary["inclusive_pct"]]
    lines += ["", "self time:"]
    lines += [f"  {p:5.1f}%  {name}" for name, p in summary["self_pct"]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(
        format_summary(
            summarise(
                Path(sys.argv[1]).read_text(), top=int(sys.argv[2]) if len(sys.argv) > 2 else 40
            )
        )
    )
