"""End to end, as a Heroku-style platform runs the proxy: the Procfile's web command with
PORT set and no HOST, DATABASE_URL in the platforms' `postgres://` form against a real
PostgreSQL, the start-up warnings, and NONSTREAM_KEEPALIVE for slow non-stream answers
through the official SDKs."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import anthropic
import pytest
import requests
import sqlalchemy as sa

from qwenproxy.store import Database
from tests.conftest import ROOT, ProxyProcess
from tests.databases import database_url_for
from tests.e2e.conftest import openai_client, wait_for
from tests.fake_upstream import reply_error, reply_hang

pytestmark = pytest.mark.e2e

USER = [{"role": "user", "content": "hi"}]


def procfile_web_command() -> str:
    for line in (ROOT / "Procfile").read_text().splitlines():
        kind, sep, command = line.partition(":")
        if sep and kind.strip() == "web":
            return command.strip()
    raise AssertionError("the Procfile has no web process")


def platform_env(tmp_path: Path, **env: str | None) -> dict[str, str | None]:
    """What a platform gives the web process: PORT (ProxyProcess sets it), the app's bin
    directory on PATH, and no HOST."""
    return {
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "HOST": None,
        "QWENPROXY_DATA_DIR": str(tmp_path / "data"),
        **env,
    }


def start_procfile(start_proxy, tmp_path: Path, **env: str | None) -> ProxyProcess:
    # Heroku and Dokku run Procfile commands with bash, in the app's directory.
    return start_proxy(
        command=["bash", "-c", procfile_web_command()], cwd=ROOT, **platform_env(tmp_path, **env)
    )


def listening_addresses(port: int) -> set[str]:
    """Local addresses of the sockets listening on `port`, from /proc/net/tcp and tcp6."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            address, port_hex = fields[1].rsplit(":", 1)
            if fields[3] == "0A" and int(port_hex, 16) == port:  # 0A: LISTEN
                found.add(address)
    return found


# --- the Procfile -------------------------------------------------------------------------


def test_the_procfile_web_command_listens_on_all_addresses_of_port(start_proxy, fake, tmp_path):
    proxy = start_procfile(start_proxy, tmp_path, WEB_CONCURRENCY="2", PROXY_API_KEY="k1")
    assert requests.get(proxy.url + "/health", timeout=5).json() == {"status": "ok"}
    assert listening_addresses(proxy.port) == {"00000000"}  # 0.0.0.0, no loopback-only bind
    assert wait_for(lambda: proxy.output().count("Booting worker") == 2, timeout=10.0)
    assert f"Listening at: http://0.0.0.0:{proxy.port}" in proxy.output()
    answer = openai_client(proxy, "k1").chat.completions.create(model="m", messages=USER)
    assert answer.choices[0].message.content == "Hello from fake"


def test_serve_keeps_its_loopback_default(start_proxy, fake, tmp_path):
    proxy = start_proxy(HOST=None)
    assert listening_addresses(proxy.port) == {"0100007F"}  # 127.0.0.1
    assert "WARNING" not in proxy.output()


def test_platform_warnings_appear_once_per_start_not_per_worker(start_proxy, fake, tmp_path):
    proxy = start_procfile(start_proxy, tmp_path, WEB_CONCURRENCY="3", DYNO="web.1")
    assert wait_for(lambda: proxy.output().count("Booting worker") == 3, timeout=10.0)
    log = proxy.output()
    assert log.count("without PROXY_API_KEY") == 1
    assert "every client that is not on this machine gets 403" in log
    assert log.count("without DATABASE_URL") == 1
    assert "Heroku (DYNO is set)" in log and "heroku addons:create heroku-postgresql" in log
    # and the safe default holds: a client from elsewhere (a router) is refused
    refused = requests.get(
        proxy.url + "/v1/models", headers={"X-Forwarded-For": "203.0.113.9"}, timeout=5
    )
    assert refused.status_code == 403


# --- DATABASE_URL as the platforms write it -----------------------------------------------


