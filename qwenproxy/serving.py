"""gunicorn settings shared by the Procfile (`gunicorn.conf.py`) and `python -m qwenproxy
serve`, and the embedded gunicorn application the CLI runs. Imports nothing that opens
sockets or pulls in `ssl`: gunicorn's master must stay unpatched-safe for gevent workers.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from qwenproxy.config import Config
from qwenproxy.hosting import startup_warnings

WORKER_CONNECTIONS = 4000  # concurrent connections per gevent worker
# gunicorn's gevent worker, answering what gunicorn itself refuses with JSON and a ledger row.
WORKER_CLASS = "qwenproxy.edge.worker.EdgeGeventWorker"
# gunicorn's limits on a request's head (its defaults, set here so that the worker's
# 414/431 answers can name them): request line bytes, header fields, bytes per field.
LIMIT_REQUEST_LINE = 4094
LIMIT_REQUEST_FIELDS = 100
LIMIT_REQUEST_FIELD_SIZE = 8190
METRICS_DIRNAME = "metrics"  # under the data dir: the workers' Prometheus value files
# prometheus_client reads this when its metric values are created (in the workers).
PROMETHEUS_MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# The per-process files of gauges whose multiprocess mode starts with "live" (see
# prometheus_client.multiprocess.mark_process_dead, which this mirrors).
_LIVE_GAUGE_FILES = ("liveall", "livemin", "livemax", "livesum", "livemostrecent")


def bind_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def metrics_dir(data_dir: Path) -> Path:
    """Where gunicorn's workers keep their Prometheus values (multiprocess mode)."""
    return Path(data_dir).expanduser().resolve() / METRICS_DIRNAME


def prepare_metrics_dir(directory: Path) -> None:
    """Master, before any worker starts: empty the directory (counters start at zero with
    the server) and point prometheus_client in the workers, which inherit it, at it."""
    directory.mkdir(parents=True, exist_ok=True)
    for leftover in directory.glob("*.db"):
        leftover.unlink(missing_ok=True)
    os.environ[PROMETHEUS_MULTIPROC_ENV] = str(directory)


def mark_worker_dead(directory: Path, pid: int) -> None:
    """Master, after a worker exited: drop its live gauges (open streams), keep its counters.

    Does what `prometheus_client.multiprocess.mark_process_dead(pid, directory)` does
    without importing prometheus_client, which imports `ssl`, into the master: workers
    forked afterwards would then warn that gevent patched `ssl` too late.
    """
    for mode in _LIVE_GAUGE_FILES:
        (directory / f"gauge_{mode}_{pid}.db").unlink(missing_ok=True)


def close_worker_services(worker: Any) -> None:
    """Worker, on its way out: write the usage rows still queued."""
    services = getattr(getattr(worker, "wsgi", None), "extensions", {}).get("qwenproxy")
    for name in ("upkeep", "ledger"):
        part = getattr(services, name, None)
        if part is not None:
            part.close()


def listening_hosts(addresses: list[Any]) -> list[str]:
    """The hosts of gunicorn's TCP binds (`server.cfg.address`: (host, port) tuples, or a
    path or file descriptor for other sockets, which are left out)."""
    return [str(address[0]) for address in addresses if isinstance(address, tuple)]


def gunicorn_settings(config: Config) -> dict[str, Any]:
    directory = metrics_dir(config.data_dir)

    def on_starting(server: Any) -> None:
        prepare_metrics_dir(directory)
        # The master runs this once per start, whatever the number of workers; the binds
        # are the ones gunicorn uses, a `--bind` on its command line (the Procfile) included.
        for warning in startup_warnings(config, listening_hosts(server.cfg.address)):
            server.log.warning(warning)

    def child_exit(server: Any, worker: Any) -> None:
        mark_worker_dead(directory, worker.pid)

    def worker_exit(server: Any, worker: Any) -> None:
        close_worker_services(worker)

    return {
        "bind": [bind_address(config.host, config.port)],
        "workers": config.workers,
        "worker_class": WORKER_CLASS,
        "limit_request_line": LIMIT_REQUEST_LINE,
        "limit_request_fields": LIMIT_REQUEST_FIELDS,
        "limit_request_field_size": LIMIT_REQUEST_FIELD_SIZE,
        "worker_connections": WORKER_CONNECTIONS,
        "graceful_timeout": max(1, round(config.graceful_timeout)),
        "timeout": 60,
        # Idle keep-alive connections hold a graceful shutdown open until they time out.
        "keepalive": 10,
        "loglevel": config.log_level.lower(),
        "errorlog": "-",
        "accesslog": None,
        "proc_name": "qwenproxy",
        "on_starting": on_starting,
        "child_exit": child_exit,
        "worker_exit": worker_exit,
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
