"""A fast fake OpenAI-compatible upstream for the benchmark, run as its own process: a gevent
`StreamServer` with a hand-written HTTP/1.1 keep-alive handler and precomputed answers.

    python -m bench.fake_upstream [--port 0] [--chunks 20] [--chunk-delay 0.001] [--hold]

Routes: `POST /v1/chat/completions` (JSON, or SSE when the body asks for `"stream": true`;
paced by --chunk-delay, except for model `bench-burst`, whose streams come in one piece),
`POST /api/v1/oauth2/token` (counts refreshes), `GET /stats`, `POST /hold` and
`POST /release` (streams wait after their first content chunk while held), `GET /health`.
Any bearer token is accepted. Prints `listening <port>` when ready.
"""

from __future__ import annotations

import argparse
import json
import resource
import socket
import sys

import gevent
from gevent.event import Event
from gevent.server import StreamServer

MODEL = "qwen3-coder-plus"
# Streams for this model come in one piece whatever --chunk-delay says: for time to first
# token measured back to back, without the paced stream's idle time before each request.
BURST_MODEL = "bench-burst"
ANSWER_TEXT = (
    "Proxies forward requests between clients and servers. A good one adds little latency, "
    "keeps connections alive, streams tokens as soon as they arrive and never loses a frame."
)


def content_token(index: int) -> str:
    """The text of streamed content chunk `index`; clients check the order by it."""
    return f"w{index} "


def _chunk(delta: dict, finish: str | None = None) -> dict:
    return {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": MODEL,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


def _frame(payload: dict | str) -> bytes:
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    return f"data: {data}\n\n".encode()


def _http_chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def _response(status: str, content_type: str, body: bytes) -> bytes:
    return (
        f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body


COMPLETION = json.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 1700000000,
        "model": MODEL,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": ANSWER_TEXT},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 42, "completion_tokens": 36, "total_tokens": 78},
    },
    separators=(",", ":"),
).encode()

JSON_REPLY = _response("200 OK", "application/json", COMPLETION)
NOT_FOUND = _response("404 Not Found", "application/json", b'{"error":{"message":"no route"}}')
BAD_REQUEST = _response("400 Bad Request", "application/json", b'{"error":{"message":"bad"}}')
SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n"
)
CHUNKED_END = b"0\r\n\r\n"
USAGE_FRAME = _frame(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": MODEL,
        "choices": [],
        "usage": {"prompt_tokens": 42, "completion_tokens": 20, "total_tokens": 62},
    }
)


