"""Upstream backends behind one interface: `complete`, `stream`, `models`.
`OpenAICompatibleBackend` speaks the OpenAI chat-completions wire format to any base URL
with some credentials; `QwenOAuthBackend` is that plus qwen-code's tokens and headers.
Upstream URLs come from configuration only, never from a request.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import orjson
import requests
from urllib3.exceptions import ReadTimeoutError  # how requests' own adapter reports one

from qwenproxy import __version__
from qwenproxy.config.secrets import key_id as key_id_of
from qwenproxy.errors import (
    OAuthAccessEndedError,
    ProxyError,
    RateLimitError,
    UpstreamError,
    UpstreamTimeoutError,
    upstream_error_for_status,
)
from qwenproxy.services.http1 import WAIT_CHECK_SECONDS, AnswerTooLarge
from qwenproxy.services.length_refusals import context_refusal
from qwenproxy.services.models import ModelCatalog, key_backends_hint
from qwenproxy.services.quota_answers import EXHAUSTED, RATE_LIMITED, classify
from qwenproxy.services.qwen_auth import QwenTokenManager
from qwenproxy.services.transport import ClosedWithoutAnswer, LeanAdapter
from qwenproxy.sse import SSEDecoder, SSEEvent

log = logging.getLogger(__name__)

MAX_ERROR_BODY = 64 * 1024
USER_AGENT = f"qwenproxy/{__version__}"  # qwen-oauth sends qwen-code's own instead
WaitHook = Callable[[], None]  # called while an upstream is awaited; raises to stop waiting
# Headers of an upstream answer worth passing to the client.
PASSED_RESPONSE_HEADERS = ("retry-after", "x-request-id")


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


def _error_detail(response: requests.Response) -> tuple[str, str | None]:
    """(message, code) of an upstream error answer, from any of the common shapes. A body
    that cannot be read (cut off, stalled, corrupt) leaves the status to speak."""
    try:
        raw = response.raw.read(MAX_ERROR_BODY, decode_content=True) if response.raw else b""
    except requests.RequestException:
        return response.reason or f"HTTP {response.status_code}", None
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        text = raw.decode("utf-8", "replace").strip()
        return text[:500] or response.reason or f"HTTP {response.status_code}", None
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and error.get("message"):
            code = error.get("code") or error.get("type")
            return str(error["message"])[:2000], str(code) if code else None
        if isinstance(error, str) and error:
            return error[:2000], None
        if body.get("message"):
            code = body.get("code")
            return str(body["message"])[:2000], str(code) if code else None
    return raw.decode("utf-8", "replace")[:500], None


def _looks_like_auth_failure(status: int, message: str) -> bool:
    if status in (401, 403):
        return True
    lowered = message.lower()
    return status < 500 and any(
        hint in lowered
        for hint in ("unauthorized", "forbidden", "invalid access token", "token expired")
    )


class UpstreamStream:
    """An open upstream SSE response: iterate it for events; always `close()` it.
    Only the body is kept: an open stream holds no request, headers or cookie jar."""

    def __init__(self, response: requests.Response, backend: str) -> None:
        self._raw = response.raw
        self._iter_content = None if hasattr(self._raw, "read_chunk") else response.iter_content
        self._backend = backend

    def batches(self, quiet: float | None = None) -> Iterator[list[SSEEvent] | None]:
        """The events of each network read, together (so they can leave in one write);
        `None` each time `quiet` seconds passed without an event — silence, or only SSE
        comments (OpenRouter's `: OPENROUTER PROCESSING`), which give the client nothing."""
        decoder = SSEDecoder()
        try:
            if self._iter_content is not None:  # another transport: no keep-alive waits
                for chunk in self._iter_content(chunk_size=None):
                    events = decoder.feed(chunk)
                    if events:
                        yield events
            else:
                read_chunk = self._raw.read_chunk
                clock = time.monotonic
                last = clock()  # when something (events or None) was last handed out
                while True:
                    if quiet:
                        chunk = read_chunk(max(quiet - (clock() - last), 0.001))
                    else:
                        chunk = read_chunk(None)
                    if chunk == b"":
                        break
                    events = decoder.feed(chunk) if chunk else None
                    if events:
                        yield events
                        last = clock()
                    elif quiet and clock() - last >= quiet:
                        yield None
                        last = clock()
        except requests.RequestException as exc:
            if _is_timeout(exc):
                raise UpstreamTimeoutError(
                    f"Backend {self._backend} stopped sending mid-stream (read timeout)."
                ) from None
            if isinstance(exc, AnswerTooLarge):
                raise UpstreamError(f"Backend {self._backend}'s stream: {exc}.") from None
            raise UpstreamError(
                f"The connection to backend {self._backend} broke mid-stream."
            ) from None
        events = decoder.flush()
        if events:
            yield events

    def close(self) -> None:
        self._raw.close()


@dataclass
class UpstreamReply:
    body: dict[str, Any]
    headers: dict[str, str]


class Backend(Protocol):
    """What every upstream offers the pipeline."""

    name: str
    cache_markers: bool  # takes cache_control markers on content parts (prompt_cache.py)

    def models(self) -> list[str]: ...

    def upstream_model(self, name: str) -> str: ...

    def account_order(self, include_paused: bool = False) -> list[int]: ...

    def cool_down(self, account: int, seconds: float, answer: ProxyError | None = None) -> None: ...

    def paused_answer(self, account: int) -> ProxyError | None: ...

    def seconds_until_ready(self) -> float: ...

    def complete(
        self, body: dict[str, Any], account: int = 0, while_waiting: WaitHook | None = None
    ) -> UpstreamReply: ...

    def stream(
        self, body: dict[str, Any], account: int = 0, while_waiting: WaitHook | None = None
    ) -> UpstreamStream: ...


class OpenAICompatibleBackend:
    """Any upstream that speaks OpenAI chat completions at `<api_base>/chat/completions`,
    with one or more accounts (API keys or OAuth logins) used in rotation."""

    def __init__(
        self,
        name: str,
        http: requests.Session,
        accounts: Sequence[Credentials],
        catalog: ModelCatalog,
        timeout: tuple[float, float],
        clock: Callable[[], float] = time.monotonic,
        cache_markers: bool = False,
    ) -> None:
        if not accounts:
            raise ValueError(f"backend {name} needs at least one account")
        self.name = name
        self.cache_markers = cache_markers
        self._http = http
        self.accounts = list(accounts)
        self.catalog = catalog
        self._timeout = timeout
        self._clock = clock
        self._cooldown_until = [0.0] * len(self.accounts)
        self._pause_answers: list[ProxyError | None] = [None] * len(self.accounts)
        self._rotation = itertools.count()

    # --- models ---------------------------------------------------------------------

    def models(self) -> list[str]:
        return self.catalog.listed()

    def upstream_model(self, name: str) -> str:
        return self.catalog.upstream_name(name)

    # --- accounts -------------------------------------------------------------------

    def account_order(self, include_paused: bool = False) -> list[int]:
        """Accounts to try for the next request: rotated; paused ones left out unless asked."""
        count = len(self.accounts)
        start = next(self._rotation) % count if count > 1 else 0
        now = self._clock()
        return [
            i
            for i in ((start + k) % count for k in range(count))
            if include_paused or self._cooldown_until[i] <= now
        ]

    def cool_down(self, account: int, seconds: float, answer: ProxyError | None = None) -> None:
        """Pause `account`; with `answer`, requests that still reach it during the pause
        get that error without a call upstream (an ended login is not retried each time)."""
        self._cooldown_until[account] = max(self._cooldown_until[account], self._clock() + seconds)
        self._pause_answers[account] = answer
        log.warning("backend %s account %d paused for %.0f s", self.name, account, seconds)

    def paused_answer(self, account: int) -> ProxyError | None:
        answer = self._pause_answers[account]
        if answer is None or self._cooldown_until[account] <= self._clock():
            return None
        # A fresh error each time: re-raising one object would grow its traceback.
        return type(answer)(answer.message, code=answer.code, headers=dict(answer.headers))

    def seconds_until_ready(self) -> float:
        return max(0.0, min(self._cooldown_until) - self._clock())

    def key_id(self, account: int) -> str | None:
        """The stable, non-secret id of an account (services/quota.py)."""
        return getattr(self.accounts[account], "key_id", None)

    # --- calls ----------------------------------------------------------------------

    def complete(
        self, body: dict[str, Any], account: int = 0, while_waiting: WaitHook | None = None
    ) -> UpstreamReply:
        """The upstream's answer. `while_waiting` is called about once a second while the
        answer is awaited — its head, and a body that comes slowly (some upstreams send the
        head at once and pad the body while the model works); what it raises (the client
        left) ends the wait."""
        response = self._send(body, stream=False, account=account, while_waiting=while_waiting)
        try:
            raw = _read_body(response, while_waiting)
        except requests.RequestException as exc:
            raise self._transport_error(exc) from None
        finally:
            response.close()
        parsed = parse_upstream_object(raw, f"Backend {self.name} answered with")
        if "error" in parsed and "choices" not in parsed:
            error = parsed["error"]
            message = error.get("message") if isinstance(error, dict) else str(error)
            code = error.get("code") if isinstance(error, dict) else None
            refusal = context_refusal(
                400, str(message or ""), code if isinstance(code, str) else None
            )
            if refusal is not None:
                raise refusal
            raise UpstreamError(f"Backend {self.name} failed: {message}")
        return UpstreamReply(parsed, _passed_headers(response))

    def stream(
        self, body: dict[str, Any], account: int = 0, while_waiting: WaitHook | None = None
    ) -> UpstreamStream:
        response = self._send(body, stream=True, account=account, while_waiting=while_waiting)
        content_type = response.headers.get("content-type", "")
        if "text/event-stream" not in content_type:
            message, _ = _error_detail(response)
            response.close()
            raise UpstreamError(
                f"Backend {self.name} did not answer with an event stream: {message[:300]}"
            )
        return UpstreamStream(response, self.name)

    # --- one attempt, plus one retry after an auth refusal ------------------------------

    def _send(
        self,
        body: dict[str, Any],
        stream: bool,
        account: int,
        while_waiting: WaitHook | None = None,
    ) -> requests.Response:
        credentials = self.accounts[account]
        payload = orjson.dumps(body)
        auth = credentials.auth()
        retried = False
        while True:
            headers = {
                **auth.headers,
                "Content-Type": "application/json",
                "Accept": "text/event-stream" if stream else "application/json",
            }
            try:
                response = post_prepared(
                    self._http,
                    auth.api_base + "/chat/completions",
                    headers,
                    payload,
                    self._timeout,
                    while_waiting,
                )
            except requests.RequestException as exc:
                raise self._transport_error(exc) from None
            if response.status_code < 400:
                return response
            status = response.status_code
            message, code = _error_detail(response)
            passed = _passed_headers(response)
            response.close()
            log.warning("backend %s answered HTTP %s (%s)", self.name, status, code or "-")
            kind = classify(status, code, message, passed.get("retry-after"))
            if kind != EXHAUSTED and _looks_like_auth_failure(status, message):
                if retried:
                    raise credentials.rejected_again(status, message)
                fresh = credentials.after_rejection(auth)
                if fresh is not None:
                    auth, retried = fresh, True
                    continue
            refusal = context_refusal(status, message, code)
            if refusal is not None:
                raise refusal
            error = upstream_error_for_status(
                status, f"Backend {self.name}: {message}", headers=passed
            )
            if kind == EXHAUSTED:
                log.warning("backend %s account %d: quota exhausted (%s)", self.name, account,
                            code or status)
                error = RateLimitError(error.message, code="insufficient_quota", headers=passed)
            elif kind == RATE_LIMITED:
                log.warning("backend %s account %d: rate limited (%s)", self.name, account,
                            code or status)
            raise error

    def _transport_error(self, exc: requests.RequestException) -> ProxyError:
        if _is_timeout(exc):
            return UpstreamTimeoutError(f"Backend {self.name} did not answer in time.")
        if isinstance(exc, ClosedWithoutAnswer | AnswerTooLarge):
            # Neither message names an address: they can go to the client as they are.
            return UpstreamError(f"Backend {self.name}: {exc}.")
        if isinstance(exc, requests.exceptions.ProxyError):
            # The operator gets the detail (proxy address, HTTP status); clients do not.
            log.warning("backend %s: %s", self.name, exc)
            return UpstreamError(
                f"Could not reach backend {self.name} through the upstream proxy "
                "(the proxy's log says why)."
            )
        return UpstreamError(f"Could not reach backend {self.name}.")


def post_prepared(
    http: requests.Session,
    url: str,
    headers: dict[str, str],
    payload: bytes,
    timeout: tuple[float, float],
    while_waiting: WaitHook | None = None,
) -> requests.Response:
    """POST through the shared session's connection pool without `Session.request`'s
    per-call preparation (environment, cookies, hooks, redirects: none apply to an
    upstream taken from configuration) — a third of the proxy's per-request CPU otherwise.
    Redirects are not followed: an upstream cannot send a request elsewhere."""
    request = requests.PreparedRequest()
    request.method = "POST"
    request.url = url
    # The lean transport reads the headers once, in order: a plain dict will do.
    if "User-Agent" not in headers:  # some API fronts refuse requests without one
        headers["User-Agent"] = USER_AGENT
    request.headers = headers  # type: ignore[assignment]
    headers["Content-Length"] = str(len(payload))
    request.body = payload
    request.hooks = {"response": []}
    adapter = http.get_adapter(url)
    if while_waiting is not None and isinstance(adapter, LeanAdapter):
        response = adapter.send(request, stream=True, timeout=timeout, while_waiting=while_waiting)
    else:
        response = adapter.send(request, stream=True, timeout=timeout)
    request.body = None  # sent: a long stream need not keep the request body alive
    return response


def parse_upstream_object(raw: bytes, what: str) -> dict[str, Any]:
    """One JSON object from an upstream, or UpstreamError("<what> invalid JSON")."""
    try:
        parsed = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise UpstreamError(f"{what} invalid JSON.") from None
    if not isinstance(parsed, dict):
        raise UpstreamError(f"{what} unexpected JSON.")
    return parsed


def _read_body(response: requests.Response, while_waiting: WaitHook | None) -> bytes:
    read_chunk = getattr(response.raw, "read_chunk", None)
    if while_waiting is None or read_chunk is None:
        return response.content
    parts = []
    while (chunk := read_chunk(WAIT_CHECK_SECONDS)) != b"":
        if chunk is None:
            while_waiting()
        else:
            parts.append(chunk)
    return b"".join(parts)


def _is_timeout(exc: requests.RequestException) -> bool:
    return isinstance(exc, requests.Timeout) or bool(
        exc.args and isinstance(exc.args[0], ReadTimeoutError)
    )


def _passed_headers(response: requests.Response) -> dict[str, str]:
    headers = response.headers
    return {name: headers[name] for name in PASSED_RESPONSE_HEADERS if name in headers}
