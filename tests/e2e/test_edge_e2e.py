"""Hostile input at the edge, end to end under gunicorn/gevent: every case is refused
before the upstream is called (and paid), with a JSON error of its door's shape, and
leaves one ledger row with its status and error code."""

from __future__ import annotations

import json
import socket
import time

import anthropic
import openai
import pytest
import requests

from tests.e2e.conftest import openai_client

pytestmark = pytest.mark.e2e

KEY = "sk-client-edge-1"
AUTH = {"Authorization": f"Bearer {KEY}"}
USER = [{"role": "user", "content": "hi"}]
MAX_DEPTH = 128  # input_rules.MAX_JSON_DEPTH, the documented limit
DEFAULT_MAX_BODY = 10 * 1024 * 1024


def nested(levels: int) -> object:
    """`levels` lists, one inside the other."""
    value: object = "x"
    for _ in range(levels):
        value = [value]
    return value


def with_nested(body: dict, field: str, levels: int) -> bytes:
    """`body` as JSON with `field` set to `levels` nested lists (written as text: Python's
    json module cannot encode 1000 levels)."""
    text = json.dumps({**body, field: "@@"})
    return text.replace('"@@"', "[" * levels + '"x"' + "]" * levels).encode()


def ledger(proxy, count: int, timeout: float = 10.0) -> list[dict]:
    """The newest ledger rows once at least `count` are written (newest first)."""
    deadline = time.monotonic() + timeout
    while True:
        rows = requests.get(proxy.url + "/usage/recent?limit=200", headers=AUTH,
                            timeout=5).json()["data"]
        if len(rows) >= count or time.monotonic() > deadline:
            return rows
        time.sleep(0.1)


def post(proxy, path: str, body: object = None, raw: bytes | None = None, **headers: str):
    data = raw if raw is not None else json.dumps(body).encode()
    return requests.post(proxy.url + path, data=data, timeout=30,
                         headers={"Content-Type": "application/json", **AUTH, **headers})


def assert_openai_error(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] == "application/json"
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == code
    return error


def assert_anthropic_error(response, status: int) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] == "application/json"
    body = response.json()
    assert body["type"] == "error" and set(body["error"]) == {"type", "message"}
    return body["error"]


