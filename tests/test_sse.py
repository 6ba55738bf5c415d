"""SSEDecoder and the frames the proxy sends."""

from __future__ import annotations

import pytest

from qwenproxy.sse import DONE_FRAME, KEEPALIVE_FRAME, SSEDecoder, SSEEvent, encode_data

STREAM = (
    b": keep-alive\n"
    b"\n"
    b'data: {"id":"a","choices":[{"delta":{"content":"Hel"}}]}\n'
    b"\n"
    b": ping\n"
    b"event: usage\n"
    b'data: {"usage":{"total_tokens":3}}\n'
    b"\n"
    b"data: line one\n"
    b"data: line two\n"
    b"\n"
    b"data: [DONE]\n"
    b"\n"
)

EXPECTED = [
    SSEEvent(b'{"id":"a","choices":[{"delta":{"content":"Hel"}}]}'),
    SSEEvent(b'{"usage":{"total_tokens":3}}', "usage"),
    SSEEvent(b"line one\nline two"),
    SSEEvent(b"[DONE]"),
]


def decode(pieces: list[bytes]) -> list[SSEEvent]:
    decoder = SSEDecoder()
    events: list[SSEEvent] = []
    for piece in pieces:
        events.extend(decoder.feed(piece))
    events.extend(decoder.flush())
    return events


def byte_by_byte(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


def test_whole_stream_in_one_chunk() -> None:
    assert decode([STREAM]) == EXPECTED


def test_stream_fed_byte_by_byte() -> None:
    assert decode(byte_by_byte(STREAM)) == EXPECTED


@pytest.mark.parametrize("size", [2, 3, 5, 7, 13, 64])
def test_stream_split_at_every_chunk_size(size: int) -> None:
    pieces = [STREAM[i : i + size] for i in range(0, len(STREAM), size)]
    assert decode(pieces) == EXPECTED


def test_every_single_split_point() -> None:
    for cut in range(len(STREAM) + 1):
        assert decode([STREAM[:cut], STREAM[cut:]]) == EXPECTED, cut


def test_events_are_returned_as_soon_as_their_blank_line_arrives() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: one\n") == []
    assert decoder.feed(b"\n") == [SSEEvent(b"one")]
    assert decoder.feed(b"data: tw") == []
    assert decoder.feed(b"o\n\ndata: three\n\n") == [SSEEvent(b"two"), SSEEvent(b"three")]
    assert decoder.flush() == []


@pytest.mark.parametrize("newline", [b"\r\n", b"\r"], ids=["crlf", "lone-cr"])
@pytest.mark.parametrize("split", ["whole", "bytes"])
def test_crlf_and_lone_cr_line_endings(newline: bytes, split: str) -> None:
    data = STREAM.replace(b"\n", newline)
    pieces = [data] if split == "whole" else byte_by_byte(data)
    assert decode(pieces) == EXPECTED


def test_crlf_split_between_cr_and_lf_is_one_line_end() -> None:
    # If the CR and LF of one CRLF were taken as two line ends, "data: b" would be
    # dispatched as its own event instead of joined with "data: a".
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\r") == []
    assert decoder.feed(b"\ndata: b\r") == []
    assert decoder.feed(b"\n\r") == []
    assert decoder.feed(b"\n") == [SSEEvent(b"a\nb")]


def test_mixed_line_endings() -> None:
    data = b"data: a\rdata: b\r\ndata: c\n\r\ndata: d\r\r"
    assert decode([data]) == [SSEEvent(b"a\nb\nc"), SSEEvent(b"d")]
    assert decode(byte_by_byte(data)) == [SSEEvent(b"a\nb\nc"), SSEEvent(b"d")]


def test_comments_and_keepalives_produce_no_events() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b": ping\n\n:\n\n: another comment\n\n") == []
    assert decoder.feed(KEEPALIVE_FRAME * 3) == []
    assert decoder.flush() == []


def test_comment_inside_an_event_does_not_break_it() -> None:
    assert decode([b"data: a\n: ping\ndata: b\n\n"]) == [SSEEvent(b"a\nb")]


def test_multiline_data_joined_with_newline() -> None:
    assert decode([b'data: {\ndata: "k": 1\ndata: }\n\n']) == [SSEEvent(b'{\n"k": 1\n}')]


def test_only_one_space_after_colon_is_stripped() -> None:
    assert decode([b"data:no-space\n\ndata:  two-spaces\n\n"]) == [
        SSEEvent(b"no-space"),
        SSEEvent(b" two-spaces"),
    ]


def test_event_field_applies_to_its_event_only() -> None:
    events = decode([b"event: error\ndata: {}\n\ndata: next\n\n"])
    assert events == [SSEEvent(b"{}", "error"), SSEEvent(b"next", None)]


def test_event_without_data_is_not_dispatched_and_does_not_leak() -> None:
    events = decode([b"event: lonely\n\ndata: x\n\n"])
    assert events == [SSEEvent(b"x", None)]


def test_other_fields_are_ignored() -> None:
    assert decode([b"id: 7\nretry: 1000\ndata: x\nfoo: bar\n\n"]) == [SSEEvent(b"x")]


@pytest.mark.parametrize(
    "tail",
    [b"data: last", b"data: last\n", b"data: last\r\n", b"data: last\r"],
    ids=["no-newline", "lf", "crlf", "cr"],
)
def test_flush_dispatches_the_final_event_without_blank_line(tail: bytes) -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: first\n\n" + tail) == [SSEEvent(b"first")]
    assert decoder.flush() == [SSEEvent(b"last")]
    # Flushing again has nothing left.
    assert decoder.flush() == []


def test_flush_of_partial_multiline_event() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"event: e\ndata: a\ndata: b") == []
    assert decoder.flush() == [SSEEvent(b"a\nb", "e")]


def test_flush_with_nothing_pending() -> None:
    decoder = SSEDecoder()
    assert decoder.flush() == []
    decoder.feed(b"data: x\n\n")
    assert decoder.flush() == []


def test_encode_data_frames_one_event() -> None:
    payload = b'{"choices":[{"delta":{"content":"hi"}}]}'
    frame = encode_data(payload)
    assert frame == b"data: " + payload + b"\n\n"
    assert decode([frame]) == [SSEEvent(payload)]


def test_frames_round_trip_through_decoder() -> None:
    stream = encode_data(b'{"a":1}') + KEEPALIVE_FRAME + encode_data(b'{"b":2}') + DONE_FRAME
    assert decode(byte_by_byte(stream)) == [
        SSEEvent(b'{"a":1}'),
        SSEEvent(b'{"b":2}'),
        SSEEvent(b"[DONE]"),
    ]
    assert DONE_FRAME == b"data: [DONE]\n\n"


def test_every_door_frames_with_the_same_helpers():
    from qwenproxy.sse import encode_comment, encode_event

    assert encode_event(b"ping", b'{"type":"ping"}') == b'event: ping\ndata: {"type":"ping"}\n\n'
    assert encode_comment(b"ping") == KEEPALIVE_FRAME == b": ping\n\n"
    assert DONE_FRAME == encode_data(b"[DONE]")
