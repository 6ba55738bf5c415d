"""The OpenAI Responses API door (stateless) for Codex CLI and `client.responses.create`:
`POST /v1/responses`, streamed or not. Errors keep the OpenAI shape."""

from __future__ import annotations

from flask import Blueprint, Response, request

from qwenproxy.api.context import pipeline_response, request_context, require_client, services
from qwenproxy.schemas import parse_json_object
from qwenproxy.services.pipeline_frames import translate_frames
from qwenproxy.services.responses_format import to_chat_request, to_response
from qwenproxy.services.responses_stream import ResponsesStream

bp = Blueprint("responses", __name__)
bp.before_request(require_client)


@bp.post("/v1/responses")
def create_response() -> Response:
    translated = to_chat_request(
        parse_json_object(request.get_data(cache=False)),
        services().config.anthropic_model_map,
    )
    result = services().completions.handle(
        translated.chat, request_context(requested_model=translated.model)
    )
    return pipeline_response(
        result,
        lambda frames: translate_frames(frames, ResponsesStream(translated)),
        lambda body: to_response(body, translated),
    )