def test_a_postgres_url_from_a_platform_serves_sessions_and_the_ledger(
    start_proxy, fake, tmp_path
):
    url = database_url_for("postgresql", tmp_path)  # emptied; skips without PostgreSQL
    scheme, _, rest = url.partition("://")
    assert scheme.startswith("postgresql")
    separator = "&" if "?" in rest else "?"
    platform_url = f"postgres://{rest}{separator}sslmode=disable&application_name=qp-e2e-hosting"
    proxy = start_procfile(start_proxy, tmp_path, DATABASE_URL=platform_url, DYNO="web.1")
    assert "without DATABASE_URL" not in proxy.output()
    client = openai_client(proxy, default_headers={"X-Session-ID": "deploy-check"})
    set_model = [{"role": "user", "content": "!/set(model=qwen-oauth:qp-session-check)"}]
    command = client.chat.completions.create(model="m", messages=set_model)
    assert "qp-session-check" in command.choices[0].message.content
    client.chat.completions.create(model="m", messages=USER)
    assert fake.chat_requests[-1]["body"]["model"] == "qp-session-check"  # the session held
    db = Database(url)
    try:
        with db.engine.connect() as conn:
            states = conn.execute(sa.text("SELECT state FROM qp_sessions")).scalars().all()
            assert any("qp-session-check" in state for state in states)
            # the query parameters reached the driver
            names = conn.execute(
                sa.text("SELECT application_name FROM pg_stat_activity")
            ).scalars().all()
            assert "qp-e2e-hosting" in names

        def ledger_rows() -> int:
            with db.engine.connect() as conn:
                return conn.execute(sa.text("SELECT count(*) FROM qp_usage")).scalar_one()

        assert wait_for(lambda: ledger_rows() == 2, timeout=10.0)
    finally:
        db.dispose()
    rows = requests.get(proxy.url + "/usage/recent", timeout=5).json()["data"]
    assert len(rows) == 2 and {row["status"] for row in rows} == {200}


@pytest.mark.parametrize("command", ["procfile", "serve"])
def test_a_database_url_the_proxy_cannot_use_stops_start_up(command, tmp_path):
    env = {k: v for k, v in platform_env(tmp_path).items() if v is not None}
    env.update(PORT=str(8000), PYTHONPATH=str(ROOT), HOME=str(tmp_path),
               DATABASE_URL="mysql://admin:hunter2secret@db.example/app")
    argv = (["bash", "-c", procfile_web_command()] if command == "procfile"
            else [sys.executable, "-m", "qwenproxy", "serve"])
    result = subprocess.run(argv, env=env, cwd=ROOT if command == "procfile" else tmp_path,
                            capture_output=True, text=True, timeout=60)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "DATABASE_URL" in output and "'mysql'" in output and "postgres://" in output
    assert "Booting worker" not in output  # stopped before gunicorn forked
    assert "hunter2secret" not in output and "Traceback" not in output


# --- NONSTREAM_KEEPALIVE ------------------------------------------------------------------


def raw_post(proxy, path: str, body: dict, **headers: str) -> tuple[int, str, bytes]:
    response = requests.post(proxy.url + path, json=body, headers=headers, timeout=20,
                             stream=True)
    with response:
        return response.status_code, response.headers["Content-Type"], response.raw.read()


def recorded(proxy) -> list[dict]:
    return requests.get(proxy.url + "/usage/recent", timeout=5).json().get("data", [])


def test_a_slow_answer_gets_spaces_then_a_normal_completion(start_proxy, fake):
    proxy = start_proxy(NONSTREAM_KEEPALIVE="1")
    fake.script.append(reply_hang(2.6))
    status, content_type, raw = raw_post(proxy, "/v1/chat/completions",
                                         {"model": "m", "messages": USER})
    assert status == 200 and content_type == "application/json"
    assert raw.startswith(b"  ")  # one at about 1 s, one at about 2 s
    assert json.loads(raw)["choices"][0]["message"]["content"] == "Hello from fake"
    fake.script.append(reply_hang(2.6))
    answer = openai_client(proxy).chat.completions.create(model="m", messages=USER)
    assert answer.choices[0].message.content == "Hello from fake"
    assert answer.usage.total_tokens == 10
    fake.script.append(reply_hang(2.6))
    response = openai_client(proxy).responses.create(model="m", input="hi")
    assert response.output_text == "Hello from fake"


