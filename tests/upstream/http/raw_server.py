"""What the upstream stack's tests share: `RawServer`, a loopback server that answers
with exact bytes (TLS optional), the `serve`, `http` and `ca` fixtures (registered in
tests/conftest.py) and helpers that build answers."""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Callable

import pytest
import requests
import trustme

from qwenproxy.upstream.http.transport import LeanAdapter

UPSTREAM_NAME = "upstream.test"  # only the test proxies resolve it (to 127.0.0.1)

Handler = Callable[["RawServer", socket.socket], None]


class RawServer:
    """A loopback TCP server that runs `handle(server, sock)` for each connection."""

    def __init__(self, handle: Handler, tls: ssl.SSLContext | None = None) -> None:
        self.handle = handle
        self.tls = tls
        self.connections = 0
        self.requests: list[bytes] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self._socks: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://localhost:{self.port}/v1/chat/completions"

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            if self.tls:
                try:
                    sock = self.tls.wrap_socket(sock, server_side=True)
                except (ssl.SSLError, OSError):
                    sock.close()
                    continue
            self._socks.append(sock)
            threading.Thread(target=self._run, args=(sock,), daemon=True).start()

    def _run(self, sock: socket.socket) -> None:
        try:
            self.handle(self, sock)
        except OSError:
            pass

    def read_request(self, sock: socket.socket) -> bytes | None:
        """One request (head + Content-Length body), or None when the client hung up."""
        data = b""
        while b"\r\n\r\n" not in data:
            piece = sock.recv(65536)
            if not piece:
                return None
            data += piece
        head, _, body = data.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        while len(body) < length:
            body += sock.recv(65536)
        self.requests.append(head + b"\r\n\r\n" + body)
        return head + b"\r\n\r\n" + body

    def close(self) -> None:
        self.listener.close()
        for sock in self._socks:
            try:
                sock.close()
            except OSError:
                pass


@pytest.fixture
def serve():
    servers: list[RawServer] = []

    def start(handle: Handler, tls: ssl.SSLContext | None = None) -> RawServer:
        server = RawServer(handle, tls)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


@pytest.fixture
def http():
    session = requests.Session()
    session.trust_env = False
    adapter = LeanAdapter(max_idle_per_host=4)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    yield session
    session.close()


def answer_forever(*answers: bytes) -> Handler:
    """Answer each request on a connection with the next of `answers` (the last repeats)."""

    def handle(server: RawServer, sock: socket.socket) -> None:
        index = 0
        while server.read_request(sock) is not None:
            sock.sendall(answers[min(index, len(answers) - 1)])
            index += 1

    return handle


def json_answer(body: bytes, extra: str = "") -> bytes:
    return (
        f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n{extra}"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def chunked(*pieces: bytes) -> bytes:
    out = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces)
    return out + b"0\r\n\r\n"


OK = b"HTTP/1.1 200 OK\r\n"
CHUNKED = OK + b"Transfer-Encoding: chunked\r\n\r\n"


@pytest.fixture(scope="module")
def ca():
    return trustme.CA()


def tls_server_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", UPSTREAM_NAME).configure_cert(context)
    return context
