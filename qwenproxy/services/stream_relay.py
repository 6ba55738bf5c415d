"""Relaying an upstream SSE stream to the client (`relay_stream`): events passed on with
tool-call indexes filled in, keep-alives in silences, and the frames that end a stream
early (an error, a loop, a client gone). The events themselves, with their gaps, come
from `UpstreamStream.batches`."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from qwenproxy.errors import ProxyError, UpstreamError
from qwenproxy.services.backends import UpstreamStream, parse_upstream_object
from qwenproxy.services.guards import LoopDetector, shorten_snippet
from qwenproxy.sse import DONE_DATA, DONE_FRAME, KEEPALIVE_FRAME, encode_data

if TYPE_CHECKING:
    from qwenproxy.services.completions import RequestContext

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


@dataclass(frozen=True)
class StreamRelaySettings:
    client_wants_usage: bool  # else the upstream's usage chunk is kept for the ledger only
    detector: LoopDetector | None  # None: loop detection off for this request
    keepalive: float | None  # seconds of silence before a `: ping`


def relay_stream(
    upstream: UpstreamStream,
    name: str,
    ctx: RequestContext,
    settings: StreamRelaySettings,
    started: Callable[[], None],
    ended: Callable[[], None],
) -> Iterator[bytes]:
    """The client's frames of an open upstream stream `name`: events passed on (usage
    kept back unless asked for, tool-call indexes filled in), keep-alives during silence,
    a stop when the model loops or the client leaves, an error frame when the upstream
    fails. `started` runs when the relay begins, `ended` when it is over, always."""
    client_wants_usage, detector = settings.client_wants_usage, settings.detector
    indexer = ToolCallIndexer()
    finished = False  # the upstream sent a finish_reason
    completed = False  # the last frame for the client is on its way
    started()
    keepalive = settings.keepalive
    probe = ctx.client_gone
    # Silence is waited out in steps: a keep-alive after `keepalive` seconds of it, and,
    # when the client's connection can be watched, a look at it every second or so.
    if probe is None:
        wait = keepalive
    elif keepalive:  # equal steps of at most CLIENT_CHECK_S that add up to `keepalive`
        wait = keepalive / math.ceil(keepalive / CLIENT_CHECK_S)
    else:
        wait = CLIENT_CHECK_S
    silent = 0.0
    try:
        for batch in upstream.batches(wait):
            if batch is None:
                if probe is not None and probe():
                    ctx.status, ctx.error_code = 499, "client_disconnected"
                    log.info("client left a silent stream from %s: closing it", name)
                    completed = True
                    return
                silent += wait or 0.0
                if keepalive and silent >= keepalive - 1e-6:
                    silent = 0.0
                    yield KEEPALIVE_FRAME
                continue
            silent = 0.0
            out: list[bytes] = []  # what one upstream read gives: one write to the client
            last = False
            for event in batch:
                data = event.data
                if data == DONE_DATA:
                    out.append(DONE_FRAME)
                    last = True
                    break
                chunk = parse_upstream_object(data, f"Backend {name} sent a stream event with")
                if ctx.first_token_at is None:
                    ctx.first_token_at = time.perf_counter()
                    ctx.ttft_ms = (ctx.first_token_at - ctx.started) * 1000
                if "error" in chunk and not chunk.get("choices"):
                    log.warning("backend %s sent an error event mid-stream", name)
                    error = chunk["error"]
                    code = error.get("code") if isinstance(error, dict) else None
                    ctx.status, ctx.error_code = 502, code or "upstream_error"
                    out.append(encode_data(data))
                    last = True
                    break
                changed = False
                usage = chunk.get("usage")
                if usage:
                    ctx.usage = usage
                    if not client_wants_usage:
                        if not chunk.get("choices"):
                            continue
                        del chunk["usage"]
                        changed = True
                if not finished:
                    finished = has_finish(chunk)
                if b'"tool_calls"' in data and indexer.fill(chunk):
                    changed = True
                # An event of several `data:` lines holds newlines: re-encode it.
                out.append(
                    encode_data(orjson.dumps(chunk) if changed or b"\n" in data else data)
                )
                if detector is not None and b'"content"' in data:
                    block = detector.feed(delta_text(chunk))
                    if block is not None:
                        upstream.close()  # stop paying for the loop at once
                        ctx.loop_detected = True
                        log.warning("stopped a looping stream from %s", name)
                        out.extend(loop_stop_frames(chunk, block))
                        last = True
                        break
            completed = last
            if out:
                yield b"".join(out)
            if last:
                return
        if not finished:
            raise UpstreamError(f"Backend {name} closed the stream before it finished.")
        completed = True
        yield DONE_FRAME
    except ProxyError as exc:
        log.warning("stream from %s failed: %s", name, exc.code)
        ctx.fail(exc)
        completed = True
        yield error_frame(exc)
    except Exception:  # e.g. a chunk of an unexpected shape: still end the stream cleanly
        log.exception("stream from %s could not be relayed", name)
        error = UpstreamError(f"Backend {name} sent a stream the proxy could not relay.")
        ctx.fail(error)
        completed = True
        yield error_frame(error)
    except GeneratorExit:
        if not completed:  # closed before its last frame: the client went away
            ctx.status, ctx.error_code = 499, "client_disconnected"
        raise
    finally:
        upstream.close()
        ended()
