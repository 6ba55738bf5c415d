"""Relaying an upstream SSE stream: events read in batches with keep-alives during
silence, tool-call indexes filled in, and the frames that end a stream early (an error, a
loop). Used by the chat pipeline's stream path."""

from __future__ import annotations

import functools
import queue
import threading
from collections.abc import Iterator
from typing import Any

import orjson

from qwenproxy.errors import ProxyError
from qwenproxy.services.backends import UpstreamStream
from qwenproxy.services.guards import shorten_snippet
from qwenproxy.sse import DONE_FRAME, SSEEvent, encode_data


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


def loop_stop_frames(last: dict[str, Any], block: str) -> Iterator[bytes]:
    """A closing notice, a `finish_reason: stop` chunk and [DONE], shaped like `last`."""
    base = {key: last[key] for key in ("id", "object", "created", "model") if key in last}
    notice = (
        "\n\n[qwenproxy] Response stopped: the model kept repeating itself "
        f'("{shorten_snippet(block)}").'
    )
    for delta, finish in (({"content": notice}, None), ({}, "stop")):
        yield encode_data(
            orjson.dumps(
                {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
            )
        )
    yield DONE_FRAME


def error_frame(error: ProxyError) -> bytes:
    return encode_data(orjson.dumps(error.to_body()))


def delta_text(chunk: dict[str, Any]) -> str:
    choices = chunk.get("choices")
    if not choices:
        return ""
    delta = choices[0].get("delta") if isinstance(choices[0], dict) else None
    content = delta.get("content") if isinstance(delta, dict) else None
    return content if isinstance(content, str) else ""


_END = object()


@functools.cache
def _under_gevent() -> bool:
    """True in a gunicorn gevent worker (threading is monkey-patched there)."""
    from gevent import monkey

    return bool(monkey.is_module_patched("threading"))


def batches_with_keepalive(
    upstream: UpstreamStream, interval: float | None
) -> Iterator[list[SSEEvent] | None]:
    """The upstream's events, a list per network read; `None` whenever the upstream was
    silent for `interval` seconds.

    A reader (a bare greenlet under gevent, a thread otherwise) pulls the upstream so the
    client side can wake up for keep-alives; a small queue keeps back-pressure.
    """
    if not interval:
        yield from upstream.batches()
        return
    if _under_gevent():
        import gevent
        import gevent.queue

        items: Any = gevent.queue.Queue(maxsize=16)
    else:
        items = queue.Queue(maxsize=16)
    closed = [False]

    def pump() -> None:
        try:
            for batch in upstream.batches():
                while not closed[0]:
                    try:
                        items.put(batch, timeout=1.0)
                        break
                    except queue.Full:
                        continue
                if closed[0]:
                    return
            items.put(_END)
        except BaseException as exc:  # handed to the consumer, which re-raises it
            if not closed[0]:
                items.put(exc)

    if _under_gevent():
        gevent.spawn(pump)
    else:
        threading.Thread(target=pump, name="upstream-reader", daemon=True).start()
    try:
        while True:
            try:
                item = items.get(timeout=interval)
            except queue.Empty:
                yield None
                continue
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        closed[0] = True
        upstream.close()
        while True:  # unblock the reader if it waits to hand over a batch
            try:
                items.get_nowait()
            except queue.Empty:
                break