def test_a_slow_answer_reaches_the_anthropic_sdk_as_a_normal_message(start_proxy, fake):
    proxy = start_proxy(NONSTREAM_KEEPALIVE="1")
    fake.script.append(reply_hang(2.6))
    status, _, raw = raw_post(proxy, "/v1/messages", {
        "model": "claude-sonnet-4-5", "max_tokens": 50, "messages": USER})
    assert status == 200 and raw.startswith(b" ") and json.loads(raw)["type"] == "message"
    fake.script.append(reply_hang(2.6))
    with anthropic.Anthropic(base_url=proxy.url, api_key="x", max_retries=0, timeout=20) as sdk:
        message = sdk.messages.create(model="claude-sonnet-4-5", max_tokens=50, messages=USER)
    assert message.content[0].text == "Hello from fake"
    assert message.usage.output_tokens == 3


def test_a_failure_after_the_keepalive_started_is_a_json_error_body(start_proxy, fake):
    proxy = start_proxy(NONSTREAM_KEEPALIVE="1")
    fake.script.append(reply_hang(2.2, then=reply_error(500, "upstream exploded")))
    status, content_type, raw = raw_post(proxy, "/v1/chat/completions",
                                         {"model": "m", "messages": USER})
    assert status == 200 and content_type == "application/json" and raw.startswith(b" ")
    error = json.loads(raw)["error"]
    assert error["code"] == "upstream_error" and "upstream exploded" in error["message"]
    fake.script.append(reply_hang(2.2, then=reply_error(500, "upstream exploded")))
    status, _, raw = raw_post(proxy, "/v1/messages", {
        "model": "claude-sonnet-4-5", "max_tokens": 50, "messages": USER})
    body = json.loads(raw)
    assert status == 200 and body["type"] == "error" and body["error"]["type"] == "api_error"
    # the ledger keeps what really happened
    assert wait_for(lambda: [r["status"] for r in recorded(proxy)] == [502, 502], timeout=10.0)
    assert {r["error_code"] for r in recorded(proxy)} == {"upstream_error"}


def test_quick_answers_and_errors_are_untouched_by_the_keepalive(start_proxy, fake):
    proxy = start_proxy(NONSTREAM_KEEPALIVE="2")
    fake.script.append(reply_error(429, "slow down", headers=[("Retry-After", "7")]))
    response = requests.post(proxy.url + "/v1/chat/completions",
                             json={"model": "m", "messages": USER}, timeout=10)
    assert response.status_code == 429 and response.headers["Retry-After"] == "7"
    ok = requests.post(proxy.url + "/v1/chat/completions",
                       json={"model": "m", "messages": USER}, timeout=10)
    assert ok.status_code == 200 and ok.content.startswith(b"{")
    assert ok.headers["X-Qwenproxy-Backend"] == "qwen-oauth"
    assert ok.headers["Content-Length"] == str(len(ok.content))


def test_a_client_leaving_during_the_keepalive_ends_the_request(start_proxy, fake):
    proxy = start_proxy(NONSTREAM_KEEPALIVE="1")
    fake.script.append(reply_hang(30))
    raw = json.dumps({"model": "m", "messages": USER}).encode()
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\n"
                     b"Content-Type: application/json\r\nContent-Length: "
                     + str(len(raw)).encode() + b"\r\n\r\n" + raw)
        received = b""
        while b"\r\n\r\n" not in received:
            data = sock.recv(4096)
            assert data, "the proxy closed first"
            received += data
        assert received.startswith(b"HTTP/1.1 200")
    left = time.monotonic()
    assert wait_for(lambda: [r["status"] for r in recorded(proxy)] == [499], timeout=10.0)
    assert time.monotonic() - left < 4  # noticed within about a second, not after 30 s
