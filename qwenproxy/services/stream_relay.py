"""Relaying an upstream SSE stream: tool-call indexes filled in, and the frames that end a
stream early (an error, a loop). Used by the chat pipeline's stream path; the events
themselves, with keep-alive gaps, come from `UpstreamStream.batches`."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson

from qwenproxy.errors import ProxyError
from qwenproxy.services.guards import shorten_snippet
from qwenproxy.sse import DONE_FRAME, encode_data


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


