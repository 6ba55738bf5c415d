"""Upstream backends behind one interface: `complete`, `stream`, `models`.
`OpenAICompatibleBackend` speaks the OpenAI chat-completions wire format to any base URL
with some credentials; `QwenOAuthBackend` is that plus qwen-code's tokens and headers.
Upstream URLs come from configuration only, never from a request.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import orjson
import requests

from qwenproxy.errors import (
    ProxyError,
    RateLimitError,
    UpstreamError,
    UpstreamTimeoutError,
    upstream_error_for_status,
)
from qwenproxy.upstream.catalogue import ModelCatalog
from qwenproxy.upstream.credentials import Credentials
from qwenproxy.upstream.http.heads import AnswerTooLarge
from qwenproxy.upstream.http.transport import ClosedWithoutAnswer
from qwenproxy.upstream.length_refusals import context_refusal
from qwenproxy.upstream.quota_answers import EXHAUSTED, RATE_LIMITED, classify
from qwenproxy.upstream.wire import (
    UpstreamReply,
    UpstreamStream,
    WaitHook,
    _error_detail,
    _is_timeout,
    _looks_like_auth_failure,
    _passed_headers,
    _read_body,
    parse_upstream_object,
    post_prepared,
)

log = logging.getLogger(__name__)


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
        """The stable, non-secret id of an account (pipeline/quota.py)."""
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
