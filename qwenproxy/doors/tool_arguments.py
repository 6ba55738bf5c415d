"""Tool-call arguments on their way from an upstream (a JSON string, sent whole, split
oddly, empty, or not JSON at all) to clients that need one JSON object: parsed whole, or
passed on piece by piece so that the pieces always join to valid JSON.
"""

from __future__ import annotations

from typing import Any

import orjson


def arguments_text(arguments: Any) -> str:
    """An upstream's `arguments` as text (some upstreams send an object, not a string)."""
    if arguments is None:
        return ""
    if isinstance(arguments, str):
        return arguments
    return orjson.dumps(arguments).decode()


def parse_tool_input(arguments: Any) -> dict[str, Any]:
    """The arguments as a JSON object: `{}` when empty, `{"raw": text}` when not an object."""
    if isinstance(arguments, dict):
        return arguments
    text = arguments_text(arguments).strip()
    if not text:
        return {}
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return {"raw": text}
    if isinstance(value, str):  # JSON encoded twice
        try:
            inner = orjson.loads(value)
        except orjson.JSONDecodeError:
            inner = None
        if isinstance(inner, dict):
            return inner
    if isinstance(value, dict):
        return value
    return {"raw": text}


class ArgumentStream:
    """One tool call's arguments, fed as the upstream sends them.

    Text that starts an object (`{`) is passed on as it comes, while a small scanner
    follows strings and nesting: pieces an upstream sends after the object ended (the
    arguments repeated whole at the end) are dropped, and an object cut short (max_tokens)
    is closed at `close()`. Anything else — nothing at all, a JSON string, plain text — is
    held and sent at `close()` as one object (`{}`, the decoded object, `{"raw": text}`).
    `text` is everything passed on: one valid JSON object once closed.
    """

    __slots__ = (
        "_escape",
        "_held",
        "_in_string",
        "_key",
        "_last",
        "_literal",
        "_mode",
        "_stack",
        "text",
    )

    def __init__(self) -> None:
        self.text = ""
        self._held = ""
        self._mode = "undecided"  # "stream", "hold" or "done"
        self._stack: list[str] = []  # open "{" and "["
        self._in_string = False
        self._escape = False
        self._key = False  # the open (or last closed) string is an object key
        self._last = ""  # last significant character outside strings ('"' after a string)
        self._literal = ""  # the number / true / false / null being read

    def feed(self, piece: Any) -> str:
        """What to pass on now for this piece ("" for nothing)."""
        piece = arguments_text(piece)
        if not piece or self._mode == "done":
            return ""
        if self._mode == "hold":
            self._held += piece
            return ""
        if self._mode == "undecided":
            piece = piece.lstrip()
            if not piece:
                return ""
            if piece[0] != "{":
                self._mode, self._held = "hold", piece
                return ""
            self._mode = "stream"
        end = self._scan(piece)
        if end is not None:
            piece, self._mode = piece[:end], "done"
        self.text += piece
        return piece

    def close(self) -> str:
        """What to pass on last, so that `text` is one complete JSON object."""
        if self._mode in ("undecided", "hold"):
            closing = orjson.dumps(parse_tool_input(self._held)).decode()
        elif self._mode == "stream":
            closing = self._closing()
        else:
            closing = ""
        self._mode = "done"
        self.text += closing
        return closing

    def _scan(self, piece: str) -> int | None:
        """Follow the JSON; the index just past the top-level object's end, if it ends."""
        stack = self._stack
        for i, ch in enumerate(piece):
            if self._in_string:
                if self._escape:
                    self._escape = False
                elif ch == "\\":
                    self._escape = True
                elif ch == '"':
                    self._in_string, self._last = False, '"'
                continue
            if ch in " \t\r\n":
                continue
            if ch == '"':
                self._in_string = True
                self._key = bool(stack) and stack[-1] == "{" and self._last in "{,"
                self._literal = ""
            elif ch in "{[":
                stack.append(ch)
            elif ch in "}]":
                if stack:
                    stack.pop()
                if not stack:
                    return i + 1
            if ch in ",:{}[]":
                self._literal = ""
            elif ch != '"':
                self._literal += ch
            self._last = ch
        return None

    def _closing(self) -> str:
        """Best effort to end an object that was cut off mid-way."""
        suffix = ""
        last = self._last
        if self._in_string:
            suffix, last = ('\\"' if self._escape else '"'), '"'
        elif self._literal:
            suffix = _literal_completion(self._literal)
            last = "0"
        if last == '"' and self._key:
            suffix += ":null"
        elif last == ":":
            suffix += "null"
        elif last == ",":
            suffix += '"":null' if self._stack and self._stack[-1] == "{" else "null"
        closers = {"{": "}", "[": "]"}
        return suffix + "".join(closers[c] for c in reversed(self._stack))


def _literal_completion(literal: str) -> str:
    for word in ("true", "false", "null"):
        if word.startswith(literal):
            return word[len(literal) :]
    if literal[-1] in ".eE+-":
        return "0"
    return ""