class FakeUpstream:
    def __init__(self, chunks: int, chunk_delay: float, hold: bool, refresh_delay: float):
        self.chunks = chunks
        self.chunk_delay = chunk_delay
        self.hold = hold
        self.refresh_delay = refresh_delay
        self.released = Event()
        if not hold:
            self.released.set()
        self.refresh_calls = 0
        self.chat_requests = 0
        self.stream_requests = 0
        self.open_streams = 0
        self.max_open_streams = 0
        self.connections = 0
        # Precomputed frames: role + first content chunk go out at once; then one content
        # chunk per `chunk_delay`; then finish (+ usage) + [DONE] together.
        frames = [_frame(_chunk({"role": "assistant", "content": ""}))]
        frames += [_frame(_chunk({"content": content_token(i)})) for i in range(chunks)]
        self.first = _http_chunk(frames[0] + frames[1]) if chunks else _http_chunk(frames[0])
        self.middle = [_http_chunk(f) for f in frames[2:]]
        finish = _frame(_chunk({}, "stop"))
        done = _frame("[DONE]")
        self.tail_plain = _http_chunk(finish + done) + CHUNKED_END
        self.tail_usage = _http_chunk(finish + USAGE_FRAME + done) + CHUNKED_END
        self.whole_plain = SSE_HEAD + self.first + b"".join(self.middle) + self.tail_plain
        self.whole_usage = SSE_HEAD + self.first + b"".join(self.middle) + self.tail_usage
        self.issued = 0

    # --- HTTP ------------------------------------------------------------------------

    def handle(self, sock: socket.socket, address: object) -> None:
        self.connections += 1
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buf = b""
        try:
            while True:
                end = buf.find(b"\r\n\r\n")
                while end < 0:
                    data = sock.recv(65536)
                    if not data:
                        return
                    buf += data
                    end = buf.find(b"\r\n\r\n")
                head = buf[:end]
                buf = buf[end + 4 :]
                lines = head.split(b"\r\n")
                parts = lines[0].split(b" ")
                if len(parts) < 3:
                    sock.sendall(BAD_REQUEST)
                    return
                method, path = parts[0], parts[1]
                length, close, chunked = 0, parts[2] == b"HTTP/1.0", False
                for line in lines[1:]:
                    name, _, value = line.partition(b":")
                    name = name.strip().lower()
                    if name == b"content-length":
                        length = int(value)
                    elif name == b"connection":
                        value = value.strip().lower()
                        close = value == b"close" or (close and value != b"keep-alive")
                    elif name == b"transfer-encoding" and b"chunked" in value.lower():
                        chunked = True
                if chunked:
                    body, buf = self._read_chunked(sock, buf)
                    if body is None:
                        return
                else:
                    while len(buf) < length:
                        data = sock.recv(max(65536, length - len(buf)))
                        if not data:
                            return
                        buf += data
                    body, buf = buf[:length], buf[length:]
                if not self.dispatch(sock, method, path, body):
                    return
                if close:
                    return
        except OSError:
            return
        finally:
            sock.close()

    @staticmethod
    def _read_chunked(sock: socket.socket, buf: bytes) -> tuple[bytes | None, bytes]:
        body = b""
        while True:
            while b"\r\n" not in buf:
                data = sock.recv(65536)
                if not data:
                    return None, b""
                buf += data
            size_line, _, buf = buf.partition(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            while len(buf) < size + 2:
                data = sock.recv(65536)
                if not data:
                    return None, b""
                buf += data
            body, buf = body + buf[:size], buf[size + 2 :]
            if size == 0:
                return body, buf

    def dispatch(self, sock: socket.socket, method: bytes, path: bytes, body: bytes) -> bool:
        """Answer one request; False when the connection should close."""
        path = path.split(b"?", 1)[0]
        if path.endswith(b"/chat/completions") and method == b"POST":
            self.chat_requests += 1
            compact = body.replace(b" ", b"")
            if b'"stream":true' in compact:
                usage = b'"include_usage":true' in compact
                if b'"model":"%s"' % BURST_MODEL.encode() in compact:
                    self.stream_requests += 1
                    sock.sendall(self.whole_usage if usage else self.whole_plain)
                    return True
                return self.stream(sock, usage)
            sock.sendall(JSON_REPLY)
            return True
        if path == b"/api/v1/oauth2/token" and method == b"POST":
            self.refresh_calls += 1
            if self.refresh_delay:
                gevent.sleep(self.refresh_delay)
            self.issued += 1
            token = {
                "access_token": f"tok-bench-{self.issued}",
                "token_type": "Bearer",
                "expires_in": 3600,
                "refresh_token": f"refresh-bench-{self.issued}",
            }
            sock.sendall(_response("200 OK", "application/json", json.dumps(token).encode()))
            return True
        if path == b"/stats":
            stats = {
                "refresh_calls": self.refresh_calls,
                "chat_requests": self.chat_requests,
                "stream_requests": self.stream_requests,
                "open_streams": self.open_streams,
                "max_open_streams": self.max_open_streams,
                "connections": self.connections,
            }
            sock.sendall(_response("200 OK", "application/json", json.dumps(stats).encode()))
            return True
        if path == b"/release" and method == b"POST":
            self.released.set()
            sock.sendall(_response("200 OK", "application/json", b'{"held":false}'))
            return True
        if path == b"/hold" and method == b"POST":
            self.released.clear()
            sock.sendall(_response("200 OK", "application/json", b'{"held":true}'))
            return True
        if path == b"/health":
            sock.sendall(_response("200 OK", "application/json", b'{"status":"ok"}'))
            return True
        sock.sendall(NOT_FOUND)
        return True

    def stream(self, sock: socket.socket, usage: bool) -> bool:
        self.stream_requests += 1
        if not self.chunk_delay and self.released.is_set():
            sock.sendall(self.whole_usage if usage else self.whole_plain)
            return True
        self.open_streams += 1
        self.max_open_streams = max(self.max_open_streams, self.open_streams)
        try:
            sock.sendall(SSE_HEAD + self.first)
            if not self.released.is_set():
                self.released.wait()
            for chunk in self.middle:
                if self.chunk_delay:
                    gevent.sleep(self.chunk_delay)
                sock.sendall(chunk)
            sock.sendall(self.tail_usage if usage else self.tail_plain)
        finally:
            self.open_streams -= 1
        return True


def raise_fd_limit(wanted: int = 65536) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = min(hard, max(soft, wanted)) if hard != resource.RLIM_INFINITY else max(soft, wanted)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--chunks", type=int, default=20, help="content chunks per stream")
    parser.add_argument(
        "--chunk-delay", type=float, default=0.0, help="seconds between content chunks"
    )
    parser.add_argument(
        "--hold",
        action="store_true",
        help="start held: streams wait after their first content chunk until POST /release",
    )
    parser.add_argument(
        "--refresh-delay", type=float, default=0.1, help="seconds the token endpoint takes"
    )
    args = parser.parse_args(argv)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        parser.error("the fake upstream serves loopback only")
    raise_fd_limit()
    fake = FakeUpstream(args.chunks, args.chunk_delay, args.hold, args.refresh_delay)
    server = StreamServer((args.host, args.port), fake.handle, backlog=4096)
    server.init_socket()
    server.start()
    print(f"listening {server.server_port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
