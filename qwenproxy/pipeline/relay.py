"""Relaying an upstream SSE stream to the client (`relay_stream`): the upstream's events
read once into typed events (pipeline/events.py) with tool-call indexes filled in,
keep-alives in silences, and the events that end a stream early (an error, a loop, a
client gone); `chat_frames` encodes them for the chat door. The upstream's events, with
their gaps, come from `UpstreamStream.batches`."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson

from qwenproxy.errors import ProxyError, UpstreamError
from qwenproxy.pipeline.context import RequestContext
from qwenproxy.pipeline.events import (
    DONE,
    KEEP_ALIVE,
    ChatChunk,
    Done,
    Finish,
    KeepAlive,
    StreamError,
    TextDelta,
    chunk_events,
    error_event,
)
from qwenproxy.pipeline.guards.loops import LoopDetector, shorten_snippet
from qwenproxy.sse import DONE_DATA, DONE_FRAME, KEEPALIVE_FRAME, encode_data
from qwenproxy.upstream.wire import UpstreamStream, parse_upstream_object

log = logging.getLogger(__name__)
CLIENT_CHECK_S = 1.0  # during upstream silence, how often a stream looks for its client


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


def has_finish(chunk: dict[str, Any]) -> bool:
    return any(isinstance(c, dict) and c.get("finish_reason") for c in chunk.get("choices") or ())


def loop_stop_events(last: dict[str, Any], block: str, typed: bool) -> list[Any]:
    """A closing notice, a `finish_reason: stop` and the end, shaped like `last`."""
    notice = (
        "\n\n[qwenproxy] Response stopped: the model kept repeating itself "
        f'("{shorten_snippet(block)}").'
    )
    if typed:
        return [TextDelta(notice), Finish("stop"), DONE]
    base = {key: last[key] for key in ("id", "object", "created", "model") if key in last}
    return [
        ChatChunk(
            orjson.dumps(
                {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
            )
        )
        for delta, finish in (({"content": notice}, None), ({}, "stop"))
    ] + [DONE]


def error_events(error: ProxyError) -> list[Any]:
    return [error_event(error.to_body())]


def delta_text(chunk: dict[str, Any]) -> str:
    choices = chunk.get("choices")
    if not choices:
        return ""
    delta = choices[0].get("delta") if isinstance(choices[0], dict) else None
    content = delta.get("content") if isinstance(delta, dict) else None
    return content if isinstance(content, str) else ""


@dataclass(frozen=True)
class StreamRelaySettings:
    client_wants_usage: bool  # else the upstream's usage chunk is kept for the ledger only
    detector: LoopDetector | None  # None: loop detection off for this request
    keepalive: float | None  # seconds of silence before a keep-alive
    typed: bool = False  # a translated door: the chunks' pieces, not ChatChunks


class _Reader:
    """Turns the upstream's events of one read into the client's typed events, noting
    on `ctx` what accounting needs (first token, usage, an error, a loop)."""

    def __init__(
        self, upstream: UpstreamStream, name: str, ctx: RequestContext, s: StreamRelaySettings
    ) -> None:
        self.upstream, self.name, self.ctx = upstream, name, ctx
        self.wants_usage, self.detector, self.typed = s.client_wants_usage, s.detector, s.typed
        self.indexer = ToolCallIndexer()
        self.finished = False  # the upstream sent a finish_reason
        self.what = f"Backend {name} sent a stream event with"

    def read(self, batch: list[Any]) -> tuple[list[Any], bool]:
        """(the events for the client, whether the last of them has come)."""
        out: list[Any] = []
        ctx, outcome = self.ctx, self.ctx.outcome
        for event in batch:
            data = event.data
            if data == DONE_DATA:
                out.append(DONE)
                return out, True
            chunk = parse_upstream_object(data, self.what)
            if outcome.first_token_at is None:
                outcome.first_token(ctx.started)
            if "error" in chunk and not chunk.get("choices"):
                log.warning("backend %s sent an error event mid-stream", self.name)
                error = chunk["error"]
                code = error.get("code") if isinstance(error, dict) else None
                outcome.upstream_failed(code)
                out.append(error_event(chunk) if self.typed else ChatChunk(data))
                return out, True
            if not self._take(chunk, data, out):
                continue
            if self.detector is not None and b'"content"' in data:
                block = self.detector.feed(delta_text(chunk))
                if block is not None:
                    self.upstream.close()  # stop paying for the loop at once
                    outcome.loop_detected = True
                    log.warning("stopped a looping stream from %s", self.name)
                    out.extend(loop_stop_events(chunk, block, self.typed))
                    return out, True
        return out, False

    def _take(self, chunk: dict[str, Any], data: bytes, out: list[Any]) -> bool:
        """Add one chunk's events to `out`; False when it is dropped (a usage-only chunk
        the client did not ask for)."""
        changed = False
        usage = chunk.get("usage")
        if usage:
            self.ctx.outcome.usage = usage
            if not self.wants_usage:
                if not chunk.get("choices"):
                    return False
                del chunk["usage"]
                changed = True
        if not self.finished:
            self.finished = has_finish(chunk)
        if b'"tool_calls"' in data and self.indexer.fill(chunk):
            changed = True
        if self.typed:
            chunk_events(chunk, out)
        else:  # an event of several `data:` lines holds newlines: re-encode it
            out.append(ChatChunk(orjson.dumps(chunk) if changed or b"\n" in data else data))
        return True


def _silence_step(keepalive: float | None, watched: bool) -> float | None:
    """Silence is waited out in steps: a keep-alive after `keepalive` seconds of it, and,
    when the client's connection can be watched, a look at it every second or so."""
    if not watched:
        return keepalive
    if keepalive:  # equal steps of at most CLIENT_CHECK_S that add up to `keepalive`
        return keepalive / math.ceil(keepalive / CLIENT_CHECK_S)
    return CLIENT_CHECK_S


