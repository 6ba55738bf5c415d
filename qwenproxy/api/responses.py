"""The OpenAI Responses API door (stateless) for Codex CLI and `client.responses.create`:
`POST /v1/responses`, streamed or not. Errors keep the OpenAI shape."""

from __future__ import annotations

from flask import Blueprint, Response

from qwenproxy.api.context import require_client, translated_door
from qwenproxy.doors.responses.answer import to_response
from qwenproxy.doors.responses.request import to_chat_request
from qwenproxy.doors.responses.stream import ResponsesStream
from qwenproxy.edge.schemas import load_responses_request

bp = Blueprint("responses", __name__)
bp.before_request(require_client)


@bp.post("/v1/responses")
def create_response() -> Response:
    return translated_door(
        to_chat_request, ResponsesStream, to_response, load=load_responses_request
    )
