"""`GET /v1/models` and `GET /v1/models/<id>`: every enabled backend's models."""

from __future__ import annotations

from typing import Any

from flask import Blueprint

from qwenproxy.api.context import require_client, services
from qwenproxy.errors import ModelNotFoundError

bp = Blueprint("models", __name__)
bp.before_request(require_client)

CREATED = 1700000000  # a fixed timestamp: these entries describe names, not releases


def _entry(model_id: str, owner: str) -> dict[str, Any]:
    """One model, with OpenRouter's field names for its limits (null when unknown)."""
    facts = services().facts.facts(owner, model_id.split(":", 1)[1])
    return {
        "id": model_id,
        "object": "model",
        "created": CREATED,
        "owned_by": owner,
        "context_length": facts.context_length,
        "max_output_tokens": facts.max_output_tokens,
    }


@bp.get("/v1/models")
def list_models() -> dict[str, Any]:
    entries = [_entry(mid, owner) for mid, owner in services().router.model_ids()]
    return {"object": "list", "data": entries}


@bp.get("/v1/models/<path:model_id>")
def get_model(model_id: str) -> dict[str, Any]:
    router = services().router
    for mid, owner in router.model_ids():
        bare = mid.split(":", 1)[1]
        if model_id == mid or (owner == router.default_backend and model_id == bare):
            return _entry(mid, owner)
    raise ModelNotFoundError(f"The model {model_id!r} does not exist on this proxy.", param="model")
