"""Tool-call arguments: parsed whole, or streamed so that the pieces join to one object."""

from __future__ import annotations

import json

import pytest

from qwenproxy.doors.tool_arguments import ArgumentStream, parse_tool_input


def streamed(pieces) -> str:
    stream = ArgumentStream()
    out = "".join(stream.feed(piece) for piece in pieces) + stream.close()
    assert out == stream.text
    return out


@pytest.mark.parametrize(
    "pieces, expected",
    [
        (['{"city": "Paris"}'], {"city": "Paris"}),
        (['{"ci', 'ty": "Pa', "ris", '"', "}"], {"city": "Paris"}),
        (["", '{"a":', "", " [1, {", '"b": "}]\\""}', "]}"], {"a": [1, {"b": '}]"'}]}),
        ([], {}),
        (["", "  "], {}),
        (['{"a": 1}', '{"a": 1}'], {"a": 1}),  # repeated whole at the end
        (['"{\\"a\\": 1}"'], {"a": 1}),  # encoded twice
        (["not json"], {"raw": "not json"}),
        (["[1, 2]"], {"raw": "[1, 2]"}),
        ([{"a": 1}], {"a": 1}),  # an object, not a string
    ],
)
def test_streamed_pieces_always_join_to_one_json_object(pieces, expected):
    assert json.loads(streamed(pieces)) == expected


@pytest.mark.parametrize(
    "cut",
    [
        '{"path": "/tmp/a',
        '{"path": "/tmp/a\\',
        '{"pa',
        '{"path"',
        '{"path":',
        '{"n": 12.',
        '{"flag": tr',
        '{"a": 1,',
        '{"a": [1,',
        '{"a": {"b": [',
    ],
)
def test_an_object_cut_short_is_closed_into_valid_json(cut):
    assert isinstance(json.loads(streamed([cut])), dict)


def test_pieces_are_passed_on_as_they_come():
    stream = ArgumentStream()
    assert stream.feed('{"a"') == '{"a"'
    assert stream.feed(": 1}") == ": 1}"
    assert stream.feed("garbage after the end") == ""
    assert stream.close() == ""


@pytest.mark.parametrize(
    "arguments, expected",
    [
        ('{"a": 1}', {"a": 1}),
        ("", {}),
        (None, {}),
        ({"a": 1}, {"a": 1}),
        ("{oops", {"raw": "{oops"}),
        ("3", {"raw": "3"}),
    ],
)
def test_parse_tool_input_gives_an_object(arguments, expected):
    assert parse_tool_input(arguments) == expected
