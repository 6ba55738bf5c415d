"""Metrics: counters and histograms after observe(), private registries, prometheus_client
multiprocess mode across processes (aggregation, dead workers' open streams), and the
gunicorn hooks in a real gunicorn/gevent server with two workers."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import requests
import sqlalchemy as sa
from prometheus_client import multiprocess

from qwenproxy.config import Config
from qwenproxy.ledger.metrics import Metrics, build_metrics, multiprocess_mode
from qwenproxy.ledger.records import UsageRecord, usage_table
from qwenproxy.serving import (
    PROMETHEUS_MULTIPROC_ENV,
    gunicorn_settings,
    mark_worker_dead,
    metrics_dir,
)
from qwenproxy.store import Database, default_database_url

ROOT = Path(__file__).resolve().parents[2]


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample in Prometheus text, None when absent."""
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        match = re.match(r"^([a-zA-Z_:][\w:]*)(\{(.*)\})? (\S+)$", line)
        if not match or match.group(1) != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(3) or ""))
        if found == labels:
            return float(match.group(4))
    return None


def record(**fields) -> UsageRecord:
    values = {
        "started_at": time.time(),
        "backend": "qwen-oauth",
        "upstream_model": "coder-model",
        "status": 200,
        "latency_ms": 1500.0,
    }
    values.update(fields)
    return UsageRecord(**values)


def test_observe_counts_requests_latency_ttft_and_tokens():
    metrics = Metrics()
    metrics.observe(record(prompt_tokens=100, completion_tokens=40, ttft_ms=250.0, stream=True))
    metrics.observe(record(status=502, backend="dashscope", upstream_model="qwen3-coder-plus"))
    text = metrics.render()[0].decode()
    labels = {"backend": "qwen-oauth", "model": "coder-model"}
    assert sample(text, "qwenproxy_requests_total", **labels, status="200") == 1
    assert (
        sample(
            text,
            "qwenproxy_requests_total",
            backend="dashscope",
            model="qwen3-coder-plus",
            status="502",
        )
        == 1
    )
    assert sample(text, "qwenproxy_tokens_total", **labels, kind="prompt") == 100
    assert sample(text, "qwenproxy_tokens_total", **labels, kind="completion") == 40
    assert sample(text, "qwenproxy_request_duration_seconds_count", backend="qwen-oauth") == 1
    assert sample(text, "qwenproxy_request_duration_seconds_sum", backend="qwen-oauth") == 1.5
    assert (
        sample(text, "qwenproxy_request_duration_seconds_bucket", backend="qwen-oauth", le="2.5")
        == 1
    )
    assert sample(text, "qwenproxy_time_to_first_token_seconds_sum", backend="qwen-oauth") == 0.25
    assert sample(text, "qwenproxy_time_to_first_token_seconds_count", backend="dashscope") is None


def test_event_counters_and_the_open_streams_gauge():
    metrics = Metrics()
    metrics.stream_opened()
    metrics.stream_opened()
    metrics.stream_closed()
    metrics.token_refresh(ok=True)
    metrics.token_refresh(ok=False)
    metrics.token_refresh(ok=False)
    metrics.failover()
    metrics.loop_detected()
    body, content_type = metrics.render()
    text = body.decode()
    assert content_type.startswith("text/plain")
    assert sample(text, "qwenproxy_active_streams") == 1
    assert sample(text, "qwenproxy_token_refreshes_total", result="ok") == 1
    assert sample(text, "qwenproxy_token_refreshes_total", result="failed") == 2
    assert sample(text, "qwenproxy_failovers_total") == 1
    assert sample(text, "qwenproxy_loop_detections_total") == 1


def test_each_metrics_object_has_its_own_registry():
    first, second = Metrics(), Metrics()
    first.failover()
    assert sample(first.render()[0].decode(), "qwenproxy_failovers_total") == 1
    assert sample(second.render()[0].decode(), "qwenproxy_failovers_total") == 0


def test_without_a_multiprocess_directory_metrics_stay_in_this_process(tmp_path):
    assert multiprocess_mode() is False  # the test process never set PROMETHEUS_MULTIPROC_DIR
    assert build_metrics(tmp_path).multiprocess_dir is None
    with pytest.raises(RuntimeError, match="PROMETHEUS_MULTIPROC_DIR"):
        Metrics(multiprocess_dir=tmp_path)


