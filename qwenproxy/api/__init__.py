"""The HTTP edge: one blueprint per API area, plus the error handlers they share."""

from __future__ import annotations

from flask import Flask

from qwenproxy.api import anthropic, chat, dashboard, health, models, responses, usage
from qwenproxy.api.errors import register_error_handlers
from qwenproxy.doors.anthropic.answer import error_body_for


def register_api(app: Flask) -> None:
    register_error_handlers(app, {anthropic.bp.name: error_body_for})
    app.register_blueprint(health.bp)
    app.register_blueprint(models.bp)
    app.register_blueprint(chat.bp)
    app.register_blueprint(anthropic.bp)
    app.register_blueprint(anthropic.hello_bp)
    app.register_blueprint(responses.bp)
    app.register_blueprint(usage.bp)
    app.register_blueprint(dashboard.bp)
