"""End to end: the real app under gunicorn/gevent, the real openai SDK, the fake Qwen."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest
import requests

from tests.conftest import ROOT, write_creds
from tests.e2e.conftest import openai_client
from tests.fake_upstream import (
    chunk,
    reply_endless_stream,
    reply_error,
    reply_stream,
    unindexed_tool_call_events,
)

pytestmark = pytest.mark.e2e

USER = [{"role": "user", "content": "hi"}]


def sdk(proxy, key: str = "anything") -> openai.OpenAI:
    return openai_client(proxy, key)


def test_sdk_non_stream_and_stream(start_proxy, fake):
    proxy = start_proxy()
    client = sdk(proxy)
    answer = client.chat.completions.create(model="qwen-oauth:qwen3-coder-plus", messages=USER)
    assert answer.choices[0].message.content == "Hello from fake"
    assert answer.usage.total_tokens == 10
    stream = client.chat.completions.create(
        model="qwen3-coder-plus", messages=USER, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == (
        "Hello from fake"
    )
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == 10
    assert [r["body"]["model"] for r in fake.chat_requests] == ["coder-model"] * 2


def test_stream_events_reach_the_client_as_they_arrive(start_proxy, fake):
    events = [chunk({"content": f"part{i} "}) for i in range(5)] + [chunk({}, finish="stop")]
    fake.script.append(reply_stream(events, delay=0.3))
    proxy = start_proxy()
    started = time.monotonic()
    seen = []
    for _chunk in sdk(proxy).chat.completions.create(model="m", messages=USER, stream=True):
        seen.append(time.monotonic() - started)
    assert len(seen) == 6
    # The first event arrives long before the upstream finished (6 events x 0.3 s).
    assert seen[0] < 1.0 < seen[-1]


def test_streamed_tool_calls_assemble_in_the_sdk(start_proxy, fake):
    events = unindexed_tool_call_events("read_file", ['{"path": "a', '.py"}'])
    fake.script.append(reply_stream([*events, chunk({}, finish="tool_calls")]))
    proxy = start_proxy()
    calls: dict[int, dict[str, str]] = {}
    finish = None
    for c in sdk(proxy).chat.completions.create(model="m", messages=USER, stream=True):
        delta = c.choices[0].delta
        for call in delta.tool_calls or []:
            slot = calls.setdefault(call.index, {"name": "", "arguments": ""})
            slot["name"] += call.function.name or ""
            slot["arguments"] += call.function.arguments or ""
        finish = c.choices[0].finish_reason or finish
    assert calls == {0: {"name": "read_file", "arguments": '{"path": "a.py"}'}}
    assert finish == "tool_calls"


def test_curl_style_request_with_proxy_key(start_proxy, fake):
    proxy = start_proxy(PROXY_API_KEY="sk-proxy-1,sk-proxy-2")
    ok = requests.post(
        proxy.url + "/v1/chat/completions",
        headers={"Authorization": "Bearer sk-proxy-2"},
        json={"model": "qwen3-coder-plus", "messages": USER},
        timeout=10,
    )
    assert ok.status_code == 200
    bad = requests.post(
        proxy.url + "/v1/chat/completions",
        headers={"Authorization": "Bearer nope"},
        json={"model": "qwen3-coder-plus", "messages": USER},
        timeout=10,
    )
    assert bad.status_code == 401
    assert bad.json()["error"]["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        sdk(proxy, key="nope").chat.completions.create(model="m", messages=USER)


def test_fifty_concurrent_requests_on_an_expired_token_refresh_once(start_proxy, fake, creds_path):
    write_creds(creds_path, fake, expires_in=-60)
    fake.refresh_delay = 0.3
    proxy = start_proxy()
    client = sdk(proxy)

    def one(_: int) -> str:
        return client.chat.completions.create(model="m", messages=USER).choices[0].message.content

    with ThreadPoolExecutor(50) as pool:
        answers = list(pool.map(one, range(50)))
    assert answers == ["Hello from fake"] * 50
    assert fake.refresh_calls == 1
    tokens = {r["headers"]["authorization"] for r in fake.chat_requests}
    assert tokens == {"Bearer tok-1"}
    saved = json.loads(creds_path.read_text())
    assert saved["access_token"] == "tok-1" and saved["refresh_token"] == "refresh-1"
    assert stat.S_IMODE(os.stat(creds_path).st_mode) == 0o600


def test_two_workers_share_one_refresh(start_proxy, fake, creds_path):
    write_creds(creds_path, fake, expires_in=-60)
    fake.refresh_delay = 0.3
    proxy = start_proxy(WEB_CONCURRENCY="2")
    client = sdk(proxy)
    with ThreadPoolExecutor(40) as pool:
        answers = list(
            pool.map(lambda _: client.chat.completions.create(model="m", messages=USER), range(80))
        )
    assert len(answers) == 80
    assert fake.refresh_calls == 1


REFRESH_SCRIPT = """
import sys, time
from pathlib import Path
import requests
from qwenproxy.upstream.qwen_oauth.tokens import QwenTokenManager
from qwenproxy.upstream.qwen_oauth.creds import CredentialsFile
start_at = float(sys.argv[3])
manager = QwenTokenManager(CredentialsFile(Path(sys.argv[1])), requests.Session(), sys.argv[2],
                           "http://unused/v1")
