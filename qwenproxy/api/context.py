"""What views share: the services of the current app and the client check."""

from __future__ import annotations

from flask import current_app, g, request

from qwenproxy.services.container import Services


def services() -> Services:
    return current_app.extensions["qwenproxy"]


def require_client() -> None:
    """`before_request` hook of the API blueprints: 401/403 unless the client may pass."""
    g.client_id = services().access.check(request.headers, request.remote_addr)
