"""A fake Qwen owned by the tests: OAuth token + device endpoints and an OpenAI-style chat
endpoint (JSON and SSE), served by gevent's WSGI server on a loopback port in a thread.

Tests script it (`fake.script.append(reply)`) and inspect what it received.
"""

from __future__ import annotations

import collections
import json
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable
from typing import Any

import gevent
import gevent.socket
from gevent.pywsgi import WSGIServer

WSGIReply = tuple[str, list[tuple[str, str]], Iterable[bytes]]


class _NoDelayWSGIServer(WSGIServer):
    """Answers leave at once: without TCP_NODELAY, headers and body written separately meet
    the client's delayed ACK and every answer waits ~40 ms."""

    def handle(self, sock: Any, address: Any) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().handle(sock, address)


Reply = Callable[["FakeUpstream", dict[str, Any]], WSGIReply]


def _json(status: str, body: Any, headers: list[tuple[str, str]] | None = None) -> WSGIReply:
    return (
        status,
        [("Content-Type", "application/json"), *(headers or [])],
        [json.dumps(body).encode()],
    )


def completion(
    text: str = "Hello from fake",
    model: str = "m",
    usage: dict | None = None,
    tool_calls: list | None = None,
) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": text}
    if tool_calls:
        message["tool_calls"] = tool_calls
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": 1,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "finish_reason": "tool_calls" if tool_calls else "stop",
            }
        ],
        "usage": usage or {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10},
    }


def chunk(delta: dict[str, Any], finish: str | None = None, model: str = "m") -> dict[str, Any]:
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


def unindexed_tool_call_events(name: str, pieces: list[str]) -> list[dict[str, Any]]:
    """A streamed call of tool `name` whose argument `pieces` come without the `index`
    field (as some upstreams send them)."""
    opening = {"id": "call_1", "type": "function", "function": {"name": name, "arguments": ""}}
    return [
        chunk({"role": "assistant", "content": None}),
        chunk({"tool_calls": [opening]}),
        *(chunk({"tool_calls": [{"function": {"arguments": piece}}]}) for piece in pieces),
    ]


USAGE_CHUNK = {
    "id": "chatcmpl-fake",
    "object": "chat.completion.chunk",
    "created": 1,
    "model": "m",
    "choices": [],
    "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10},
}


def sse(
    events: Iterable[dict[str, Any] | str],
    delay: float = 0.0,
    done: bool = True,
    on_close: Callable[[], None] | None = None,
) -> Iterable[bytes]:
    try:
        for event in events:
            payload = event if isinstance(event, str) else json.dumps(event)
            yield f"data: {payload}\n\n".encode()
            if delay:
                gevent.sleep(delay)
        if done:
            yield b"data: [DONE]\n\n"
    finally:
        if on_close:
            on_close()


def reply_json(
    body: dict[str, Any], status: str = "200 OK", headers: list[tuple[str, str]] | None = None
) -> Reply:
    return lambda fake, request: _json(status, body, headers)


def reply_error(
    status: int, message: str, code: str | None = None, headers: list[tuple[str, str]] | None = None
) -> Reply:
    body = {"error": {"message": message, "type": "error", "code": code}}
    return reply_json(body, f"{status} Error", headers)


def reply_stream(
    events: list[dict[str, Any] | str], delay: float = 0.0, done: bool = True
) -> Reply:
    def reply(fake: FakeUpstream, request: dict[str, Any]) -> WSGIReply:
        return (
            "200 OK",
            [("Content-Type", "text/event-stream")],
            sse(events, delay, done, on_close=fake.stream_closed.set),
        )

    return reply


def reply_endless_stream(interval: float = 0.02) -> Reply:
    """Streams forever; records when the proxy closes the connection."""

    def events() -> Iterable[dict[str, Any]]:
        n = 0
        while True:
            n += 1
            yield chunk({"content": f"tick {n} "})

    def reply(fake: FakeUpstream, request: dict[str, Any]) -> WSGIReply:
        return (
            "200 OK",
            [("Content-Type", "text/event-stream")],
            sse(events(), interval, on_close=fake.stream_closed.set),
        )

    return reply


def reply_hang(seconds: float, then: Reply | None = None) -> Reply:
    def reply(fake: FakeUpstream, request: dict[str, Any]) -> WSGIReply:
        gevent.sleep(seconds)
        return (then or default_reply)(fake, request)

    return reply


def _refusal(status: str, message: str, code: str | None) -> WSGIReply:
    return _json(
        status, {"error": {"message": message, "type": "invalid_request_error", "code": code}}
    )