time.sleep(max(0.0, start_at - time.time()))
print(manager.access().token)
"""


def test_two_processes_refreshing_at_once_make_one_refresh_call(fake, creds_path):
    write_creds(creds_path, fake, expires_in=-60)
    fake.refresh_delay = 0.5
    start_at = str(time.time() + 1.0)
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(ROOT)}
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", REFRESH_SCRIPT, str(creds_path), fake.url, start_at],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=30) for p in processes]
    assert [p.returncode for p in processes] == [0, 0], outputs
    assert [out.decode().strip() for out, _ in outputs] == ["tok-1", "tok-1"]
    assert fake.refresh_calls == 1
    assert not creds_path.with_suffix(".lock").exists()


def test_upstream_401_refreshes_and_retries_once(start_proxy, fake, creds_path):
    fake.valid_tokens = set()  # the server revoked tok-initial although it is not expired
    proxy = start_proxy()
    answer = sdk(proxy).chat.completions.create(model="m", messages=USER)
    assert answer.choices[0].message.content == "Hello from fake"
    assert fake.refresh_calls == 1
    assert [r["headers"]["authorization"] for r in fake.chat_requests] == [
        "Bearer tok-initial",
        "Bearer tok-1",
    ]
    assert json.loads(creds_path.read_text())["access_token"] == "tok-1"


def test_dead_refresh_token_is_503_login_required_and_file_untouched(start_proxy, fake, creds_path):
    write_creds(creds_path, fake, expires_in=-60)
    before = creds_path.read_bytes()
    fake.refresh_mode = "dead"
    proxy = start_proxy()
    with pytest.raises(openai.APIStatusError) as caught:
        sdk(proxy).chat.completions.create(model="m", messages=USER)
    assert caught.value.status_code == 503
    error = caught.value.body
    assert error["code"] == "qwen_oauth_login_required"
    assert "python -m qwenproxy auth login" in error["message"]
    assert creds_path.read_bytes() == before
    assert fake.chat_requests == []


def test_ended_oauth_account_gets_an_actionable_error_not_a_bare_401(start_proxy, fake, creds_path):
    fake.reject_every_token = True
    proxy = start_proxy()
    response = requests.post(
        proxy.url + "/v1/chat/completions", json={"model": "m", "messages": USER}, timeout=10
    )
    assert response.status_code == 503
    error = response.json()["error"]
    assert error["code"] == "qwen_oauth_access_ended"
    assert "DASHSCOPE_API_KEY" in error["message"]
    assert fake.refresh_calls == 1
    assert len(fake.chat_requests) == 2


def test_client_disconnect_closes_the_upstream_stream(start_proxy, fake):
    fake.script.append(reply_endless_stream(interval=0.02))
    proxy = start_proxy()
    stream = sdk(proxy).chat.completions.create(model="m", messages=USER, stream=True)
    for n, _event in enumerate(stream):
        if n == 3:
            break
    stream.close()
    assert fake.stream_closed.wait(2.0), "upstream stream still open 2 s after the client left"


def test_procfile_command_serves(start_proxy, fake):
    proxy = start_proxy(procfile=True)
    answer = sdk(proxy).chat.completions.create(model="qwen3-coder-plus", messages=USER)
    assert answer.choices[0].message.content == "Hello from fake"


def test_logs_hold_no_tokens_and_no_monkeypatch_warning(start_proxy, fake, creds_path):
    write_creds(creds_path, fake, expires_in=-60)
    proxy = start_proxy(PROXY_API_KEY="sk-proxy-secret-1", LOG_LEVEL="DEBUG")
    client = sdk(proxy, key="sk-proxy-secret-1")
    client.chat.completions.create(model="m", messages=USER)
    fake.reject_every_token = True
    with pytest.raises(openai.APIStatusError):
        client.chat.completions.create(model="m", messages=USER)
    requests.post(
        proxy.url + "/v1/chat/completions",
        json={"messages": USER},
        headers={"Authorization": "Bearer sk-wrong-key-123"},
        timeout=10,
    )
    fake.reject_every_token = False
    fake.script.append(reply_error(500, "upstream exploded"))
    with pytest.raises(openai.APIStatusError):
        client.chat.completions.create(model="m", messages=USER)
    proxy.stop()
    # A second proxy whose refresh token is dead: the refresh failure is logged cleanly too.
    write_creds(creds_path, fake, expires_in=-60)
    fake.refresh_mode = "dead"
    dead = start_proxy(PROXY_API_KEY="sk-proxy-secret-1", LOG_LEVEL="DEBUG")
    with pytest.raises(openai.APIStatusError):
        sdk(dead, key="sk-proxy-secret-1").chat.completions.create(model="m", messages=USER)
    dead.stop()
    log = proxy.output() + dead.output()
    assert "qwen_oauth_login_required" in log
    assert "Booting worker" in log
    for secret in (
        "sk-proxy-secret-1",
        "tok-initial",
        "tok-1",
        "tok-2",
        "refresh-initial",
        "refresh-1",
        "refresh-2",
        "sk-wrong-key-123",
    ):
        assert secret not in log
    assert "MonkeyPatchWarning" not in log
    assert "Traceback" not in log


def run_cli(
    *args: str, cwd: Path, timeout: float = 30, **env: str
) -> subprocess.CompletedProcess[str]:
    """`python -m qwenproxy <args>` in a clean environment plus `env`."""
    return subprocess.run(
        [sys.executable, "-m", "qwenproxy", *args],
        env={"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(ROOT), **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
    )


def test_auth_status_cli_reports_expiry_and_refreshes(fake, creds_path):
    env = {"QWEN_OAUTH_CREDS": str(creds_path), "QWEN_OAUTH_URL": fake.url}
    status = run_cli("auth", "status", cwd=creds_path.parent, **env)
    assert status.returncode == 0, status.stderr
    assert "valid for" in status.stdout and str(creds_path) in status.stdout
    assert fake.refresh_calls == 0
    forced = run_cli("auth", "status", "--refresh", cwd=creds_path.parent, **env)
    assert forced.returncode == 0, forced.stderr
    assert fake.refresh_calls == 1
    assert "tok-1" not in forced.stdout + forced.stderr
    fake.refresh_mode = "dead"
    write_creds(creds_path, fake, expires_in=-60)
    dead = run_cli("auth", "status", cwd=creds_path.parent, **env)
    assert dead.returncode == 1
    assert "auth login" in dead.stdout


def test_auth_login_cli_runs_the_device_flow(fake, tmp_path):
    target = tmp_path / "new" / "oauth_creds.json"
    result = run_cli(
        "auth", "login", cwd=tmp_path, timeout=60,
        QWEN_OAUTH_CREDS=str(target), QWEN_OAUTH_URL=fake.url,
    )
    assert result.returncode == 0, result.stderr
    assert "ABCD-1234" in result.stdout
    saved = json.loads(target.read_text())
    assert saved["access_token"].startswith("tok-") and saved["refresh_token"]
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(target.parent).st_mode) == 0o700
    device_calls = [r for r in fake.token_requests if "device_code" in r]
    assert device_calls and all(r["code_verifier"] for r in device_calls)


def test_serve_refuses_invalid_configuration_naming_the_variable(tmp_path: Path):
    result = run_cli("serve", cwd=tmp_path, PORT="eighty")
    assert result.returncode == 2
    assert "PORT" in result.stderr and "eighty" in result.stderr
