"""How a backend authenticates one attempt: `UpstreamAuth` (where to send it, with which
headers), an API key sent as a bearer token, or qwen-code's OAuth tokens (refreshed as
needed, with qwen-code's own request headers), and what to do when the upstream refuses
them."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol

from qwenproxy.config.secrets import key_id as key_id_of
from qwenproxy.errors import (
    OAuthAccessEndedError,
    ProxyError,
    upstream_error_for_status,
)
from qwenproxy.upstream.catalogue import key_backends_hint
from qwenproxy.upstream.qwen_oauth.tokens import QwenTokenManager

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class UpstreamAuth:
    """Where to send one attempt and the headers that authenticate it."""

    api_base: str
    headers: dict[str, str]
    token: str


class Credentials(Protocol):
    """How a backend authenticates; implementations hold keys or OAuth tokens."""

    def auth(self) -> UpstreamAuth: ...

    def after_rejection(self, rejected: UpstreamAuth) -> UpstreamAuth | None:
        """The upstream said 401/403 to `rejected`: new auth to retry with, or None."""
        ...

    def rejected_again(self, status: int, message: str) -> ProxyError:
        """The retry was refused too: the error the client should see."""
        ...


class StaticKeyCredentials:
    """An API key sent as a bearer token to one fixed base URL."""

    def __init__(
        self, api_base: str, api_key: str | None, extra_headers: dict[str, str] | None = None
    ) -> None:
        headers = dict(extra_headers or {})
        if api_key:  # keyless upstreams (a local vLLM, say) get no Authorization header
            headers["Authorization"] = f"Bearer {api_key}"
        self._auth = UpstreamAuth(api_base.rstrip("/"), headers, api_key or "")
        self.key_id = key_id_of(api_key) if api_key else "keyless"  # never the key itself

    def auth(self) -> UpstreamAuth:
        return self._auth

    def after_rejection(self, rejected: UpstreamAuth) -> UpstreamAuth | None:
        return None

    def rejected_again(self, status: int, message: str) -> ProxyError:
        return upstream_error_for_status(status, message)


class QwenOAuthCredentials:
    """qwen-code OAuth tokens, refreshed as needed, with qwen-code's request headers."""

    def __init__(self, tokens: QwenTokenManager, user_agent: str) -> None:
        self.tokens = tokens
        self.key_id = key_id_of(str(tokens.file.path))  # the login's file, never a token
        self._headers = {
            "User-Agent": user_agent,
            "X-DashScope-UserAgent": user_agent,
            "X-DashScope-AuthType": "qwen-oauth",
            "X-DashScope-CacheControl": "enable",
        }

    def _auth(self, token: str, api_base: str) -> UpstreamAuth:
        return UpstreamAuth(api_base, {"Authorization": f"Bearer {token}", **self._headers}, token)

    def auth(self) -> UpstreamAuth:
        access = self.tokens.access()
        return self._auth(access.token, access.api_base)

    def after_rejection(self, rejected: UpstreamAuth) -> UpstreamAuth | None:
        access = self.tokens.refresh_after_rejection(rejected.token)
        return self._auth(access.token, access.api_base)

    def rejected_again(self, status: int, message: str) -> ProxyError:
        return OAuthAccessEndedError(
            f"Qwen refused the OAuth account in {self.tokens.file.path} (HTTP {status}) even "
            "with a freshly refreshed token: this account's Qwen OAuth access has ended "
            "(Qwen's free OAuth tier was discontinued on 2026-04-15). Use an API key "
            f"backend instead and set LLM_BACKEND to it — {key_backends_hint()}. "
            "`python -m qwenproxy doctor` checks the result."
        )
