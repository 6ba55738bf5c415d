"""One upstream call on the wire: the POST through the shared session's pool (`post_prepared`),
and reading what comes back: an error's detail in any of the common shapes, a JSON body
(waiting with the client check), or an SSE stream read in batches with keep-alive silences."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson
import requests
from urllib3.exceptions import ReadTimeoutError  # how requests' own adapter reports one

from qwenproxy import __version__
from qwenproxy.errors import (
    UpstreamError,
    UpstreamTimeoutError,
)
from qwenproxy.sse import SSEDecoder, SSEEvent
from qwenproxy.upstream.http.heads import WAIT_CHECK_SECONDS, AnswerTooLarge
from qwenproxy.upstream.http.transport import LeanAdapter

log = logging.getLogger(__name__)


MAX_ERROR_BODY = 64 * 1024


USER_AGENT = f"qwenproxy/{__version__}"  # qwen-oauth sends qwen-code's own instead


WaitHook = Callable[[], None]  # called while an upstream is awaited; raises to stop waiting


# Headers of an upstream answer worth passing to the client.
PASSED_RESPONSE_HEADERS = ("retry-after", "x-request-id")


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
