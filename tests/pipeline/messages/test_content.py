"""content_text / text_parts / is_text_part: which parts count as text, and how they join."""

from __future__ import annotations

from qwenproxy.pipeline.messages.content import ANY_TYPE, content_text, is_text_part, text_parts

PARTS = [
    {"type": "text", "text": "a"},
    {"type": "image_url", "image_url": {"url": "data:x"}},
    {"type": "input_text", "text": "b"},
    "not a part",
    {"type": "output_text", "text": "c"},
    {"type": "text", "text": None},
    {"type": "tool_result", "text": "d"},
]


def test_string_content_is_its_own_text():
    assert content_text("hello") == "hello"
    assert text_parts("hello") == [(None, "hello")]


def test_text_parts_of_the_three_text_types_join_with_the_separator():
    assert content_text(PARTS) == "a\nb\nc"
    assert content_text(PARTS, separator="") == "abc"


def test_text_parts_keep_their_index_in_the_list():
    assert text_parts(PARTS) == [(0, "a"), (2, "b"), (4, "c")]


def test_any_type_reads_every_part_with_a_string_text():
    assert content_text(PARTS, types=ANY_TYPE) == "a\nb\nc\nd"


def test_a_narrower_set_of_types_can_be_asked_for():
    assert content_text(PARTS, types={"text"}) == "a"


def test_other_content_has_no_text():
    for content in (None, 5, {"type": "text", "text": "x"}, []):
        assert content_text(content) == ""
        assert text_parts(content) == []


def test_is_text_part_wants_an_object_with_a_string_text():
    assert is_text_part({"type": "text", "text": ""})
    assert not is_text_part({"type": "text", "text": 5})
    assert not is_text_part({"type": "image_url", "text": "x"})
    assert is_text_part({"type": "image_url", "text": "x"}, ANY_TYPE)
    assert not is_text_part(["text"])
