"""The text of a message's content, read in one place. Content is a string, or a list of
parts; a text part is an object with a string `text` and a `type` in TEXT_PART_TYPES:
`text` (chat completions, Anthropic), `input_text` and `output_text` (the Responses API's
user and assistant parts, which some clients send to the chat door too). Callers that
must read every part that carries a string `text`, whatever its type (a tool's result,
the token counter), pass `types=ANY_TYPE`. Anything else (images, files, parts that are
not objects, a `text` that is not a string) is not text and is skipped, never an error.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

TEXT_PART_TYPES: frozenset[str] = frozenset({"text", "input_text", "output_text"})
ANY_TYPE = None  # `types=ANY_TYPE`: every part with a string `text` counts
SYSTEM_ROLES = ("system", "developer")  # the roles whose content is the system prompt


def is_text_part(part: Any, types: Collection[str] | None = TEXT_PART_TYPES) -> bool:
    """True if `part` is an object with a string `text` (and a `type` in `types`)."""
    return (
        isinstance(part, dict)
        and isinstance(part.get("text"), str)
        and (types is None or part.get("type") in types)
    )


def text_parts(
    content: Any, types: Collection[str] | None = TEXT_PART_TYPES
) -> list[tuple[int | None, str]]:
    """(index in the list, text) of each text part; string content is one `(None, text)`."""
    if isinstance(content, str):
        return [(None, content)]
    if isinstance(content, list):
        return [(i, part["text"]) for i, part in enumerate(content) if is_text_part(part, types)]
    return []


def content_text(
    content: Any, separator: str = "\n", types: Collection[str] | None = TEXT_PART_TYPES
) -> str:
    """The text of `content`: the string itself, or its text parts joined by `separator`
    (a request's parts are paragraphs, "\\n"; an answer's parts are pieces of one text,
    ""). Anything else is ""."""
    if isinstance(content, str):
        return content
    return separator.join(text for _, text in text_parts(content, types))
