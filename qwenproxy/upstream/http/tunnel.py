"""The HTTP proxy the upstream transport (upstream/http/transport.py) may reach upstreams
through: `CONNECT` tunnels to HTTPS upstreams, absolute-form requests for plain-http ones,
Basic credentials from the proxy URL, and which hosts bypass it (loopback, NO_PROXY).
"""

from __future__ import annotations

import base64
import ipaddress
import socket

import requests

from qwenproxy.config.secrets import split_proxy_url
from qwenproxy.upstream.http.heads import read_head


class TunnelProxy:
    """An HTTP proxy: it opens `CONNECT` tunnels to HTTPS upstreams, and takes plain-http
    requests in absolute form. `setting` names the variable it came from (for errors)."""

    def __init__(
        self,
        host: str,
        port: int,
        authorization: str | None,
        bypass: tuple[str, ...],
        setting: str = "UPSTREAM_PROXY",
    ):
        self.host = host
        self.port = port
        self.authorization = authorization  # "Basic …": never logged, never in an error
        self._bypass = bypass
        self._setting = setting

    @classmethod
    def from_url(
        cls, url: str, no_proxy: tuple[str, ...] = (), setting: str = "UPSTREAM_PROXY"
    ) -> TunnelProxy:
        address = split_proxy_url(url)  # the same reading config validated
        authorization = None
        if address.username is not None:
            pair = f"{address.username}:{address.password or ''}"
            authorization = "Basic " + base64.b64encode(pair.encode()).decode()
        return cls(address.host, address.port, authorization, no_proxy, setting)

    def wants_credentials(self) -> requests.exceptions.ProxyError:
        return requests.exceptions.ProxyError(
            f"the upstream proxy {self.host}:{self.port} wants credentials (HTTP 407): "
            f"put them in {self._setting} as http://user:password@host:port"
        )

    def applies_to(self, host: str) -> bool:
        """False for loopback hosts and for hosts NO_PROXY names (host, .domain, IP,
        network, or `*` for all)."""
        host = host.lower().rstrip(".").strip("[]")
        if host == "localhost" or host.endswith(".localhost"):
            return False
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            address = None
        if address is not None:
            mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:127.0.0.1
            if address.is_loopback or (mapped is not None and mapped.is_loopback):
                return False
        for entry in self._bypass:
            if entry == "*":
                return False
            name = entry.lstrip(".").rstrip(".")
            if address is not None:
                try:
                    if address in ipaddress.ip_network(name, strict=False):
                        return False
                except ValueError:
                    pass
            elif host == name or host.endswith("." + name):
                return False
        return True

    def open_tunnel(self, sock: socket.socket, host: str, port: int) -> None:
        """Ask the proxy for a tunnel to host:port on `sock` (a fresh connection to it)."""
        target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        lines = [f"CONNECT {target} HTTP/1.1", f"Host: {target}"]
        if self.authorization:
            lines.append(f"Proxy-Authorization: {self.authorization}")
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        try:
            answer = read_head(sock, method="CONNECT")
        except (OSError, ValueError) as exc:
            if isinstance(exc, TimeoutError):
                raise
            raise requests.exceptions.ProxyError(
                f"the upstream proxy {self.host}:{self.port} did not open a tunnel to {target}"
            ) from None
        if answer.status == 407:
            raise self.wants_credentials()
        if not 200 <= answer.status < 300 or answer.body or answer.spoiled:
            raise requests.exceptions.ProxyError(
                f"the upstream proxy {self.host}:{self.port} refused a tunnel to {target} "
                f"(HTTP {answer.status} {answer.reason})"
            )
