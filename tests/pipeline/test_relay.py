"""The relay: an upstream's SSE events read once into the typed events each door takes,
with what accounting needs noted on the request's outcome."""

from __future__ import annotations

import orjson

from qwenproxy.errors import ProxyError
from qwenproxy.pipeline.context import RequestContext
from qwenproxy.pipeline.events import (
    ChatChunk,
    Done,
    Finish,
    KeepAlive,
    StreamError,
    TextDelta,
    ToolCallDelta,
    Usage,
)
from qwenproxy.pipeline.guards.loops import LoopDetector
from qwenproxy.pipeline.relay import StreamRelaySettings, chat_frames, relay_stream
from qwenproxy.sse import SSEEvent


class FakeUpstream:
    """An open upstream stream: each item of `reads` is one read's events (None: a
    silence of the relay's wait step)."""

    def __init__(self, reads: list[list[bytes] | None]) -> None:
        self.reads = reads
        self.closed = False
        self.waits: list[float | None] = []

    def batches(self, quiet: float | None = None):
        self.waits.append(quiet)
        for read in self.reads:
            yield None if read is None else [SSEEvent(data) for data in read]

    def close(self) -> None:
        self.closed = True


def chunk(delta: dict, finish: str | None = None, **extra) -> bytes:
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    return orjson.dumps(
        {"id": "c1", "object": "chat.completion.chunk", "choices": [choice], **extra}
    )


USAGE = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
USAGE_ONLY = orjson.dumps({"id": "c1", "choices": [], "usage": USAGE})


def relay(reads, typed=True, wants_usage=False, detector=None, keepalive=None, gone=None):
    ctx = RequestContext("client", "session", client_gone=gone)
    upstream = FakeUpstream(reads)
    calls: list[str] = []
    batches = list(
        relay_stream(
            upstream,
            "fake",
            ctx,
            StreamRelaySettings(wants_usage, detector, keepalive, typed),
            lambda: calls.append("started"),
            lambda: calls.append("ended"),
        )
    )
    assert calls == ["started", "ended"] and upstream.closed
    return batches, ctx


def test_a_translated_door_gets_each_chunk_taken_apart_once():
    reads = [
        [chunk({"role": "assistant", "content": "Hel"}), chunk({"content": "lo"})],
        [chunk({"tool_calls": [{"id": "t1", "function": {"name": "ls", "arguments": "{"}}]})],
        [chunk({"tool_calls": [{"function": {"arguments": "}"}}]})],
        [chunk({}, "tool_calls"), USAGE_ONLY, b"[DONE]"],
    ]
    batches, ctx = relay(reads)
    assert batches == [
        [TextDelta("Hel"), TextDelta("lo")],
        [ToolCallDelta(0, "t1", "ls", "{")],
        [ToolCallDelta(0, None, None, "}")],  # the index the upstream left out, filled in
        [Finish("tool_calls"), Done()],  # usage not asked for: kept for the ledger only
    ]
    assert ctx.outcome.usage == USAGE and ctx.outcome.first_token_at is not None
    assert ctx.status == 200


def test_usage_reaches_a_client_that_asked_for_it():
    batches, _ = relay([[chunk({"content": "x"}, "stop"), USAGE_ONLY, b"[DONE]"]], wants_usage=True)
    assert batches == [[TextDelta("x"), Finish("stop"), Usage(USAGE), Done()]]


def test_the_chat_door_gets_the_upstreams_own_bytes_in_one_write_per_read():
    first = chunk({"content": "hi"}, system_fingerprint="fp")
    batches, _ = relay([[first, chunk({}, "stop")], [USAGE_ONLY, b"[DONE]"]], typed=False)
    assert batches[0] == [ChatChunk(first), ChatChunk(chunk({}, "stop"))]
    wire = list(chat_frames(iter(batches)))
    assert wire == [
        b"data: " + first + b"\n\ndata: " + chunk({}, "stop") + b"\n\n",
        b"data: [DONE]\n\n",
    ]


def test_a_loop_ends_a_translated_stream_with_a_notice_and_a_stop():
    detector = LoopDetector(min_pattern=5, min_repeats=3, short_pattern=5, short_repeats=3)
    reads = [[chunk({"content": "again "})] for _ in range(400)]
    batches, ctx = relay(reads, detector=detector)
    assert ctx.outcome.loop_detected
    last = batches[-1]
    assert isinstance(last[-3], TextDelta) and "kept repeating itself" in last[-3].text
    assert last[-2:] == [Finish("stop"), Done()]
    assert len(batches) < 400  # the upstream was closed at once


def test_an_upstream_error_event_ends_the_stream_as_a_stream_error():
    error = orjson.dumps({"error": "overloaded"})
    batches, ctx = relay([[chunk({"content": "a"})], [error]])
    assert batches[-1] == [StreamError({"message": "overloaded", "type": "upstream_error"})]
    assert (ctx.status, ctx.error_code) == (502, "upstream_error")


def test_a_stream_cut_before_its_finish_ends_with_the_proxys_error():
    batches, ctx = relay([[chunk({"content": "a"})]])
    (event,) = batches[-1]
    assert isinstance(event, StreamError) and "closed the stream" in event.error["message"]
    assert ctx.status == 502
    wire = b"".join(chat_frames(iter(batches[-1:])))
    assert orjson.loads(wire[len(b"data: ") :]) == {"error": event.error}


def test_silence_gives_keep_alives_and_a_departed_client_ends_the_stream():
    end = [chunk({}, "stop"), b"[DONE]"]
    batches, _ = relay([None, None, end], keepalive=2.0)  # a wait of 2 s: one each
    assert batches[:2] == [[KeepAlive()], [KeepAlive()]] and len(batches) == 3
    # a watched client: waits of 1 s, a keep-alive after every 2 s of silence
    batches, _ = relay([None, None, None, end], keepalive=2.0, gone=lambda: False)
    assert batches[0] == [KeepAlive()] and len(batches) == 2
    gone = iter([False, True])
    batches, ctx = relay([None, None, [b"[DONE]"]], gone=lambda: next(gone))
    assert batches == [] and ctx.error_code == "client_disconnected"


def test_a_client_that_closes_mid_stream_is_recorded_as_gone():
    ctx = RequestContext("client", "session")
    upstream = FakeUpstream([[chunk({"content": "a"})], [chunk({}, "stop"), b"[DONE]"]])
    settings = StreamRelaySettings(False, None, None, True)
    stream = relay_stream(upstream, "fake", ctx, settings, lambda: None, lambda: None)
    next(stream)
    stream.close()
    assert (ctx.status, ctx.error_code) == (499, "client_disconnected") and upstream.closed


def test_a_proxy_error_is_one_stream_error_in_openais_shape():
    error = ProxyError("boom")
    batches, _ = relay([[b"not json"]])
    (event,) = batches[-1]
    assert set(event.error) == set(error.to_body()["error"])