# --- multiprocess mode ------------------------------------------------------------------

WORKER_SCRIPT = """
import os, sys, time
from pathlib import Path
from qwenproxy.ledger.metrics import build_metrics
from qwenproxy.ledger.writer import UsageRecord

metrics = build_metrics(Path(sys.argv[1]))
assert metrics.multiprocess_dir is not None
for _ in range(int(sys.argv[2])):
    metrics.observe(UsageRecord(started_at=time.time(), backend="b", upstream_model="m",
                                prompt_tokens=10, latency_ms=100.0))
for _ in range(int(sys.argv[3])):
    metrics.stream_opened()
if sys.argv[4] == "render":
    sys.stdout.write(metrics.render()[0].decode())
print(f"pid={os.getpid()}", file=sys.stderr)
"""


def run_worker(data_dir: Path, requests_: int, streams: int, render: bool = False):
    env = {
        "PATH": os.environ.get("PATH", ""),
        "PYTHONPATH": str(ROOT),
        PROMETHEUS_MULTIPROC_ENV: str(metrics_dir(data_dir)),
    }
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            WORKER_SCRIPT,
            str(data_dir),
            str(requests_),
            str(streams),
            "render" if render else "-",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return int(done.stderr.strip().rsplit("pid=", 1)[1]), done.stdout


def test_two_processes_write_into_one_directory_and_render_adds_them_up(tmp_path):
    prepare_dir = metrics_dir(tmp_path)
    prepare_dir.mkdir(parents=True)
    first_pid, _ = run_worker(tmp_path, requests_=2, streams=1)
    second_pid, _ = run_worker(tmp_path, requests_=3, streams=2)
    assert first_pid != second_pid
    _, text = run_worker(tmp_path, requests_=0, streams=0, render=True)
    labels = {"backend": "b", "model": "m"}
    assert sample(text, "qwenproxy_requests_total", **labels, status="200") == 5
    assert sample(text, "qwenproxy_tokens_total", **labels, kind="prompt") == 50
    assert sample(text, "qwenproxy_request_duration_seconds_count", backend="b") == 5
    assert sample(text, "qwenproxy_active_streams") == 3

    # gunicorn's child_exit hook: the first worker died, its open streams are gone, its
    # counters stay.
    mark_worker_dead(prepare_dir, first_pid)
    _, text = run_worker(tmp_path, requests_=0, streams=0, render=True)
    assert sample(text, "qwenproxy_active_streams") == 2
    assert sample(text, "qwenproxy_requests_total", **labels, status="200") == 5


def test_marking_a_worker_dead_removes_what_prometheus_client_would(tmp_path):
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    ours.mkdir()
    names = [
        f"gauge_{mode}_{pid}.db"
        for pid in (11, 12)
        for mode in (
            "all",
            "liveall",
            "min",
            "livemin",
            "max",
            "livemax",
            "sum",
            "livesum",
            "mostrecent",
            "livemostrecent",
        )
    ]
    names += ["counter_11.db", "histogram_11.db", "counter_12.db"]
    for name in names:
        (ours / name).write_bytes(b"")
    shutil.copytree(ours, theirs)
    mark_worker_dead(ours, 11)
    multiprocess.mark_process_dead(11, str(theirs))
    assert sorted(p.name for p in ours.iterdir()) == sorted(p.name for p in theirs.iterdir())
    assert "gauge_livesum_11.db" not in {p.name for p in ours.iterdir()}


def test_gunicorn_master_empties_the_directory_and_points_workers_at_it(tmp_path, monkeypatch):
    monkeypatch.setenv(PROMETHEUS_MULTIPROC_ENV, "placeholder")  # restored after the test
    settings = gunicorn_settings(Config(data_dir=tmp_path))
    directory = metrics_dir(tmp_path)
    directory.mkdir(parents=True)
    (directory / "counter_99.db").write_bytes(b"old")
    warnings: list[str] = []
    server = SimpleNamespace(
        cfg=SimpleNamespace(address=[("127.0.0.1", 8000)]),
        log=SimpleNamespace(warning=warnings.append),
    )
    settings["on_starting"](server)
    assert list(directory.iterdir()) == []
    assert warnings == []  # a loopback bind off any platform: nothing to warn about
    assert os.environ[PROMETHEUS_MULTIPROC_ENV] == str(directory)
    (directory / "gauge_livesum_42.db").write_bytes(b"")
    settings["child_exit"](object(), type("Worker", (), {"pid": 42})())
    assert list(directory.iterdir()) == []


