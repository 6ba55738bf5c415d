"""qwenproxy: an OpenAI-compatible proxy to Qwen models (qwen-code OAuth, DashScope,
and any OpenAI-compatible upstream)."""

from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.1.0"

if TYPE_CHECKING:
    from flask import Flask

    from qwenproxy.config import Config
    from qwenproxy.container import Services


def create_app(config: Config | None = None, services: Services | None = None) -> Flask:
    """Build the WSGI app. Imports happen here, so that `python -m qwenproxy serve` and
    gunicorn's master never import `requests`/`ssl` before gevent patches the worker."""
    from flask import Flask

    from qwenproxy.api import register_api
    from qwenproxy.config import Config
    from qwenproxy.container import build_services
    from qwenproxy.logs import configure_logging

    config = config or Config.from_env()
    services = services or build_services(config)
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = config.max_body_bytes
    app.json.sort_keys = False
    app.extensions["qwenproxy"] = services
    services.tokens.warm_up()  # Qwen's vocabulary, in a background thread of this worker
    if services.model_lists is not None:
        services.model_lists.start()  # the upstreams' model lists, in the background
    configure_logging(config.log_level, services.secrets, config.log_format)
    register_api(app)
    return app
