"""Reliability under gunicorn/gevent: client disconnects, graceful shutdown, upstream
faults, malformed input, and credentials under concurrency."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import gevent
import openai
import pytest
import requests

from tests.conftest import write_creds
from tests.e2e.conftest import openai_client, wait_for
from tests.fake_upstream import chunk, reply_endless_stream, reply_hang, reply_stream

pytestmark = pytest.mark.e2e

USER = [{"role": "user", "content": "hi"}]


def worker_pid(master_pid: int) -> int:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == master_pid:
                return int(entry.name)
    raise AssertionError("no gunicorn worker found")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def raw_stream_request(port: int, read_bytes: int) -> None:
    """Open a stream, read a little of it, then drop the connection."""
    body = json.dumps({"model": "m", "stream": True, "messages": USER}).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\n"
                     b"Content-Type: application/json\r\nContent-Length: "
                     + str(len(body)).encode() + b"\r\n\r\n" + body)
        received = b""
        while len(received) < read_bytes:
            data = sock.recv(4096)
            if not data:
                break
            received += data
        assert b"200 OK" in received


def test_two_hundred_disconnects_leak_no_sockets(start_proxy, fake):
    proxy = start_proxy(STREAM_KEEPALIVE="30")
    pid = worker_pid(proxy.process.pid)
    fake.script.append(reply_endless_stream(0.01))
    raw_stream_request(proxy.port, 600)  # warm-up: pools, database, imports
    assert fake.stream_closed.wait(2.0)
    baseline = open_fds(pid)
    for _ in range(200):
        fake.script.append(reply_endless_stream(0.01))
    with ThreadPoolExecutor(20) as pool:
        list(pool.map(lambda _: raw_stream_request(proxy.port, 600), range(200)))
    # Every upstream stream gets closed once its client is gone.
    assert wait_for(lambda: open_fds(pid) <= baseline + 2, timeout=10), (
        f"fds: {baseline} before, {open_fds(pid)} after")


def send_then_leave(port: int, body: dict, read_until: bytes | None, sent: callable) -> None:
    """Send a chat request over a raw socket, read until `read_until` (if any) or until
    `sent()` says the upstream has it, then close the connection."""
    raw = json.dumps(body).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\n"
                     b"Content-Type: application/json\r\nContent-Length: "
                     + str(len(raw)).encode() + b"\r\n\r\n" + raw)
        received = b""
        while read_until is not None and read_until not in received:
            data = sock.recv(4096)
            assert data, "the proxy closed first"
            received += data
        assert wait_for(sent, timeout=5)


def recorded_statuses(proxy) -> list[int]:
    rows = requests.get(proxy.url + "/usage/recent", timeout=5).json().get("data", [])
    return [row["status"] for row in rows]


def test_client_leaving_a_long_wait_ends_it_at_once(start_proxy, fake):
    """A non-stream request is one long wait for the whole answer: a client that gives up
    (a cancelled agent) must not keep the upstream busy until the answer comes."""
    proxy = start_proxy()
    fake.script.append(reply_hang(30))
    send_then_leave(proxy.port, {"model": "m", "messages": USER}, None,
                    lambda: len(fake.chat_requests) == 1)
    left = time.monotonic()
    assert wait_for(lambda: 499 in recorded_statuses(proxy), timeout=10)
    assert time.monotonic() - left < 4  # checked about once a second, not after 30 s


def test_client_leaving_a_silent_stream_ends_it_before_the_next_ping(start_proxy, fake):
    proxy = start_proxy(STREAM_KEEPALIVE="60")
    events = [chunk({"role": "assistant", "content": "first"}), chunk({"content": "late"})]
    fake.script.append(reply_stream(events, delay=30))  # then 30 s of silence
    send_then_leave(proxy.port, {"model": "m", "stream": True, "messages": USER},
                    b'"first"', lambda: True)
    left = time.monotonic()
    assert wait_for(lambda: 499 in recorded_statuses(proxy), timeout=10)
    assert time.monotonic() - left < 4


def test_graceful_shutdown_lets_streams_finish_and_refuses_new_connections(start_proxy, fake):
    proxy = start_proxy(GRACEFUL_TIMEOUT="20")
    events = [chunk({"content": f"w{i} "}) for i in range(10)] + [chunk({}, finish="stop")]
    fake.script.append(reply_stream(events, delay=0.2))
    frames: list[bytes] = []
    started = threading.Event()

    def consume() -> None:
        with requests.post(proxy.url + "/v1/chat/completions", stream=True, timeout=30,
                           json={"model": "m", "stream": True, "messages": USER}) as response:
            for frame in response.iter_lines():
                if frame:
                    frames.append(frame)
                    started.set()

    reader = threading.Thread(target=consume)
    reader.start()
    assert started.wait(10)
    proxy.process.send_signal(signal.SIGTERM)
    assert wait_for(lambda: _refused(proxy.port), timeout=5)
    reader.join(30)
    assert frames[-1] == b"data: [DONE]"
    content = "".join(json.loads(f[6:])["choices"][0]["delta"].get("content") or ""
                      for f in frames[:-1])
    assert content == "".join(f"w{i} " for i in range(10))
    assert proxy.process.wait(20) == 0


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
    except OSError:
        return True
    return False


def test_hung_upstream_mid_stream_gives_an_sse_error_frame(start_proxy, fake):
    def hang_after_first(fake_, request):
        def body():
            yield b"data: " + json.dumps(chunk({"content": "first"})).encode() + b"\n\n"
            gevent.sleep(5)
            yield b"data: [DONE]\n\n"
        return "200 OK", [("Content-Type", "text/event-stream")], body()

    fake.script.append(hang_after_first)
    proxy = start_proxy(UPSTREAM_READ_TIMEOUT="1", STREAM_KEEPALIVE="30")
    client = openai_client(proxy)
    seen = []
    with pytest.raises(openai.APIError) as caught:
        for c in client.chat.completions.create(model="m", messages=USER, stream=True):
            seen.append(c.choices[0].delta.content)
    assert seen == ["first"]
    assert "stopped sending" in str(caught.value)


def test_reset_connection_mid_stream_is_a_clean_error(start_proxy, fake):
    def reset(fake_, request):
        def body():
            yield b"data: " + json.dumps(chunk({"content": "x"})).encode() + b"\n\n"
            raise ConnectionResetError("simulated reset")
        return "200 OK", [("Content-Type", "text/event-stream")], body()

    fake.script.append(reset)
    proxy = start_proxy()
    response = requests.post(proxy.url + "/v1/chat/completions", timeout=10,
                             json={"model": "m", "stream": True, "messages": USER})
    last = response.text.strip().split("\n\n")[-1]
    assert json.loads(last[6:])["error"]["type"] == "upstream_error"
    assert "Traceback" not in proxy.output()


def test_upstream_429_keeps_retry_after_end_to_end(start_proxy, fake):
    from tests.fake_upstream import reply_error

    fake.script.append(reply_error(429, "slow down", headers=[("Retry-After", "9")]))
    proxy = start_proxy()
    response = requests.post(proxy.url + "/v1/chat/completions", timeout=10,
                             json={"model": "m", "messages": USER})
    assert response.status_code == 429 and response.headers["Retry-After"] == "9"


def _fuzz_cases(rng: random.Random) -> list[tuple[bytes, str]]:
    good = {"model": "m", "messages": USER}
    junk_values = [None, 1, -1.5, True, "", "x" * 5000, [], {}, [[[]]], {"a": {"b": {}}}]
    cases: list[tuple[bytes, str]] = []
    for _ in range(500):
        kind = rng.randrange(9)
        if kind == 0:
            raw = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200)))
        elif kind == 1:
            text = json.dumps(good)
            cut = rng.randrange(1, len(text))
            raw = text[:cut].encode()
        elif kind == 2:
            raw = json.dumps(rng.choice(junk_values)).encode()
        elif kind == 3:
            body = dict(good)
            body[rng.choice(["messages", "model", "stream", "temperature", "max_tokens",
                             "tools", "stream_options", "n"])] = rng.choice(junk_values[1:])
            if body.get("messages") == good["messages"]:
                body["messages"] = "not a list"
            raw = json.dumps(body).encode()
        elif kind == 4:
            depth = rng.randrange(50, 3000)
            raw = b'{"messages": ' + b"[" * depth + b'"x"' + b"]" * depth + b"}"
        elif kind == 5:
            raw = b'{"messages": [{"role": "user", "content": "\xff\xfe\xfd"}]}'
        elif kind == 6:
            raw = json.dumps({"messages": [{"role": rng.choice(["", "bot", 5, None]),
                                            "content": "x"}]}).encode()
        elif kind == 7:
            content = rng.choice([5, {"a": 1}, [1, 2]])
            raw = json.dumps({"messages": [{"role": "user", "content": content}]}).encode()
        else:
            raw = json.dumps({"model": "m"}).encode()
        content_type = rng.choice(["application/json", "text/plain", "", "multipart/form-data"])
        cases.append((raw, content_type))
    return cases


@pytest.fixture
def session():
    with requests.Session() as http:
        http.mount("http://", requests.adapters.HTTPAdapter(pool_maxsize=100))
        yield http


def test_fuzzed_bad_requests_are_all_openai_shaped_4xx(start_proxy, fake, session):
    proxy = start_proxy()
    rng = random.Random(20261125)
    statuses = []
    for raw, content_type in _fuzz_cases(rng):
        headers = {"Content-Type": content_type} if content_type else {}
        response = session.post(proxy.url + "/v1/chat/completions", data=raw, headers=headers,
                                timeout=10)
        statuses.append(response.status_code)
        assert 400 <= response.status_code < 500, (raw[:200], response.text)
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
    assert fake.chat_requests == []
    assert requests.get(proxy.url + "/health", timeout=5).status_code == 200
    assert "Traceback" not in proxy.output()


def test_two_hundred_concurrent_requests_over_two_workers_refresh_once(
    start_proxy, fake, creds_path, session
):
    write_creds(creds_path, fake, expires_in=-60)
    fake.refresh_delay = 0.3
    proxy = start_proxy(WEB_CONCURRENCY="2")

    def one(_: int) -> int:
        return session.post(proxy.url + "/v1/chat/completions", timeout=30,
                            json={"model": "m", "messages": USER}).status_code

    with ThreadPoolExecutor(100) as pool:
        statuses = list(pool.map(one, range(200)))
    assert statuses == [200] * 200
    assert fake.refresh_calls == 1


def test_a_qwen_code_process_writing_the_same_file_never_tears_it(
    start_proxy, fake, creds_path, session
):
    """qwen-code rewrites the creds file (temp file + rename) while the proxy reads and
    refreshes it: every request succeeds and the file is always whole, valid JSON."""
    write_creds(creds_path, fake, expires_in=-60)
    fake.refresh_delay = 0.05
    proxy = start_proxy()
    stop = threading.Event()
    torn: list[str] = []

    def qwen_code_writer() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            data = json.loads(creds_path.read_text())
            data["access_token"] = "tok-initial"
            data["expiry_date"] = int((time.time() + (30 if n % 2 else -60)) * 1000)
            tmp = creds_path.with_name(f"{creds_path.name}.{n:012x}.tmp")
            tmp.write_text(json.dumps(data))
            os.chmod(tmp, 0o600)
            os.replace(tmp, creds_path)
            time.sleep(0.005)

    def reader() -> None:
        while not stop.is_set():
            try:
                json.loads(creds_path.read_text())
            except ValueError as exc:
                torn.append(str(exc))

    threads = [threading.Thread(target=qwen_code_writer), threading.Thread(target=reader)]
    for thread in threads:
        thread.start()
    try:
        with ThreadPoolExecutor(20) as pool:
            statuses = list(pool.map(lambda _: session.post(
                proxy.url + "/v1/chat/completions", json={"model": "m", "messages": USER},
                timeout=30).status_code, range(100)))
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert statuses == [200] * 100
    assert torn == []
    saved = json.loads(creds_path.read_text())
    assert {"access_token", "refresh_token", "token_type", "expiry_date"} <= set(saved)
