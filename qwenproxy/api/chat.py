"""`POST /v1/chat/completions`, streamed (SSE) or not."""

from __future__ import annotations

from flask import Blueprint, Response

from qwenproxy.api.context import request_context, request_json, require_client, run_pipeline
from qwenproxy.edge.schemas import load_chat_completion_request

bp = Blueprint("chat", __name__)
bp.before_request(require_client)


@bp.post("/v1/chat/completions")
def chat_completions() -> Response:
    body = request_json(load_chat_completion_request)
    return run_pipeline(body, request_context())