# How each provider refuses a prompt longer than its window (sources beside context_refusal
# in qwenproxy/pipeline/guards/context.py).
LENGTH_REFUSALS: dict[str, Callable[[int, int], WSGIReply]] = {
    "dashscope": lambda window, size: _refusal(
        "400 Bad Request",
        f"<400> InternalError.Algo.InvalidParameter: Range of input length should be [1, {window}]",
        "invalid_parameter_error",
    ),
    "vllm": lambda window, size: _refusal(
        "400 Bad Request",
        f"This model's maximum context length is {window} tokens. However, you requested "
        f"{size + 100} tokens ({size} in the messages, 100 in the completion). Please reduce "
        "the length of the messages or completion.",
        None,
    ),
    "openrouter": lambda window, size: _refusal(
        "400 Bad Request",
        f"This endpoint's maximum context length is {window} tokens. However, you requested "
        f"about {size} tokens ({size} of text input). Please reduce the length of either one.",
        None,
    ),
    "413": lambda window, size: (
        "413 Payload Too Large",
        [("Content-Type", "text/plain")],
        [b"too large"],
    ),
    "dashscope-500": lambda window, size: _refusal(
        "500 Internal Server Error",
        f"Range of input length should be [1, {window}]",
        "InternalError",
    ),
}
# The fields of OpenAI's chat content parts and tool definitions; `refuse_unknown_fields`
# makes the fake answer 400 to anything else there (as a strictly validating upstream does).
KNOWN_PART_FIELDS = frozenset({"type", "text", "image_url", "input_audio", "file"})
KNOWN_TOOL_FIELDS = frozenset({"type", "function"})


def unknown_fields(body: dict[str, Any]) -> list[str]:
    found = []
    for message in body.get("messages") or ():
        content = message.get("content") if isinstance(message, dict) else None
        for part in content if isinstance(content, list) else ():
            found += [f"messages[].content[].{k}" for k in part if k not in KNOWN_PART_FIELDS]
    for tool in body.get("tools") or ():
        found += [f"tools[].{k}" for k in tool if k not in KNOWN_TOOL_FIELDS]
    return found


def default_reply(fake: FakeUpstream, request: dict[str, Any]) -> WSGIReply:
    body = request["body"]
    if body.get("stream"):
        events: list[dict[str, Any]] = [
            chunk({"role": "assistant", "content": ""}),
            chunk({"content": "Hello"}),
            chunk({"content": " from"}),
            chunk({"content": " fake"}),
            chunk({}, finish="stop"),
        ]
        if (body.get("stream_options") or {}).get("include_usage"):
            events.append(USAGE_CHUNK)
        return reply_stream(events)(fake, request)
    return _json("200 OK", completion(model=body.get("model", "m")))


