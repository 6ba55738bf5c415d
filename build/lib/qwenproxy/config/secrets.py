"""The proxy's own secrets in its settings: the credentials inside a URL (one reading, for the
upstream proxy, the secrets to hide and the doctor's masked display), the upstream proxy's
address, and the non-secret id by which the ledger, logs and reports name a key.
`KnownSecrets` is the one matcher of those secrets (and the Qwen OAuth tokens), shared by
the prompt redactor and the log filter: built at start and again on refresh, so a log call
never reads a file."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from urllib.parse import unquote

from qwenproxy.config.values import ConfigError


@dataclass(frozen=True)
class ProxyAddress:
    """An HTTP proxy's address and (URL-decoded) credentials."""

    host: str
    port: int
    username: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)


def split_credentials(url: str) -> tuple[str, str | None, str]:
    """(`scheme://` or "", the credentials as written or None, the rest) of a URL such
    as `http://user:password@host:port/path`. The credentials are what comes before the
    last `@` (a password may hold `#`, `?` or `/`). The one reading of a URL's
    credentials: the proxy settings, the secrets to hide, and the doctor's display."""
    scheme, sep, rest = url.strip().partition("://")
    if not sep:
        scheme, rest = "", url.strip()
    userinfo, at, hostpart = rest.rpartition("@")
    return (f"{scheme}{sep}", userinfo if at else None, hostpart)


def url_secrets(url: str) -> tuple[str, ...]:
    """The secret in a URL's credentials, as written and as sent (URL-decoded): its
    password, or a user name alone (which some proxies take as a token)."""
    userinfo = split_credentials(url)[1]
    if not userinfo:
        return ()
    secret = userinfo.partition(":")[2] or userinfo
    return tuple(dict.fromkeys((secret, unquote(secret))))


def split_proxy_url(url: str) -> ProxyAddress:
    """`[http://][user[:password]@]host[:port][/]`, split once (split_credentials); the
    port defaults to 80. ValueError messages never repeat any part of `url`."""
    prefix, userinfo, hostport = split_credentials(url)
    scheme = prefix[:-3] or "http"
    if scheme.lower() != "http":
        raise ValueError(
            f"only http:// proxies are supported (HTTPS goes through them), not {scheme}://"
        )
    hostport = hostport.split("/", 1)[0]
    if hostport.startswith("["):
        host, bracket, tail = hostport[1:].partition("]")
        if not bracket or (tail and not tail.startswith(":")):
            raise ValueError("expected http://[ipv6]:port")
        port_text = tail[1:]
    else:
        host, _, port_text = hostport.partition(":")
        if ":" in port_text:
            raise ValueError("an IPv6 proxy address goes in brackets: http://[ipv6]:port")
    if not host:
        raise ValueError("expected http://host:port")
    if port_text and not (port_text.isdigit() and 1 <= int(port_text) <= 65535):
        raise ValueError("the proxy's port must be a number from 1 to 65535")
    username = password = None
    if userinfo is not None:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user)
        password = unquote(secret) if colon else None
    return ProxyAddress(host, int(port_text or 80), username, password)


def parse_proxy_url(name: str, raw: str) -> str:
    """`http://[user:password@]host[:port]`: an HTTP proxy for upstream calls."""
    value = raw.strip()
    if not value:
        return ""
    try:
        split_proxy_url(value)
    except ValueError as exc:
        raise ConfigError(name, str(exc)) from None
    return value if "://" in value else f"http://{value}"


def key_id(secret: str) -> str:
    """The stable, non-secret id of a key (a client key, an upstream key, a login's file):
    12 hex digits of its SHA-256. The ledger, logs and reports name keys by it."""
    return hashlib.sha256(secret.encode()).hexdigest()[:12]


# --- the matcher of the proxy's secrets ------------------------------------------------

# A configured secret shorter than this is not searched for, in prompts or in logs: so
# short a string turns up in ordinary text (and is no secret worth the name).
MIN_KNOWN_SECRET = 8


class KnownSecrets:
    """The secrets `source` yields, at least MIN_KNOWN_SECRET long, longest first (so
    that a secret which contains another is replaced whole)."""

    def __init__(self, source: Callable[[], Iterable[str]] = tuple) -> None:
        self._source = source
        self._secrets: tuple[str, ...] = ()
        self.refresh()

    def refresh(self) -> None:
        """Read the source again (once, here; never while matching)."""
        found = {s for s in self._source() if isinstance(s, str) and len(s) >= MIN_KNOWN_SECRET}
        self._secrets = tuple(sorted(found, key=lambda s: (-len(s), s)))  # one assignment

    @property
    def secrets(self) -> tuple[str, ...]:
        return self._secrets

    @property
    def shortest(self) -> int | None:
        """The length of the shortest secret held, or None when there are none."""
        secrets = self._secrets
        return len(secrets[-1]) if secrets else None

    def replace(self, text: str, placeholder: str) -> tuple[str, int]:
        """(text with every known secret replaced by `placeholder`, how many were)."""
        total = 0
        for secret in self._secrets:
            if secret in text:
                total += text.count(secret)
                text = text.replace(secret, placeholder)
        return text, total
