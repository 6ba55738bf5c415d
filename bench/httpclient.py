"""A minimal HTTP/1.1 keep-alive client over raw sockets, the same for every system measured
(fake, qwenproxy, peers): prebuilt request bytes, Content-Length and chunked bodies, and
SSE frames timestamped as they arrive. Works with stdlib sockets or gevent's."""

from __future__ import annotations

import socket as std_socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import Any

CHAT_PATH = "/v1/chat/completions"


def build_request(
    host: str,
    port: int,
    method: str,
    path: str,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}"]
    for name, value in (headers or {}).items():
        lines.append(f"{name}: {value}")
    if body or method in ("POST", "PUT"):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


@dataclass
class Target:
    """One system under test: where it listens and how a client authenticates."""

    name: str
    host: str
    port: int
    api_key: str
    model: str = "qwen3-coder-plus"

    def chat_request(self, body: bytes) -> bytes:
        return build_request(
            self.host,
            self.port,
            "POST",
            CHAT_PATH,
            body,
            {"Content-Type": "application/json", "Authorization": f"Bearer {self.api_key}"},
        )

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


class HTTPError(Exception):
    pass


class Connection:
    """One keep-alive connection. `socket_module` is `socket` or `gevent.socket`."""

    def __init__(
        self,
        host: str,
        port: int,
        timeout: float = 60.0,
        socket_module: ModuleType = std_socket,
    ) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        self._socket_module = socket_module
        self.sock: Any = None
        self.buf = b""
        self.recv_at = 0.0  # when the last bytes arrived

    def connect(self) -> None:
        self.close()
        sock = self._socket_module.create_connection((self.host, self.port), timeout=self.timeout)
        sock.setsockopt(std_socket.IPPROTO_TCP, std_socket.TCP_NODELAY, 1)
        self.sock, self.buf = sock, b""

    def close(self) -> None:
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass
        self.sock = None

    def _recv(self) -> bytes:
        data = self.sock.recv(262144)
        self.recv_at = time.perf_counter()
        if not data:
            raise HTTPError("connection closed by the server")
        return data

    def send(self, raw: bytes) -> None:
        if self.sock is None:
            self.connect()
        self.sock.sendall(raw)

    def read_head(self) -> tuple[int, dict[str, str]]:
        end = self.buf.find(b"\r\n\r\n")
        while end < 0:
            self.buf += self._recv()
            end = self.buf.find(b"\r\n\r\n")
        head, self.buf = self.buf[:end], self.buf[end + 4 :]
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        return status, headers

    def read_body(self, headers: dict[str, str]) -> bytes:
        if "chunked" in headers.get("transfer-encoding", "").lower():
            return b"".join(data for _, data in self._chunks())
        if "content-length" in headers:
            length = int(headers["content-length"])
            while len(self.buf) < length:
                self.buf += self._recv()
            body, self.buf = self.buf[:length], self.buf[length:]
            return body
        chunks = [self.buf]  # until the server closes
        self.buf = b""
        try:
            while True:
                chunks.append(self._recv())
        except HTTPError:
            pass
        self.close()
        return b"".join(chunks)

    def _chunks(self) -> Iterator[tuple[float, bytes]]:
        """(arrival time, payload) of each chunk of a chunked body, until the last one."""
        while True:
            line_end = self.buf.find(b"\r\n")
            while line_end < 0:
                self.buf += self._recv()
                line_end = self.buf.find(b"\r\n")
            size = int(self.buf[:line_end].split(b";", 1)[0], 16)
            need = line_end + 2 + size + 2
            while len(self.buf) < need:
                self.buf += self._recv()
            data = self.buf[line_end + 2 : line_end + 2 + size]
            self.buf = self.buf[need:]
            if size == 0:
                return
            yield self.recv_at, data

    def _exchange(self, raw: bytes) -> tuple[int, dict[str, str]]:
        """Send a prebuilt request and read the answer's head (reconnects once if the
        kept-alive connection was closed before the request went out)."""
        for attempt in (0, 1):
            try:
                self.send(raw)
                return self.read_head()
            except (HTTPError, OSError):
                self.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def request(self, raw: bytes) -> tuple[int, dict[str, str], bytes]:
        """Send a prebuilt request and read the whole answer."""
        status, headers = self._exchange(raw)
        body = self.read_body(headers)
        if headers.get("connection", "").lower() == "close":
            self.close()
        return status, headers, body

    def stream(self, raw: bytes) -> tuple[int, dict[str, str], Iterator[tuple[float, bytes]]]:
        """Send a prebuilt request; (status, headers, iterator of (arrival time, SSE frame))."""
        status, headers = self._exchange(raw)
        return status, headers, self._frames(headers)

    def _frames(self, headers: dict[str, str]) -> Iterator[tuple[float, bytes]]:
        pending = b""
        if "chunked" in headers.get("transfer-encoding", "").lower():
            pieces: Iterator[tuple[float, bytes]] = self._chunks()
        else:
            pieces = self._until_close()
        for arrived, data in pieces:
            pending += data
            if b"\r" in pending:
                pending = pending.replace(b"\r\n", b"\n")
            while True:
                end = pending.find(b"\n\n")
                if end < 0:
                    break
                frame, pending = pending[:end], pending[end + 2 :]
                if frame:
                    yield arrived, frame
        if pending.strip():
            yield time.perf_counter(), pending.strip()
        if headers.get("connection", "").lower() == "close":
            self.close()

    def _until_close(self) -> Iterator[tuple[float, bytes]]:
        if self.buf:
            data, self.buf = self.buf, b""
            yield self.recv_at, data
        while True:
            try:
                data = self._recv()
            except HTTPError:
                self.close()
                return
            yield time.perf_counter(), data


def frame_data(frame: bytes) -> bytes | None:
    """The `data:` payload of an SSE frame; None for comments (`: ping`) and other fields."""
    data = []
    for line in frame.split(b"\n"):
        if line.startswith(b"data:"):
            data.append(line[5:].lstrip(b" ") if line[5:6] == b" " else line[5:])
    return b"\n".join(data) if data else None


def simple_get(host: str, port: int, path: str, timeout: float = 2.0) -> tuple[int, bytes]:
    conn = Connection(host, port, timeout)
    try:
        status, _, body = conn.request(
            build_request(host, port, "GET", path, headers={"Connection": "close"})
        )
        return status, body
    finally:
        conn.close()


def simple_post(
    host: str, port: int, path: str, body: bytes = b"", timeout: float = 5.0
) -> tuple[int, bytes]:
    conn = Connection(host, port, timeout)
    try:
        status, _, answer = conn.request(
            build_request(host, port, "POST", path, body, {"Connection": "close"})
        )
        return status, answer
    finally:
        conn.close()
