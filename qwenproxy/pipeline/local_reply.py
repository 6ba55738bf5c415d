"""Answers the proxy gives itself (the results of in-chat commands): a normal
chat.completion, or a stream of the same events an upstream's would give, that never
touched an upstream and costs nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import orjson

from qwenproxy.pipeline.commands.processor import LOCAL_MARKER
from qwenproxy.pipeline.context import RequestContext
from qwenproxy.pipeline.events import DONE, ChatChunk, chunk_events

LOCAL_HEADERS = {"X-Qwenproxy-Backend": "local", "X-Qwenproxy-Model": "qwenproxy"}
NO_USAGE = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}


def local_reply(
    body: dict[str, Any], text: str, ctx: RequestContext, finished: Callable[[], None]
) -> dict[str, Any] | Iterator[list[Any]]:
    """`text` as the answer to `body`: a chat.completion, or (when `ctx.stream`) the
    batches of a stream's events; `finished` runs once a stream has been sent or closed
    (a non-stream answer's caller records it itself)."""
    ctx.outcome.served_by("local", "qwenproxy")
    content = LOCAL_MARKER + text
    head = {
        "id": f"chatcmpl-local-{int(time.time() * 1000):x}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model") or "qwenproxy",
    }
    if not ctx.stream:
        message = {"role": "assistant", "content": content}
        choice = {"index": 0, "message": message, "finish_reason": "stop"}
        return {**head, "choices": [choice], "usage": NO_USAGE}
    head["object"] = "chat.completion.chunk"
    chunks = [
        {**head, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
        for delta, finish in (({"role": "assistant", "content": content}, None), ({}, "stop"))
    ]
    if (body.get("stream_options") or {}).get("include_usage"):
        chunks.append({**head, "choices": [], "usage": NO_USAGE})
    return _stream(chunks, ctx.translated, finished)


def _stream(
    chunks: list[dict[str, Any]], typed: bool, finished: Callable[[], None]
) -> Iterator[list[Any]]:
    try:
        for chunk in chunks:
            yield chunk_events(chunk) if typed else [ChatChunk(orjson.dumps(chunk))]
        yield [DONE]
    finally:
        finished()
