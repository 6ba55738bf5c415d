"""Accounting end to end: ledger rows, /usage, /metrics and the CLI for a known sequence of
requests through the real app under gunicorn (two workers)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import openai
import pytest
import requests

from tests.conftest import ROOT
from tests.e2e.conftest import openai_client, poll
from tests.fake_upstream import reply_error

pytestmark = pytest.mark.e2e

KEY = "sk-client-acct-1"
USER = [{"role": "user", "content": "hi"}]


def test_ledger_metrics_and_cli_for_a_known_sequence(start_proxy, fake, tmp_path):
    data_dir = tmp_path / "data"
    proxy = start_proxy(WEB_CONCURRENCY="2", PROXY_API_KEY=KEY, QWENPROXY_DATA_DIR=str(data_dir))
    client = openai_client(proxy, KEY)
    auth = {"Authorization": f"Bearer {KEY}"}

    client.chat.completions.create(model="qwen3-coder-plus", messages=USER)
    # A stream whose client did not ask for usage: no usage chunk, but the row has tokens.
    chunks = list(client.chat.completions.create(model="qwen3-coder-plus", messages=USER,
                                                 stream=True))
    assert all(c.usage is None for c in chunks)
    assert fake.chat_requests[-1]["body"]["stream_options"] == {"include_usage": True}
    fake.script.append(reply_error(500, "boom"))
    with pytest.raises(openai.APIStatusError):
        client.chat.completions.create(model="qwen3-coder-plus", messages=USER)
    client.chat.completions.create(model="m", messages=[{"role": "user", "content": "!/hello"}])

    rows = poll(lambda: requests.get(proxy.url + "/usage/recent?limit=10", headers=auth,
                                     timeout=5).json(),
                lambda body: len(body.get("data", body if isinstance(body, list) else [])) >= 4)
    rows = rows.get("data", rows) if isinstance(rows, dict) else rows
    assert len(rows) == 4
    by_kind = {(r["stream"], r["status"], r["command_only"]): r for r in rows}
    plain = by_kind[(False, 200, False)]
    assert (plain["prompt_tokens"], plain["completion_tokens"], plain["total_tokens"]) == (7, 3, 10)
    assert plain["backend"] == "qwen-oauth" and plain["upstream_model"] == "coder-model"
    assert plain["requested_model"] == "qwen3-coder-plus"
    assert plain["client_key_id"] and KEY not in json.dumps(rows)
    streamed = by_kind[(True, 200, False)]
    assert streamed["total_tokens"] == 10 and streamed["ttft_ms"] is not None
    failed = by_kind[(False, 502, False)]
    assert failed["error_code"] == "upstream_error"
    assert by_kind[(False, 200, True)]["backend"] == "local"

    stats = requests.get(proxy.url + "/usage/stats?since=1h&group_by=backend", headers=auth,
                         timeout=5).json()
    groups = {g["group"]: g for g in stats.get("data", stats if isinstance(stats, list) else [])}
    assert groups["qwen-oauth"]["requests"] == 3 and groups["qwen-oauth"]["errors"] == 1
    assert groups["qwen-oauth"]["total_tokens"] == 20

    metrics = requests.get(proxy.url + "/metrics", headers=auth, timeout=5).text
    assert "qwenproxy_requests_total" in metrics
    total = sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                if line.startswith("qwenproxy_requests_total{"))
    assert total == 4  # summed over both workers
    assert requests.get(proxy.url + "/metrics", timeout=5).status_code == 401
    page = requests.get(proxy.url + "/dashboard", headers=auth, timeout=5)
    assert page.status_code == 200 and "<svg" in page.text

    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(ROOT),
           "QWENPROXY_DATA_DIR": str(data_dir)}
    report = subprocess.run([sys.executable, "-m", "qwenproxy", "usage", "--since", "1h",
                             "--by", "backend", "--json"], env=env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=30)
    assert report.returncode == 0, report.stderr
    assert "qwen-oauth" in report.stdout


def test_disconnected_stream_is_recorded(start_proxy, fake, tmp_path):
    from tests.fake_upstream import reply_endless_stream

    proxy = start_proxy(PROXY_API_KEY=KEY)
    fake.script.append(reply_endless_stream(0.02))
    client = openai_client(proxy, KEY)
    stream = client.chat.completions.create(model="m", messages=USER, stream=True)
    for n, _chunk in enumerate(stream):
        if n == 2:
            break
    stream.close()
    auth = {"Authorization": f"Bearer {KEY}"}
    rows = poll(lambda: requests.get(proxy.url + "/usage/recent", headers=auth, timeout=5).json(),
                lambda body: len(body.get("data", [])) >= 1)
    assert rows["data"][0]["status"] == 499
    assert rows["data"][0]["error_code"] == "client_disconnected"
    assert "client_disconnected" in proxy.output() or "499" in proxy.output()
