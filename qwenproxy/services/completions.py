"""The chat-completions pipeline: route a request, normalise it for the upstream, call the
backend, and turn its answer (JSON or SSE) into what OpenAI clients expect.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from qwenproxy.errors import ProxyError, UpstreamError
from qwenproxy.services.backends import UpstreamStream
from qwenproxy.services.router import Route, Router
from qwenproxy.sse import DONE_DATA, DONE_FRAME, encode_data

log = logging.getLogger(__name__)

SYSTEM_ROLES = ("system", "developer")


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            part.get("text", "")
            for part in content
            if isinstance(part, dict) and part.get("type") in ("text", "input_text")
        )
    return ""


def merge_system_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Qwen takes one system message, first, as a string: fold every system/developer
    message into one leading system message. Returns `messages` itself when it already fits.
    """
    first = messages[0]
    extra = any(m.get("role") in SYSTEM_ROLES for m in messages[1:])
    if not extra and (
        first.get("role") != "developer"
        and (first.get("role") != "system" or isinstance(first.get("content"), str))
    ):
        return messages
    texts = [_text_of(m.get("content")) for m in messages if m.get("role") in SYSTEM_ROLES]
    merged = {"role": "system", "content": "\n\n".join(t for t in texts if t)}
    return [merged, *(m for m in messages if m.get("role") not in SYSTEM_ROLES)]


@dataclass
class Completion:
    body: dict[str, Any]
    route: Route
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class StreamingCompletion:
    frames: Iterator[bytes]
    route: Route
    headers: dict[str, str] = field(default_factory=dict)


class ToolCallIndexer:
    """Fills `index` on streamed tool-call deltas for upstreams that omit it."""

    def __init__(self) -> None:
        self._ids: dict[tuple[int, str], int] = {}
        self._last: dict[int, int] = {}

    def fill(self, chunk: dict[str, Any]) -> bool:
        changed = False
        for choice in chunk.get("choices") or ():
            if not isinstance(choice, dict):
                continue
            delta = choice.get("delta")
            calls = delta.get("tool_calls") if isinstance(delta, dict) else None
            if not isinstance(calls, list):
                continue
            slot = choice.get("index", 0)
            for call in calls:
                if not isinstance(call, dict):
                    continue
                if isinstance(call.get("index"), int):
                    self._last[slot] = call["index"]
                    if call.get("id"):
                        self._ids[(slot, call["id"])] = call["index"]
                    continue
                call_id = call.get("id")
                if call_id and (slot, call_id) in self._ids:
                    index = self._ids[(slot, call_id)]
                elif call_id or slot not in self._last:
                    index = self._last.get(slot, -1) + 1
                    if call_id:
                        self._ids[(slot, call_id)] = index
                else:
                    index = self._last[slot]
                call["index"] = index
                self._last[slot] = index
                changed = True
        return changed


def _has_finish(chunk: dict[str, Any]) -> bool:
    return any(isinstance(c, dict) and c.get("finish_reason") for c in chunk.get("choices") or ())


def error_frame(error: ProxyError) -> bytes:
    return encode_data(orjson.dumps(error.to_body()))


class CompletionService:
    def __init__(self, router: Router) -> None:
        self.router = router

    def prepare(self, body: dict[str, Any]) -> tuple[Route, dict[str, Any]]:
        route = self.router.resolve(body.get("model"))
        upstream = dict(body)
        upstream["model"] = route.model
        upstream["messages"] = merge_system_messages(body["messages"])
        return route, upstream

    def complete(self, body: dict[str, Any]) -> Completion:
        route, upstream = self.prepare(body)
        upstream.pop("stream", None)
        reply = route.backend.complete(upstream)
        return Completion(reply.body, route, dict(reply.headers))

    def stream(self, body: dict[str, Any]) -> StreamingCompletion:
        route, upstream = self.prepare(body)
        opened = route.backend.stream(upstream)
        return StreamingCompletion(self._frames(opened, route), route)

    def _frames(self, upstream: UpstreamStream, route: Route) -> Iterator[bytes]:
        indexer = ToolCallIndexer()
        finished = False
        try:
            for event in upstream:
                data = event.data
                if data == DONE_DATA:
                    yield DONE_FRAME
                    return
                try:
                    chunk = orjson.loads(data)
                except orjson.JSONDecodeError:
                    raise UpstreamError(
                        f"Backend {route.backend.name} sent a malformed stream event."
                    ) from None
                if not isinstance(chunk, dict):
                    raise UpstreamError(
                        f"Backend {route.backend.name} sent an unexpected stream event."
                    )
                if "error" in chunk and not chunk.get("choices"):
                    log.warning("backend %s sent an error event mid-stream", route.backend.name)
                    yield encode_data(data)
                    return
                if not finished:
                    finished = _has_finish(chunk)
                if b'"tool_calls"' in data and indexer.fill(chunk):
                    data = orjson.dumps(chunk)
                yield encode_data(data)
            if not finished:
                raise UpstreamError(
                    f"Backend {route.backend.name} closed the stream before it finished."
                )
            yield DONE_FRAME
        except ProxyError as exc:
            log.warning("stream from %s failed: %s", route.backend.name, exc.code)
            yield error_frame(exc)
        finally:
            upstream.close()
