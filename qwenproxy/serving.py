"""gunicorn settings shared by the Procfile (`gunicorn.conf.py`) and `python -m qwenproxy
serve`, and the embedded gunicorn application the CLI runs. Imports nothing that opens
sockets or pulls in `ssl`: gunicorn's master must stay unpatched-safe for gevent workers.
"""

from __future__ import annotations

from typing import Any

from qwenproxy.config import Config

WORKER_CONNECTIONS = 4000  # concurrent connections per gevent worker


def bind_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def gunicorn_settings(config: Config) -> dict[str, Any]:
    return {
        "bind": [bind_address(config.host, config.port)],
        "workers": config.workers,
        "worker_class": "gevent",
        "worker_connections": WORKER_CONNECTIONS,
        "graceful_timeout": max(1, round(config.graceful_timeout)),
        "timeout": 60,
        # Idle keep-alive connections hold a graceful shutdown open until they time out.
        "keepalive": 10,
        "loglevel": config.log_level.lower(),
        "errorlog": "-",
        "accesslog": None,
        "proc_name": "qwenproxy",
    }


def run_gunicorn(config: Config) -> None:
    """Serve `create_app(config)` under gunicorn's gevent workers; returns on shutdown."""
    from gunicorn.app.base import BaseApplication

    class ProxyServer(BaseApplication):
        def load_config(self) -> None:
            for key, value in gunicorn_settings(config).items():
                self.cfg.set(key, value)

        def load(self) -> Any:
            from qwenproxy import create_app

            return create_app(config)

    ProxyServer().run()
