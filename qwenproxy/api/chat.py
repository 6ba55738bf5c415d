"""`POST /v1/chat/completions`, streamed (SSE) or not."""

from __future__ import annotations

import orjson
from flask import Blueprint, Response, request, stream_with_context

from qwenproxy.api.context import require_client, services
from qwenproxy.schemas import load_chat_completion_request

bp = Blueprint("chat", __name__)
bp.before_request(require_client)

SSE_HEADERS = {
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}


def _served_by(route) -> dict[str, str]:
    return {"X-Qwenproxy-Backend": route.backend.name, "X-Qwenproxy-Model": route.model}


@bp.post("/v1/chat/completions")
def chat_completions() -> Response:
    body = load_chat_completion_request(request.get_data(cache=False))
    completions = services().completions
    if body.get("stream"):
        result = completions.stream(body)
        return Response(
            stream_with_context(result.frames),
            mimetype="text/event-stream",
            headers={**SSE_HEADERS, **_served_by(result.route), **result.headers},
        )
    result = completions.complete(body)
    return Response(
        orjson.dumps(result.body),
        mimetype="application/json",
        headers={**_served_by(result.route), **result.headers},
    )