def raw_exchange(port: int, head: bytes, body: bytes = b"") -> tuple[int, dict, bytes]:
    """Send bytes as they are; the status, headers and body of the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head + body)
        received = b""
        while True:
            data = sock.recv(65536)
            if not data:
                break
            received += data
    head_bytes, _, rest = received.partition(b"\r\n\r\n")
    lines = head_bytes.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, rest


@pytest.fixture
def proxy(start_proxy):
    return start_proxy(PROXY_API_KEY=KEY)


def test_json_nested_deeper_than_the_proxy_can_encode_is_a_400_on_every_door(proxy, fake):
    for levels in (MAX_DEPTH, 300, 1000, 1100):  # 256-1024 once parsed, then failed (500)
        # Inside the body object: levels + 1 deep.
        chat = post(proxy, "/v1/chat/completions",
                    raw=with_nested({"model": "m", "messages": USER}, "x", levels))
        error = assert_openai_error(chat, 400, "json_too_deep")
        assert f"more than {MAX_DEPTH} levels" in error["message"]
        messages = post(proxy, "/v1/messages", raw=with_nested(
            {"model": "m", "max_tokens": 5, "messages": USER}, "metadata", levels))
        assert assert_anthropic_error(messages, 400)["type"] == "invalid_request_error"
        responses = post(proxy, "/v1/responses",
                         raw=with_nested({"model": "m", "input": "hi"}, "x", levels))
        assert_openai_error(responses, 400, "json_too_deep")
    assert fake.chat_requests == []
    rows = ledger(proxy, 12)
    assert len(rows) == 12
    assert {(r["status"], r["error_code"]) for r in rows} == {(400, "json_too_deep")}


def test_json_at_the_depth_limit_is_forwarded_through_each_translation(proxy, fake):
    client = openai_client(proxy, KEY)
    answer = client.chat.completions.create(model="m", messages=USER,
                                            extra_body={"x": nested(MAX_DEPTH - 1)})
    assert answer.choices[0].message.content == "Hello from fake"
    assert fake.chat_requests[-1]["body"]["x"] == nested(MAX_DEPTH - 1)
    # The Anthropic door moves a tool's schema one level deeper (function.parameters).
    schema = {"type": "object", "properties": {}, "x": nested(MAX_DEPTH - 4)}
    with anthropic.Anthropic(base_url=proxy.url, api_key=KEY, max_retries=0) as claude:
        message = claude.messages.create(
            model="m", max_tokens=5, messages=USER,
            tools=[{"name": "t", "description": "d", "input_schema": schema}],
        )
    assert message.content[0].text == "Hello from fake"
    sent = fake.chat_requests[-1]["body"]["tools"][0]["function"]["parameters"]
    assert sent["x"] == nested(MAX_DEPTH - 4)
    schema = {"type": "object", "properties": {}, "x": nested(MAX_DEPTH - 4)}
    reply = client.responses.create(
        model="m", input="hi",
        tools=[{"type": "function", "name": "t", "parameters": schema, "strict": False}],
    )
    assert reply.output_text == "Hello from fake"
    assert [r["status"] for r in ledger(proxy, 3)] == [200, 200, 200]


@pytest.mark.parametrize("char", ["\x00", "\r", "\n", "\x1b"])
def test_a_control_character_in_a_model_name_is_refused_before_the_upstream(proxy, fake, char):
    client = openai_client(proxy, KEY)
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=f"m{char}x", messages=USER)
    assert caught.value.body["code"] == "invalid_name" and caught.value.body["param"] == "model"
    assert "control character" in caught.value.body["message"]
    with anthropic.Anthropic(base_url=proxy.url, api_key=KEY, max_retries=0) as claude:
        with pytest.raises(anthropic.BadRequestError) as refused:
            claude.messages.create(model=f"m{char}x", max_tokens=5, messages=USER)
    assert refused.value.body["type"] == "error"
    with pytest.raises(openai.BadRequestError):
        client.responses.create(model=f"m{char}x", input="hi")
    long_name = post(proxy, "/v1/chat/completions", {"model": "m" * 257, "messages": USER})
    assert "at most 256" in assert_openai_error(long_name, 400, "invalid_name")["message"]
    assert fake.chat_requests == []
    rows = ledger(proxy, 4)
    assert len(rows) == 4
    assert {(r["status"], r["error_code"]) for r in rows} == {(400, "invalid_name")}


def test_a_set_command_with_a_bad_model_changes_nothing_and_says_why(proxy, fake):
    client = openai_client(proxy, KEY, default_headers={"X-Session-ID": "poison"})
    for value, why in (("ab\rcd", "control character"), ("a" * 1_000_000, "at most 256")):
        reply = client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": f"!/set(model={value})"}])
        text = reply.choices[0].message.content
        assert why in text and "!/set(" in text  # the reason and the right syntax
        assert len(text) < 2000
    assert fake.chat_requests == []
    # The session kept no override: the next request goes out with its own model.
    raw = client.chat.completions.with_raw_response.create(model="qwen3-coder-plus",
                                                          messages=USER)
    assert raw.headers["X-Qwenproxy-Model"] == "coder-model"
    assert raw.parse().choices[0].message.content == "Hello from fake"
    assert fake.chat_requests[-1]["body"]["model"] == "coder-model"
    # A bad one-off sent with text: the text does not go anywhere either.
    reply = client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "!/oneoff(x\x00y) hi"}])
    assert "control character" in reply.choices[0].message.content
    assert len(fake.chat_requests) == 1
    rows = ledger(proxy, 4)
    assert [(r["status"], r["command_only"]) for r in rows] == [
        (200, True), (200, False), (200, True), (200, True)]


def test_session_ids_are_bounded_and_printable(proxy, fake):
    client = openai_client(proxy, KEY)
    for header in ("s" * 257, "bad\tid", "bad\x85id"):  # gunicorn refuses other controls
        response = post(proxy, "/v1/chat/completions", {"model": "m", "messages": USER},
                        **{"X-Session-ID": header})
        error = assert_openai_error(response, 400, "invalid_name")
        assert error["param"] == "X-Session-ID"
    assert fake.chat_requests == []
    long_id = "s" * 256  # too long for the id column as it is: kept under its hash
    for _ in range(2):
        client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "!/set(model=other-model)"}],
            extra_headers={"X-Session-ID": long_id})
    client.chat.completions.create(model="m", messages=USER,
                                   extra_headers={"X-Session-ID": long_id})
    assert fake.chat_requests[-1]["body"]["model"] == "other-model"
    rows = ledger(proxy, 6)
    assert [(r["status"], r["error_code"]) for r in rows[-3:]] == [(400, "invalid_name")] * 3
    assert len({r["session_id"] for r in rows[:3]}) == 1


def test_bodies_over_the_limit_are_413_however_they_are_framed(proxy, fake):
    def chunked_body():
        yield b'{"model": "m", "messages": [{"role": "user", "content": "'
        for _ in range(20):
            yield b"a" * 1_000_000
        yield b'"}]}'

    chunked = requests.post(proxy.url + "/v1/chat/completions", data=chunked_body(),
                            headers={"Content-Type": "application/json", **AUTH}, timeout=60)
    error = assert_openai_error(chunked, 413, "request_too_large")
    assert str(DEFAULT_MAX_BODY) in error["message"]
    big = json.dumps({"model": "m", "messages": [{"role": "user",
                                                  "content": "a" * (DEFAULT_MAX_BODY + 1)}]})
    assert_openai_error(post(proxy, "/v1/chat/completions", raw=big.encode()), 413,
                        "request_too_large")
    messages = requests.post(proxy.url + "/v1/messages", data=chunked_body(), timeout=60,
                             headers={"Content-Type": "application/json", **AUTH})
    assert assert_anthropic_error(messages, 413)["type"] == "request_too_large"
    # Just under the limit, chunked, is read whole and forwarded.
    fits = json.dumps({"model": "m", "messages": [{"role": "user", "content": "b" * 1000}]})
    ok = requests.post(proxy.url + "/v1/chat/completions", data=iter([fits.encode()]),
                       headers={"Content-Type": "application/json", **AUTH}, timeout=30)
    assert ok.status_code == 200 and len(fake.chat_requests) == 1
    rows = ledger(proxy, 4)
    assert [(r["status"], r["error_code"]) for r in rows[1:]] == [(413, "request_too_large")] * 3


def test_what_gunicorn_refuses_is_json_with_a_ledger_row(proxy, fake):
    port = proxy.port
    request_head = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\n"
                    b"Authorization: Bearer " + KEY.encode() + b"\r\n")
    status, headers, body = raw_exchange(port, request_head + b"X-Session-ID: "
                                         + b"a" * 9000 + b"\r\n\r\n")
    assert status == 431 and headers["content-type"] == "application/json"
    assert json.loads(body)["error"]["code"] == "request_header_fields_too_large"
    many = b"".join(b"X-H%d: v\r\n" % i for i in range(120))
    status, _, body = raw_exchange(port, request_head + many + b"\r\n")
    assert status == 431 and json.loads(body)["error"]["type"] == "invalid_request_error"
    status, _, body = raw_exchange(port, b"GET /v1/models?" + b"q" * 5000
                                   + b" HTTP/1.1\r\nHost: localhost\r\n\r\n")
    assert status == 414 and json.loads(body)["error"]["code"] == "request_line_too_long"
    chunked_head = request_head + b"Transfer-Encoding: chunked\r\n\r\n"
    status, _, body = raw_exchange(port, chunked_head, b"zz\r\n{}\r\n0\r\n\r\n")  # bad size
    assert status == 400 and json.loads(body)["error"]["code"] == "invalid_request"
    assert fake.chat_requests == []
    rows = ledger(proxy, 4)
    assert sorted((r["status"], r["error_code"]) for r in rows) == [
        (400, "invalid_request"),
        (414, "request_line_too_long"),
        (431, "request_header_fields_too_large"),
        (431, "request_header_fields_too_large"),
    ]
    assert "Traceback" not in proxy.output()


def test_every_refused_request_gets_exactly_one_ledger_row(proxy, fake):
    no_key = requests.post(proxy.url + "/v1/chat/completions", timeout=10,
                           json={"model": "m", "messages": USER})
    assert_openai_error(no_key, 401, "invalid_api_key")
    wrong = requests.post(proxy.url + "/v1/messages", timeout=10,
                          json={"model": "m", "max_tokens": 5, "messages": USER},
                          headers={"x-api-key": "sk-wrong"})
    assert_anthropic_error(wrong, 401)
    assert_openai_error(post(proxy, "/v1/chat/completion", {"model": "m"}), 404, "not_found")
    assert_openai_error(post(proxy, "/v1/chat/completions", raw=b"{nope"), 400,
                        "invalid_request")
    assert_openai_error(post(proxy, "/v1/chat/completions", {"model": "m"}), 400,
                        "invalid_request")
    # Refused by the pipeline, which records it itself: still one row.
    assert_openai_error(post(proxy, "/v1/chat/completions",
                             {"model": "nobackend:m", "messages": USER}), 404,
                        "model_not_found")
    assert requests.get(proxy.url + "/favicon.ico", timeout=5).status_code == 404
    assert fake.chat_requests == []
    # One request that succeeds, last: rows are written in order, so once its row is in,
    # any extra row of the refusals before it would be too.
    openai_client(proxy, KEY).chat.completions.create(model="m", messages=USER)
    rows = ledger(proxy, 7)
    assert rows[0]["status"] == 200
    assert sorted((r["status"], r["error_code"]) for r in rows[1:]) == [
        (400, "invalid_request"), (400, "invalid_request"), (401, "invalid_api_key"),
        (401, "invalid_api_key"), (404, "model_not_found"), (404, "not_found"),
    ]
    assert next(r for r in rows if r["error_code"] == "model_not_found")["client_key_id"]
    metrics = requests.get(proxy.url + "/metrics", headers=AUTH, timeout=5).text
    counted = sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                  if line.startswith("qwenproxy_requests_total{"))
    assert counted == 7


def test_a_printable_name_outside_ascii_is_forwarded_and_its_header_stays_one_header(proxy, fake):
    client = openai_client(proxy, KEY)
    raw = client.chat.completions.with_raw_response.create(model="модель", messages=USER)
    assert raw.parse().choices[0].message.content == "Hello from fake"
    assert fake.chat_requests[-1]["body"]["model"] == "модель"
    assert raw.headers["X-Qwenproxy-Model"] == "%D0%BC%D0%BE%D0%B4%D0%B5%D0%BB%D1%8C"
    assert [r["upstream_model"] for r in ledger(proxy, 1)] == ["модель"]