def relay_stream(
    upstream: UpstreamStream,
    name: str,
    ctx: RequestContext,
    settings: StreamRelaySettings,
    started: Callable[[], None],
    ended: Callable[[], None],
) -> Iterator[list[Any]]:
    """The client's events of an open upstream stream `name`, a list per upstream read:
    chunks passed on (usage kept back unless asked for, tool-call indexes filled in),
    keep-alives during silence, a stop when the model loops or the client leaves, an
    error when the upstream fails. `started` runs when the relay begins, `ended` when it
    is over, always."""
    reader = _Reader(upstream, name, ctx, settings)
    completed = False  # the last event for the client is on its way
    started()
    keepalive, probe = settings.keepalive, ctx.client_gone
    wait = _silence_step(keepalive, probe is not None)
    silent = 0.0
    try:
        for batch in upstream.batches(wait):
            if batch is None:
                if probe is not None and probe():
                    ctx.outcome.client_left()
                    log.info("client left a silent stream from %s: closing it", name)
                    completed = True
                    return
                silent += wait or 0.0
                if keepalive and silent >= keepalive - 1e-6:
                    silent = 0.0
                    yield [KEEP_ALIVE]
                continue
            silent = 0.0
            out, completed = reader.read(batch)
            if out:
                yield out
            if completed:
                return
        if not reader.finished:
            raise UpstreamError(f"Backend {name} closed the stream before it finished.")
        completed = True
        yield [DONE]
    except ProxyError as exc:
        log.warning("stream from %s failed: %s", name, exc.code)
        ctx.fail(exc)
        completed = True
        yield error_events(exc)
    except Exception:  # e.g. a chunk of an unexpected shape: still end the stream cleanly
        log.exception("stream from %s could not be relayed", name)
        error = UpstreamError(f"Backend {name} sent a stream the proxy could not relay.")
        ctx.fail(error)
        completed = True
        yield error_events(error)
    except GeneratorExit:
        if not completed:  # closed before its last event: the client went away
            ctx.outcome.client_left()
        raise
    finally:
        upstream.close()
        ended()


def chat_frames(batches: Iterator[list[Any]]) -> Iterator[bytes]:
    """The chat door's wire: OpenAI SSE, one write per batch of events."""
    try:
        for batch in batches:
            yield b"".join([_chat_frame(event) for event in batch])
    finally:
        close = getattr(batches, "close", None)
        if close is not None:
            close()


def _chat_frame(event: Any) -> bytes:
    kind = type(event)
    if kind is ChatChunk:
        return encode_data(event.data)
    if kind is KeepAlive:
        return KEEPALIVE_FRAME
    if kind is Done:
        return DONE_FRAME
    if kind is StreamError:
        return encode_data(orjson.dumps({"error": event.error}))
    raise TypeError(f"the chat door has no frame for {kind.__name__}")
