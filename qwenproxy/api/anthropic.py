"""The Anthropic Messages API door for Claude Code and the `anthropic` SDK:
`POST /v1/messages` (streamed or not), `POST /v1/messages/count_tokens` (Qwen's token
count of the translated prompt) and `HEAD /api/hello`. Errors leave in Anthropic's shape
(api/__init__.py registers `error_body_for` for this blueprint with the one handler)."""

from __future__ import annotations

from flask import Blueprint, Response

from qwenproxy.api.context import request_json, require_client, services, translated_door
from qwenproxy.doors.anthropic.answer import error_body_for, to_message
from qwenproxy.doors.anthropic.request import to_chat_request
from qwenproxy.doors.anthropic.stream import AnthropicStream
from qwenproxy.edge.schemas import load_anthropic_messages_request
from qwenproxy.pipeline.guards.tokens import REPLY_PRIMER

bp = Blueprint("anthropic", __name__)
bp.before_request(require_client)

# Claude Code checks that its base URL answers; no key needed, nothing revealed.
hello_bp = Blueprint("anthropic_hello", __name__)


@hello_bp.route("/api/hello", methods=["GET", "HEAD"])
def hello() -> Response:
    return Response(status=200)


@bp.post("/v1/messages")
def messages() -> Response:
    return translated_door(
        to_chat_request,
        AnthropicStream,
        to_message,
        error_body_for,
        load_anthropic_messages_request,
    )


@bp.post("/v1/messages/count_tokens")
def count_tokens() -> dict[str, int]:
    """The prompt as the upstream will see it (translated like /v1/messages), counted
    with Qwen's vocabulary and chat template, without the answer's primer."""
    body = request_json(load_anthropic_messages_request)
    translated = to_chat_request(body, services().config.anthropic_model_map)
    chat = translated.chat
    counter = services().tokens
    total = counter.count_chat_off_hub(chat.get("messages") or [], chat.get("tools"))
    return {"input_tokens": max(1, total - REPLY_PRIMER)}