class FakeUpstream:
    """One fake Qwen. `url` is its base; `api_base` the OpenAI-style `/v1` base."""

    def __init__(self) -> None:
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(1024)
        self.port = self._listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.api_base = self.url + "/v1"
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._server: WSGIServer | None = None
        self._started = threading.Event()
        self.reset()

    # --- state ------------------------------------------------------------------------

    def reset(self) -> None:
        with self._lock:
            self.script: collections.deque[Reply] = collections.deque()
            self.chat_requests: list[dict[str, Any]] = []
            self.token_requests: list[dict[str, str]] = []
            self.refresh_calls = 0
            self.refresh_delay = 0.0
            self.refresh_mode = "ok"  # "ok", "dead" (400 invalid_grant), "error" (500)
            self.valid_tokens = {"tok-initial"}
            self.valid_refresh_tokens = {"refresh-initial"}
            # A context window the fake enforces, measured in characters of the messages'
            # JSON (its own rough count), refused in one provider's wording (LENGTH_REFUSALS).
            self.context_window: int | None = None
            self.length_wording = "dashscope"
            # GET /v1/models: this body (None: 404), and the requests it got.
            self.model_list: dict[str, Any] | None = None
            self.model_list_requests: list[dict[str, str]] = []
            self.reject_every_token = False  # the ended free tier: even fresh tokens 401
            self.refuse_unknown_fields = False  # 400 for fields OpenAI's parts do not have
            self.device_polls_before_approval = 1
            self.device_polls = 0
            self.stream_closed = threading.Event()
            self._issued = 0

    # --- WSGI ---------------------------------------------------------------------------

    def __call__(self, environ: dict[str, Any], start_response: Callable) -> Iterable[bytes]:
        path = environ["PATH_INFO"]
        length = int(environ.get("CONTENT_LENGTH") or 0)
        raw = environ["wsgi.input"].read(length) if length else b""
        headers = {
            key[5:].replace("_", "-").lower(): value
            for key, value in environ.items()
            if key.startswith("HTTP_")
        }
        headers["content-type"] = environ.get("CONTENT_TYPE", "")
        if path == "/v1/models" and environ["REQUEST_METHOD"] == "GET":
            with self._lock:
                self.model_list_requests.append(headers)
            if self.model_list is None:
                status, hdrs, body = _json("404 Not Found", {"error": {"message": "no list"}})
            else:
                status, hdrs, body = _json("200 OK", self.model_list)
        elif path == "/api/v1/oauth2/token":
            status, hdrs, body = self._token(urllib.parse.parse_qs(raw.decode()))
        elif path == "/api/v1/oauth2/device/code":
            status, hdrs, body = _json(
                "200 OK",
                {
                    "device_code": "dev-code-1",
                    "user_code": "ABCD-1234",
                    "verification_uri": f"{self.url}/authorize",
                    "verification_uri_complete": f"{self.url}/authorize?user_code=ABCD-1234",
                    "expires_in": 60,
                    "interval": 0.01,
                },
            )
        elif path == "/v1/chat/completions":
            status, hdrs, body = self._chat(headers, raw)
        elif path == "/v1/models":
            status, hdrs, body = _json("200 OK", {"object": "list", "data": []})
        else:
            status, hdrs, body = _json("404 Not Found", {"error": {"message": "no route"}})
        start_response(status, hdrs)
        return body

    def _token(self, form: dict[str, list[str]]) -> WSGIReply:
        fields = {k: v[0] for k, v in form.items()}
        with self._lock:
            self.token_requests.append(fields)
        grant = fields.get("grant_type")
        if grant == "refresh_token":
            with self._lock:
                self.refresh_calls += 1
                mode = self.refresh_mode
            if self.refresh_delay:
                gevent.sleep(self.refresh_delay)
            if mode == "dead" or fields.get("refresh_token") not in self.valid_refresh_tokens:
                return _json(
                    "400 Bad Request",
                    {"error": "invalid_grant", "error_description": "refresh token expired"},
                )
            if mode == "error":
                return _json("500 Internal Server Error", {"error": "server_error"})
            return _json("200 OK", self._issue())
        if grant == "urn:ietf:params:oauth:grant-type:device_code":
            with self._lock:
                self.device_polls += 1
                pending = self.device_polls <= self.device_polls_before_approval
            if pending:
                return _json("400 Bad Request", {"error": "authorization_pending"})
            return _json("200 OK", {**self._issue(), "resource_url": f"127.0.0.1:{self.port}"})
        return _json("400 Bad Request", {"error": "unsupported_grant_type"})

    def _issue(self) -> dict[str, Any]:
        with self._lock:
            self._issued += 1
            token, refresh = f"tok-{self._issued}", f"refresh-{self._issued}"
            self.valid_tokens.add(token)
            self.valid_refresh_tokens.add(refresh)
        return {
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": 3600,
            "refresh_token": refresh,
        }

    def _chat(self, headers: dict[str, str], raw: bytes) -> WSGIReply:
        try:
            body = json.loads(raw)
        except ValueError:
            return _json("400 Bad Request", {"error": {"message": "bad json"}})
        request = {"headers": headers, "body": body, "time": time.monotonic()}
        with self._lock:
            self.chat_requests.append(request)
        token = headers.get("authorization", "").removeprefix("Bearer ")
        if self.reject_every_token or token not in self.valid_tokens:
            return _json(
                "401 Unauthorized",
                {
                    "error": {
                        "message": "invalid access token or token expired",
                        "type": "invalid_request_error",
                        "code": "invalid_api_key",
                    }
                },
            )
        if self.context_window is not None:
            size = len(json.dumps(body.get("messages"), ensure_ascii=False))
            if size > self.context_window:
                return LENGTH_REFUSALS[self.length_wording](self.context_window, size)
        unknown = unknown_fields(body) if self.refuse_unknown_fields else []
        if unknown:
            return _json(
                "400 Bad Request",
                {
                    "error": {
                        "message": f"Unrecognized request argument supplied: {unknown[0]}",
                        "type": "invalid_request_error",
                        "code": "invalid_request_error",
                    }
                },
            )
        with self._lock:
            reply = self.script.popleft() if self.script else default_reply
        return reply(self, request)

    # --- lifecycle ---------------------------------------------------------------------

    def start(self) -> FakeUpstream:
        def run() -> None:
            # A gevent socket, so that accepting never blocks this thread's hub.
            listener = gevent.socket.socket(fileno=self._listener.detach())
            self._server = _NoDelayWSGIServer(listener, self, log=None, error_log=None)
            self._hub = gevent.get_hub()
            self._server.start()
            self._started.set()
            self._server.serve_forever(stop_timeout=1)
            self._hub.destroy(destroy_loop=True)

        self._thread = threading.Thread(target=run, name="fake-upstream", daemon=True)
        self._thread.start()
        if not self._started.wait(10):
            raise RuntimeError("fake upstream did not start")
        return self

    def stop(self) -> None:
        """Stop the server from its own hub and join the thread (a gevent hub left running
        in a thread while the interpreter exits can crash it)."""
        if self._thread is None or self._server is None:
            return
        server = self._server
        self._hub.loop.run_callback_threadsafe(lambda: gevent.spawn(server.stop, 1))
        self._thread.join(10)
        self._thread = None
