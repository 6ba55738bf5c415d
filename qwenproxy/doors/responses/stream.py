"""A chat-completions stream as OpenAI Responses stream events (response.created,
output items, text and function-call argument deltas, response.completed)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import orjson

from qwenproxy.doors.responses.answer import (
    INCOMPLETE_REASONS,
    call_item,
    message_item,
    new_id,
    reasoning_item,
    reasoning_part,
    response_object,
    text_part,
    usage_of,
)
from qwenproxy.doors.responses.request import ResponsesRequest
from qwenproxy.doors.tool_arguments import ArgumentStream
from qwenproxy.doors.translator import ChunkTranslator
from qwenproxy.pipeline.events import ToolCallDelta
from qwenproxy.sse import KEEPALIVE_FRAME, encode_event

# --- the stream -----------------------------------------------------------------------


@dataclass
class _Item:
    output_index: int
    id: str
    kind: str  # "message", "call" or "reasoning"
    pieces: list[str] = field(default_factory=list)  # the text, joined when it is needed
    call_id: str = ""
    name: str = ""
    arguments: ArgumentStream = field(default_factory=ArgumentStream)
    started: bool = False
    pending: list[str] = field(default_factory=list)
    closed: bool = False

    @property
    def text(self) -> str:
        return "".join(self.pieces)


class ResponsesStream(ChunkTranslator):
    """A chat-completions stream, chunk by chunk, as Responses events (each with its
    `sequence_number`): response.created, response.in_progress; per reasoning item
    output_item.added, content_part.added, reasoning_text.delta…, reasoning_text.done,
    content_part.done, output_item.done; per
    message item
    output_item.added, content_part.added, output_text.delta…, output_text.done,
    content_part.done, output_item.done; per function call output_item.added,
    function_call_arguments.delta…, .done, output_item.done; then response.completed
    (or response.incomplete) with the whole response and its usage. A failure mid-way
    ends it with response.failed."""

    def __init__(self, request: ResponsesRequest) -> None:
        self.request = request
        self.id = new_id("resp")
        self.created_at = int(time.time())
        self._sequence = 0
        self._items: list[_Item] = []
        self._message: _Item | None = None  # the open message item
        self._thought: _Item | None = None  # the open reasoning item
        self._open_call: _Item | None = None
        self._calls: dict[int, _Item] = {}  # by the upstream's tool-call index
        self._finish: Any = None
        self._usage: Any = None

    # --- StreamTranslator -------------------------------------------------------------

    def start(self) -> list[bytes]:
        response = self._response("in_progress", [])
        return [
            self._event("response.created", response=response),
            self._event("response.in_progress", response=response),
        ]

    def ping(self) -> list[bytes]:
        return [KEEPALIVE_FRAME]

    def done(self) -> list[bytes]:
        out = self._close_open()
        for item in self._calls.values():
            if not item.closed:
                out.extend(self._start_call(item))
                out.extend(self._close_call(item))
        reason = INCOMPLETE_REASONS.get(str(self._finish))
        response = self._response(
            "incomplete" if reason else "completed",
            self._final_items(),
            usage_of(self._usage),
            reason,
        )
        name = "response.incomplete" if reason else "response.completed"
        out.append(self._event(name, response=response))
        return out

    def error(self, error: dict[str, Any]) -> list[bytes]:
        details = {
            "code": str(error.get("code") or error.get("type") or "server_error"),
            "message": str(error.get("message") or "The upstream failed."),
        }
        response = self._response("failed", self._final_items(), error=details)
        return [self._event("response.failed", response=response)]

    # --- items ------------------------------------------------------------------------

    def _reasoning(self, text: str) -> list[bytes]:
        out: list[bytes] = []
        if self._thought is None:
            self._thought, out = self._open_item_with_part(
                "reasoning",
                reasoning_item(new_id("rs"), "", "in_progress"),
                reasoning_part(""),
            )
        return out + self._part_delta(self._thought, "response.reasoning_text.delta", text)

    def _text(self, text: str) -> list[bytes]:
        out: list[bytes] = []
        if self._message is None:
            added = {**message_item(new_id("msg"), "", "in_progress"), "content": []}
            self._message, out = self._open_item_with_part("message", added, text_part(""))
        return out + self._part_delta(
            self._message, "response.output_text.delta", text, logprobs=[]
        )

    def _open_item_with_part(
        self, kind: str, added: dict[str, Any], part: dict[str, Any]
    ) -> tuple[_Item, list[bytes]]:
        """Close what is open, then start an item of one content part (`added` as it is
        announced, `part` empty)."""
        out = self._close_open()
        item = self._new_item(kind, added["id"])
        out.append(
            self._event("response.output_item.added", output_index=item.output_index, item=added)
        )
        out.append(
            self._event(
                "response.content_part.added",
                item_id=item.id,
                output_index=item.output_index,
                content_index=0,
                part=part,
            )
        )
        return item, out

    def _part_delta(self, item: _Item, event: str, text: str, **extra: Any) -> list[bytes]:
        item.pieces.append(text)
        return [
            self._event(
                event,
                item_id=item.id,
                output_index=item.output_index,
                content_index=0,
                delta=text,
                **extra,
            )
        ]

    def _tool_at(self, position: int) -> _Item | None:
        return self._calls.get(position)

    def _new_tool(self, position: int, call: ToolCallDelta) -> _Item:
        item = self._new_item("call", new_id("fc"))
        item.call_id = call.id or new_id("call")
        self._calls[position] = item
        self._open_call = item
        return item

    def _start_tool(self, item: _Item) -> list[bytes]:
        return self._start_call(item)

    def _tool_piece(self, item: _Item, piece: str) -> list[bytes]:
        return self._arguments_delta(item, piece)

    def _is_custom(self, item: _Item) -> bool:
        return self.request.tool_of(item.name)[2] == "custom"

    def _start_call(self, item: _Item) -> list[bytes]:
        if item.started:
            return []
        item.started = True
        added = call_item(self.request, item.id, item.call_id, item.name, "", "in_progress")
        out = [
            self._event("response.output_item.added", output_index=item.output_index, item=added)
        ]
        for piece in item.pending:
            out.extend(self._arguments_delta(item, piece))
        item.pending.clear()
        return out

    def _arguments_delta(self, item: _Item, piece: str) -> list[bytes]:
        if self._is_custom(item):  # its `input` is only known once the JSON is whole
            return []
        return [
            self._event(
                "response.function_call_arguments.delta",
                item_id=item.id,
                output_index=item.output_index,
                delta=piece,
            )
        ]

    def _close_call(self, item: _Item) -> list[bytes]:
        out: list[bytes] = []
        closing = item.arguments.close()
        if closing:
            out.extend(self._arguments_delta(item, closing))
        done = self._call_done_item(item)
        if done["type"] == "custom_tool_call":
            out.append(
                self._event(
                    "response.custom_tool_call_input.done",
                    item_id=item.id,
                    output_index=item.output_index,
                    input=done["input"],
                )
            )
        else:
            out.append(
                self._event(
                    "response.function_call_arguments.done",
                    item_id=item.id,
                    output_index=item.output_index,
                    name=done["name"],
                    arguments=item.arguments.text,
                )
            )
        out.append(
            self._event("response.output_item.done", output_index=item.output_index, item=done)
        )
        item.closed = True
        return out

    def _close_message(self, item: _Item) -> list[bytes]:
        done = message_item(item.id, item.text, "completed")
        return self._close_part_item(
            item, "response.output_text.done", text_part(item.text), done, logprobs=[]
        )

    def _close_reasoning(self, item: _Item) -> list[bytes]:
        done = reasoning_item(item.id, item.text, "completed")
        return self._close_part_item(
            item, "response.reasoning_text.done", reasoning_part(item.text), done
        )

    def _close_part_item(
        self, item: _Item, text_done: str, part: dict[str, Any], done: dict[str, Any], **extra: Any
    ) -> list[bytes]:
        """End an item of one content part: its text, its part, then the item itself."""
        item.closed = True
        common = {"item_id": item.id, "output_index": item.output_index, "content_index": 0}
        return [
            self._event(text_done, **common, text=item.text, **extra),
            self._event("response.content_part.done", **common, part=part),
            self._event("response.output_item.done", output_index=item.output_index, item=done),
        ]

    def _close_open(self) -> list[bytes]:
        out: list[bytes] = []
        if self._thought is not None:
            out.extend(self._close_reasoning(self._thought))
            self._thought = None
        if self._message is not None:
            out.extend(self._close_message(self._message))
            self._message = None
        item, self._open_call = self._open_call, None
        if item is not None and not item.closed:
            out.extend(self._start_call(item))
            out.extend(self._close_call(item))
        return out

    def _call_done_item(self, item: _Item) -> dict[str, Any]:
        return call_item(
            self.request, item.id, item.call_id, item.name, item.arguments.text, "completed"
        )

    def _new_item(self, kind: str, item_id: str) -> _Item:
        item = _Item(len(self._items), item_id, kind)
        self._items.append(item)
        return item

    def _final_items(self) -> list[dict[str, Any]]:
        output = []
        for item in self._items:
            status = "completed" if item.closed else "incomplete"
            if item.kind == "message":
                output.append(message_item(item.id, item.text, status))
            elif item.kind == "reasoning":
                output.append(reasoning_item(item.id, item.text, status))
            else:
                output.append(
                    call_item(
                        self.request, item.id, item.call_id, item.name, item.arguments.text, status
                    )
                )
        return output

    # --- framing ----------------------------------------------------------------------

    def _response(
        self,
        status: str,
        output: list[dict[str, Any]],
        usage: dict[str, Any] | None = None,
        incomplete_reason: str | None = None,
        error: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        return response_object(
            self.request,
            self.id,
            self.created_at,
            status,
            output,
            usage,
            incomplete_reason,
            error,
        )

    def _event(self, event_type: str, **fields: Any) -> bytes:
        payload = {"type": event_type, "sequence_number": self._sequence, **fields}
        self._sequence += 1
        return encode_event(event_type.encode(), orjson.dumps(payload))
