"""The upstream proxy (upstream/http/tunnel.py) through the transport: CONNECT tunnels
to HTTPS upstreams with the proxy's credentials, absolute-form requests for plain-http
upstreams, 407s as clear errors, and which hosts bypass the proxy."""

from __future__ import annotations

import base64
import socket
import threading

import pytest
import requests

from qwenproxy.upstream.http import transport
from qwenproxy.upstream.http.transport import LeanAdapter
from tests.upstream.http.raw_server import (
    UPSTREAM_NAME,
    RawServer,
    answer_forever,
    json_answer,
    tls_server_context,
)


def via_name(url: str) -> str:
    return url.replace("://localhost:", f"://{UPSTREAM_NAME}:")


class TunnelingProxy:
    """A loopback HTTP proxy that answers CONNECT (optionally asking for credentials) and
    relays bytes both ways; it records each CONNECT request's head. It resolves
    UPSTREAM_NAME to 127.0.0.1, so that upstream is not "loopback" to the client."""

    def __init__(self, credentials: str | None = None) -> None:
        self.credentials = credentials
        self.connects: list[bytes] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        auth = f"{self.credentials}@" if self.credentials else ""
        return f"http://{auth}127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._tunnel, args=(client,), daemon=True).start()

    def _tunnel(self, client: socket.socket) -> None:
        head = b""
        while b"\r\n\r\n" not in head:
            piece = client.recv(4096)
            if not piece:
                client.close()
                return
            head += piece
        self.connects.append(head)
        if self.credentials:
            wanted = "Basic " + base64.b64encode(self.credentials.encode()).decode()
            if f"Proxy-Authorization: {wanted}".encode() not in head:
                client.sendall(b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n")
                client.close()
                return
        target = head.split(b" ")[1].decode()
        host, _, port = target.rpartition(":")
        address = "127.0.0.1" if host == UPSTREAM_NAME else host
        upstream = socket.create_connection((address, int(port)))
        client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
        back = threading.Thread(target=self._pipe, args=(upstream, client), daemon=True)
        back.start()
        self._pipe(client, upstream)
        back.join(10)
        client.close()
        upstream.close()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        for sock in (source, sink):  # one side is done: end the other direction too
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        self.listener.close()


def proxied_session(proxy: TunnelingProxy, bundle: str, no_proxy=()) -> requests.Session:
    session = requests.Session()
    session.trust_env = False
    adapter = LeanAdapter(proxy=proxy.url, no_proxy=no_proxy, ca_bundle=bundle)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    return session


@pytest.fixture
def bundle(ca, tmp_path) -> str:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


def test_https_upstreams_go_through_the_proxy_with_its_credentials(serve, ca, bundle):
    server = serve(answer_forever(json_answer(b'{"via": "tunnel"}')), tls=tls_server_context(ca))
    proxy = TunnelingProxy("corp user:s3cret pass")
    with proxied_session(proxy, bundle) as http:
        for _ in range(2):  # the CA bundle is the adapter's default: no verify= needed
            answer = http.post(via_name(server.url), data=b"{}", timeout=(5, 5))
            assert answer.json() == {"via": "tunnel"}
    proxy.close()
    assert len(proxy.connects) == 1  # one tunnel, kept alive for both requests
    connect = proxy.connects[0]
    assert connect.startswith(f"CONNECT {UPSTREAM_NAME}:{server.port} HTTP/1.1\r\n".encode())


def test_a_proxy_asking_for_credentials_is_a_clear_error_without_them(serve, ca, bundle):
    server = serve(answer_forever(json_answer(b"{}")), tls=tls_server_context(ca))
    proxy = TunnelingProxy("user:right")
    wrong = TunnelingProxy.__new__(TunnelingProxy)
    wrong.credentials, wrong.port = "user:wrong-pass", proxy.port
    with proxied_session(wrong, bundle) as http:
        with pytest.raises(requests.exceptions.ProxyError) as caught:
            http.post(via_name(server.url), data=b"{}", timeout=(5, 5))
    proxy.close()
    assert "407" in str(caught.value) and "UPSTREAM_PROXY" in str(caught.value)
    assert "wrong-pass" not in str(caught.value)
    assert server.connections == 0


def test_no_proxy_hosts_and_plain_http_go_direct(serve, ca, bundle):
    tls_server = serve(answer_forever(json_answer(b"{}")), tls=tls_server_context(ca))
    plain = serve(answer_forever(json_answer(b"{}")))
    proxy = TunnelingProxy()
    with proxied_session(proxy, bundle) as http:
        http.post(tls_server.url, data=b"{}", timeout=(5, 5))  # localhost: never proxied
        http.post(plain.url, data=b"{}", timeout=(5, 5))
    proxy.close()
    assert proxy.connects == []
    assert tls_server.connections == 1
    assert plain.connections == 1


class ForwardProxy(RawServer):
    """A loopback forward proxy for plain http: it takes absolute-form requests (asking
    for credentials when it has some), records them, and forwards each to UPSTREAM_NAME's
    port on 127.0.0.1 in origin form over one upstream connection per client one."""

    def __init__(self, credentials: str | None = None) -> None:
        self.credentials = credentials
        super().__init__(self._forward)

    def _forward(self, server: RawServer, client: socket.socket) -> None:
        upstream = None
        while (request := self.read_request(client)) is not None:
            if self.credentials:
                wanted = "Basic " + base64.b64encode(self.credentials.encode()).decode()
                if f"Proxy-Authorization: {wanted}\r\n".encode() not in request:
                    client.sendall(
                        b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n\r\n"
                    )
                    continue
            head, _, body = request.partition(b"\r\n\r\n")
            line, _, rest = head.partition(b"\r\n")
            method, target, version = line.split(b" ")
            prefix = f"http://{UPSTREAM_NAME}:".encode()
            assert target.startswith(prefix), target
            port, _, path = target[len(prefix) :].partition(b"/")
            kept = b"".join(
                h + b"\r\n"
                for h in rest.split(b"\r\n")
                if not h.lower().startswith(b"proxy-authorization:")
            )
            if upstream is None:
                upstream = socket.create_connection(("127.0.0.1", int(port)))
            upstream.sendall(b"%s /%s %s\r\n%s\r\n%s" % (method, path, version, kept, body))
            client.sendall(self.read_answer(upstream))
        if upstream is not None:
            upstream.close()

    @staticmethod
    def read_answer(sock: socket.socket) -> bytes:
        """One Content-Length answer."""
        data = b""
        while b"\r\n\r\n" not in data:
            data += sock.recv(65536)
        head, _, body = data.partition(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        while len(body) < length:
            body += sock.recv(65536)
        return head + b"\r\n\r\n" + body


def forwarding_session(proxy: ForwardProxy, no_proxy=()) -> requests.Session:
    session = requests.Session()
    session.trust_env = False
    adapter = LeanAdapter(
        http_proxy=f"http://{proxy.credentials or 'x'}@127.0.0.1:{proxy.port}", no_proxy=no_proxy
    )
    session.mount("http://", adapter)
    return session


def test_plain_http_upstreams_go_through_the_http_proxy_in_absolute_form(serve):
    upstream = serve(answer_forever(json_answer(b'{"via": "forward"}')))
    proxy = ForwardProxy("corp user:s3cret")
    with forwarding_session(proxy) as http:
        for _ in range(2):
            answer = http.post(via_name(upstream.url), data=b'{"q": 1}', timeout=(5, 5))
            assert answer.json() == {"via": "forward"}
        http.post(upstream.url, data=b"{}", timeout=(5, 5))  # localhost: direct
    proxy.close()
    assert proxy.connections == 1  # kept alive, like any pooled connection
    target = f"POST http://{UPSTREAM_NAME}:{upstream.port}/v1/chat/completions HTTP/1.1\r\n"
    assert all(r.startswith(target.encode()) for r in proxy.requests)
    assert all(f"Host: {UPSTREAM_NAME}:{upstream.port}\r\n".encode() in r for r in proxy.requests)
    assert len(proxy.requests) == 2
    assert all(r.endswith(b'{"q": 1}') for r in upstream.requests[:2])
    assert all(b"Proxy-Authorization" not in r for r in upstream.requests)
    assert upstream.connections == 2  # one from the proxy, one direct


def test_an_http_proxy_asking_for_credentials_is_a_proxy_error_naming_the_setting(serve):
    upstream = serve(answer_forever(json_answer(b"{}")))
    proxy = ForwardProxy("user:right")
    wrong = ForwardProxy.__new__(ForwardProxy)
    wrong.credentials, wrong.port = "user:wrong-pass", proxy.port
    with forwarding_session(wrong) as http:
        with pytest.raises(requests.exceptions.ProxyError) as caught:
            http.post(via_name(upstream.url), data=b"{}", timeout=(5, 5))
    proxy.close()
    assert "407" in str(caught.value) and "UPSTREAM_HTTP_PROXY" in str(caught.value)
    assert "wrong-pass" not in str(caught.value)
    assert upstream.connections == 0


@pytest.mark.parametrize(
    ("host", "no_proxy", "proxied"),
    [
        ("dashscope.aliyuncs.com", (), True),
        ("127.0.0.1", (), False),
        ("localhost", (), False),
        ("::1", (), False),
        ("dashscope.aliyuncs.com", (".aliyuncs.com",), False),
        ("dashscope.aliyuncs.com", ("aliyuncs.com",), False),
        ("notaliyuncs.com", ("aliyuncs.com",), True),
        ("10.1.2.3", ("10.0.0.0/8",), False),
        ("11.1.2.3", ("10.0.0.0/8",), True),
        ("openrouter.ai", ("*",), False),
        ("::ffff:127.0.0.1", (), False),
        ("fd00::1", ("fd00::1",), False),
        ("api.internal", (".internal",), False),
    ],
)
def test_which_hosts_the_proxy_serves(host, no_proxy, proxied):
    proxy = transport.TunnelProxy.from_url("http://proxy.corp:3128", no_proxy)
    assert proxy.applies_to(host) is proxied
