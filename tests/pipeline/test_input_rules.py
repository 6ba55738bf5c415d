"""The input rules every door, the sessions and the commands share."""

from __future__ import annotations

import io

import orjson
import pytest

from qwenproxy.edge.schemas import parse_json_object
from qwenproxy.errors import InvalidRequestError, PayloadTooLargeError
from qwenproxy.pipeline.input_rules import (
    MAX_JSON_DEPTH,
    MAX_NAME_CHARS,
    ORJSON_MAX_DEPTH,
    check_name,
    check_request_model,
    header_text,
    name_problem,
    read_capped,
    too_deep,
)


def nested_raw(containers: int) -> bytes:
    """A JSON object holding `containers` containers in all, one inside the other."""
    inner = containers - 1
    return b'{"x": ' + b"[" * inner + b"1" + b"]" * inner + b"}"


@pytest.mark.parametrize("value", ["qwen3-coder-plus", "dashscope:qwen/qwen3 coder", "модель",
                                   "a" * MAX_NAME_CHARS])
def test_printable_names_up_to_the_limit_pass(value):
    assert name_problem(value, "`model`") is None
    assert check_name(value, "`model`", "model") == value


@pytest.mark.parametrize("char", ["\x00", "\r", "\n", "\t", "\x1b", "\x7f", "\x85", "\u2028"])
def test_a_control_or_unprintable_character_is_refused(char):
    with pytest.raises(InvalidRequestError) as caught:
        check_name(f"m{char}x", "`model`", "model")
    assert caught.value.status == 400 and caught.value.param == "model"
    assert caught.value.code == "invalid_name"
    assert "control character" in caught.value.message


def test_a_name_over_the_limit_is_refused_with_its_length():
    problem = name_problem("a" * 1_000_000, "The model")
    assert problem == "The model is 1000000 characters long; at most 256 are allowed."


def test_the_request_model_is_checked_only_when_it_is_a_string():
    check_request_model({"model": None})
    check_request_model({"model": 5})  # the door's schema says what is wrong with it
    check_request_model({})
    with pytest.raises(InvalidRequestError):
        check_request_model({"model": "m\r\nX-Evil: 1"})


def test_depth_limit_is_exact_and_leaves_room_for_the_translations():
    assert not too_deep(nested_raw(MAX_JSON_DEPTH), orjson.loads(nested_raw(MAX_JSON_DEPTH)))
    deeper = nested_raw(MAX_JSON_DEPTH + 1)
    assert too_deep(deeper, orjson.loads(deeper))
    # What passes can be encoded again even a hundred levels deeper.
    value: object = orjson.loads(nested_raw(MAX_JSON_DEPTH))
    for _ in range(ORJSON_MAX_DEPTH - MAX_JSON_DEPTH):
        value = [value]
    orjson.dumps(value)


def test_many_brackets_side_by_side_are_not_depth():
    raw = orjson.dumps({"items": [[1]] * 5000, "text": "[[[[" * 100})
    assert not too_deep(raw, orjson.loads(raw))


@pytest.mark.parametrize("containers", [MAX_JSON_DEPTH + 1, 255, 1000, 1024, 1100, 5000])
def test_a_body_nested_too_deep_is_one_400_whatever_the_depth(containers):
    with pytest.raises(InvalidRequestError) as caught:
        parse_json_object(nested_raw(containers))
    assert caught.value.code == "json_too_deep"
    assert f"more than {MAX_JSON_DEPTH} levels" in caught.value.message


class TrickleStream:
    """A body that arrives in small pieces and counts what was read from it."""

    def __init__(self, size: int, piece: int = 1000) -> None:
        self.left, self.piece, self.read_total = size, piece, 0

    def read(self, size: int) -> bytes:
        n = min(size, self.piece, self.left)
        self.left -= n
        self.read_total += n
        return b"a" * n


def test_an_unframed_body_over_the_cap_is_refused_after_reading_just_past_it():
    stream = TrickleStream(20_000_000)
    with pytest.raises(PayloadTooLargeError) as caught:
        read_capped(stream, None, 10_000)
    assert caught.value.status == 413 and "10000 bytes (MAX_BODY_BYTES)" in caught.value.message
    assert stream.read_total == 10_001


def test_a_declared_length_over_the_cap_is_refused_before_reading():
    stream = TrickleStream(20_000)
    with pytest.raises(PayloadTooLargeError):
        read_capped(stream, 20_000, 10_000)
    assert stream.read_total == 0


def test_bodies_up_to_the_cap_are_read_whole_in_either_framing():
    assert read_capped(TrickleStream(10_000), None, 10_000) == b"a" * 10_000
    assert read_capped(io.BytesIO(b"x" * 500), 500, 500) == b"x" * 500
    assert read_capped(io.BytesIO(b"x" * 300), 500, 1000) == b"x" * 300  # cut short by client


def test_header_text_keeps_printable_ascii_and_encodes_the_rest():
    assert header_text("coder-model") == "coder-model"
    assert header_text("qwen/qwen3 coder:plus") == "qwen/qwen3 coder:plus"
    assert header_text("модель") == "%D0%BC%D0%BE%D0%B4%D0%B5%D0%BB%D1%8C"
    assert header_text("100%") == "100%25"
    assert header_text("a\r\nb") == "a%0D%0Ab"
