"""Who may use the proxy: client keys (constant-time compare) or, without keys, loopback.

Keys in PROXY_API_KEY are the admin keys; named keys (edge/client_keys.py) authenticate
too, as callers that see only their own usage. Without any key configured, loopback
clients are served (as admin); once named keys exist, every request needs a key. Returns
a short, stable client id derived from the key (a hash, never the key itself).
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from qwenproxy.config.secrets import key_id
from qwenproxy.errors import AuthenticationError, PermissionDeniedError

log = logging.getLogger(__name__)

LOCAL_CLIENT_ID = "local"
# Where a reverse proxy that may speak for the client connects from: this machine, or a
# private network — a platform's router reaches its instances over one (Heroku, Render,
# Railway, Fly), as does a load balancer in front of a VM. A direct client from the
# internet never has such an address.
_ROUTER_NETWORKS = tuple(
    ipaddress.ip_network(n)
    for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7")
)




def _is_loopback(address: str | None) -> bool:
    if not address:
        return False
    try:
        return ipaddress.ip_address(address.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def _is_router(address: str | None) -> bool:
    """Whether a peer may be a reverse proxy or a platform's router (see _ROUTER_NETWORKS)."""
    if not address:
        return False
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback or any(ip in network for network in _ROUTER_NETWORKS)


@dataclass(frozen=True)
class Caller:
    """Who a request comes from: the ledger's client id and, for a named key, its record
    (edge/client_keys.ClientKey); admin keys and local callers have none."""

    client_id: str
    client_key: Any = None

    @property
    def admin(self) -> bool:
        return self.client_key is None


class ClientAccess:
    def __init__(
        self,
        keys: tuple[str, ...],
        trust_proxy_headers: bool = False,
        named: Any = None,  # edge/client_keys.ClientKeyStore, or None
    ) -> None:
        self._keys = tuple(k.encode() for k in keys)
        self._ids = {k: key_id(k) for k in keys}
        self._admin_ids = frozenset(self._ids.values())
        self._trust_proxy_headers = trust_proxy_headers
        self._told_about_router = False
        self.named = named

    @property
    def enabled(self) -> bool:
        """Whether requests need a key (admin keys set, or named keys exist)."""
        return bool(self._keys) or bool(self.named is not None and self.named.any_live)

    @property
    def has_admin_keys(self) -> bool:
        return bool(self._keys)

    @property
    def trust_proxy_headers(self) -> bool:
        return self._trust_proxy_headers

    def caller_for_id(self, client_id: str) -> Caller | None:
        """The caller of a live key with this id (a dashboard session holds only the id)."""
        if client_id in self._admin_ids:
            return Caller(client_id)
        record = self.named.by_key_id(client_id) if self.named is not None else None
        return None if record is None else Caller(record.key_id, record)

    def client_address(self, remote_addr: str | None, headers: Mapping[str, str]) -> str | None:
        """The client's address. With TRUST_PROXY_HEADERS, a request that a reverse proxy
        or platform router (a peer on loopback or a private network) forwarded comes from
        the last `X-Forwarded-For` entry: the one that router added, whatever the client
        wrote before it."""
        forwarded = headers.get("X-Forwarded-For") or headers.get("Forwarded")
        if not forwarded:
            return remote_addr
        if self._trust_proxy_headers and _is_router(remote_addr):
            return forwarded.rsplit(",", 1)[-1].strip()
        if not self._trust_proxy_headers and not self._told_about_router:
            self._told_about_router = True  # once per worker
            log.info(
                "requests arrive with X-Forwarded-For (through a reverse proxy or a "
                "platform's router?); set TRUST_PROXY_HEADERS=true to take the client address "
                "from it"
            )
        # A forwarded request we do not trust: its real client is not known to be local.
        return None

    def check(self, headers: Mapping[str, str], remote_addr: str | None) -> str:
        """The client id of an allowed request; raises 401/403 otherwise."""
        return self.identify(headers, remote_addr).client_id

    def identify(self, headers: Mapping[str, str], remote_addr: str | None) -> Caller:
        """The caller of an allowed request; raises 401/403 otherwise."""
        if not self.enabled:
            # Local means this machine end to end: a request that came through a router on
            # another machine is not local, whatever address the header names.
            if (
                _is_loopback(remote_addr)
                and _is_loopback(self.client_address(remote_addr, headers))
                and _local_page(headers)
            ):
                return Caller(LOCAL_CLIENT_ID)
            raise PermissionDeniedError(
                "This proxy serves only local clients because no client key is set (requests "
                "from web pages on other sites are refused too). Set PROXY_API_KEY on the proxy "
                "and send it as `Authorization: Bearer <key>`."
            )
        presented = _presented_key(headers)
        if presented is None:
            raise AuthenticationError(
                "Missing API key: send the proxy key as `Authorization: Bearer <key>` "
                "or `x-api-key: <key>`."
            )
        candidate = presented.encode()
        match = None
        for key in self._keys:  # compare against every key: no early exit on a match
            if hmac.compare_digest(candidate, key):
                match = key
        if match is not None:
            return Caller(self._ids[match.decode()])
        record = self.named.lookup(presented) if self.named is not None else None
        if record is None:
            raise AuthenticationError("Invalid API key for this proxy.")
        return Caller(record.key_id, record)


def _host_is_local(value: str) -> bool:
    host = value.strip().lower()
    if host.startswith("["):  # [::1]:8000
        host = host[1 : host.find("]")] if "]" in host else host
    elif host.count(":") == 1:
        host = host.split(":", 1)[0]
    return (
        host in ("localhost", "127.0.0.1", "::1")
        or host.endswith(".localhost")
        or (_is_loopback(host))
    )


def _local_page(headers: Mapping[str, str]) -> bool:
    """Without keys, only local callers: refuse browsers on other sites (an `Origin` or a
    cross-site fetch) and DNS rebinding (a `Host` that is not a loopback name)."""
    host = headers.get("Host")
    if host and not _host_is_local(host):
        return False
    origin = headers.get("Origin")
    if origin is not None:
        authority = origin.split("://", 1)[-1].split("/", 1)[0]
        if origin == "null" or not _host_is_local(authority):
            return False
    return headers.get("Sec-Fetch-Site", "same-origin") in ("same-origin", "none")


def presented_key(headers: Mapping[str, str]) -> str | None:
    """The key a request sends (`Authorization: Bearer` or `x-api-key`), or None."""
    return _presented_key(headers)


def _presented_key(headers: Mapping[str, str]) -> str | None:
    authorization = headers.get("Authorization")
    if authorization:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    api_key = headers.get("x-api-key")
    if api_key and api_key.strip():
        return api_key.strip()
    return None