# --- under gunicorn ---------------------------------------------------------------------

APP_MODULE = """
import os
from pathlib import Path
from types import SimpleNamespace

from flask import Flask, Response

from qwenproxy.ledger.metrics import build_metrics
from qwenproxy.store import Database, default_database_url
from qwenproxy.ledger.writer import UsageLedger, UsageRecord

data_dir = Path(os.environ["QWENPROXY_DATA_DIR"])
metrics = build_metrics(data_dir)
ledger = UsageLedger(Database(default_database_url(data_dir)), flush_interval=30)
ledger.start()
app = Flask(__name__)
app.extensions["qwenproxy"] = SimpleNamespace(ledger=ledger, metrics=metrics)


@app.get("/hit")
def hit():
    rec = UsageRecord(started_at=0.0, backend="b", upstream_model="m", latency_ms=5.0)
    metrics.observe(rec)
    metrics.stream_opened()
    ledger.record(rec)
    return str(os.getpid())


@app.get("/metrics")
def render():
    body, content_type = metrics.render()
    return Response(body, content_type=content_type)


@app.get("/health")
def health():
    return "ok"
"""


@pytest.mark.e2e
def test_gunicorn_workers_share_metrics_and_write_their_ledger_on_exit(tmp_path):
    from tests.conftest import free_port

    (tmp_path / "metrics_app.py").write_text(textwrap.dedent(APP_MODULE))
    data_dir = tmp_path / "data"
    port = free_port()
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(tmp_path),
        "PYTHONPATH": f"{ROOT}{os.pathsep}{tmp_path}",
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "WEB_CONCURRENCY": "2",
        "QWENPROXY_DATA_DIR": str(data_dir),
        "QWEN_OAUTH_CREDS": str(tmp_path / "absent.json"),
    }
    # Two workers opening a fresh SQLite file at once can race in create_all; the schema is
    # not what this test is about, so it exists before they start.
    Database(default_database_url(data_dir)).dispose()
    log_path = tmp_path / "gunicorn.log"
    with open(log_path, "wb") as log:
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gunicorn",
                "-c",
                str(ROOT / "gunicorn.conf.py"),
                "metrics_app:app",
            ],
            cwd=tmp_path,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert server.poll() is None, log_path.read_text()
            try:
                if requests.get(url + "/health", timeout=0.5).status_code == 200:
                    break
            except requests.RequestException:
                pass
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.05)
        hits: dict[int, int] = {}
        deadline = time.monotonic() + 20
        while len(hits) < 2 or sum(hits.values()) < 20:
            pid = int(requests.get(url + "/hit", headers={"Connection": "close"}, timeout=5).text)
            hits[pid] = hits.get(pid, 0) + 1
            assert time.monotonic() < deadline, f"one worker answered everything: {hits}"
        total = sum(hits.values())

        def scrape() -> str:
            return requests.get(url + "/metrics", headers={"Connection": "close"}, timeout=5).text

        text = scrape()
        assert sample(text, "qwenproxy_requests_total", backend="b", model="m", status="200") == (
            total
        )
        assert sample(text, "qwenproxy_active_streams") == total

        # A worker that dies takes its open streams with it; its counters remain.
        victim, victim_hits = next(iter(hits.items()))
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 20
        while sample(scrape(), "qwenproxy_active_streams") != total - victim_hits:
            assert time.monotonic() < deadline, scrape()
            time.sleep(0.1)
        assert (
            sample(scrape(), "qwenproxy_requests_total", backend="b", model="m", status="200")
            == total
        )
    finally:
        server.send_signal(signal.SIGTERM)  # graceful: worker_exit closes the ledger
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(5)
    output = log_path.read_text()
    assert "MonkeyPatchWarning" not in output and "Traceback" not in output, output

    db = Database(default_database_url(data_dir))
    with db.engine.connect() as conn:
        rows = conn.execute(sa.select(sa.func.count()).select_from(usage_table)).scalar_one()
    db.dispose()
    # the killed worker's queue is lost (flush interval 30 s); the others reach the database
    assert rows == total - victim_hits
