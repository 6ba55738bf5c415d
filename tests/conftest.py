"""Shared fixtures: the fake upstream, creds files, configs, a Flask test client, and a
real gunicorn/gevent proxy process for end-to-end tests."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from qwenproxy import create_app
from qwenproxy.config import Config
from qwenproxy.store import Database
from tests.databases import DATABASE_KINDS, database_url_for
from tests.fake_upstream import FakeUpstream
from tests.upstream.http.raw_server import ca, http, serve  # noqa: F401 - fixtures

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def fake_server() -> Iterator[FakeUpstream]:
    server = FakeUpstream().start()
    yield server
    server.stop()


@pytest.fixture
def fake(fake_server: FakeUpstream) -> FakeUpstream:
    fake_server.reset()
    return fake_server


@pytest.fixture(scope="session")
def fake_b_server() -> Iterator[FakeUpstream]:
    server = FakeUpstream().start()
    yield server
    server.stop()


@pytest.fixture
def fake_b(fake_b_server: FakeUpstream) -> FakeUpstream:
    """A second upstream, standing in for an API-key backend (keys are its valid tokens)."""
    fake_b_server.reset()
    fake_b_server.valid_tokens = {"sk-dash-1", "sk-dash-2"}
    return fake_b_server


def write_creds(path: Path, fake: FakeUpstream, expires_in: float = 3600.0, **extra: Any) -> Path:
    creds = {
        "access_token": "tok-initial",
        "refresh_token": "refresh-initial",
        "token_type": "Bearer",
        "expiry_date": int((time.time() + expires_in) * 1000),
        "resource_url": fake.url,
        **extra,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(creds))
    os.chmod(path, 0o600)
    return path


@pytest.fixture
def creds_path(tmp_path: Path, fake: FakeUpstream) -> Path:
    return write_creds(tmp_path / "qwen" / "oauth_creds.json", fake)


@pytest.fixture
def make_config(creds_path: Path, fake: FakeUpstream, tmp_path: Path) -> Callable[..., Config]:
    def make(**overrides: Any) -> Config:
        values: dict[str, Any] = {
            "qwen_oauth_creds": (creds_path,),
            "qwen_oauth_url": fake.url,
            "qwen_api_base": fake.api_base,
            "upstream_read_timeout": 5.0,
            "upstream_connect_timeout": 2.0,
            "data_dir": tmp_path / "data",
            "stream_keepalive": 30.0,
            "model_list_refresh": 0.0,  # no background model-list reads unless a test asks
        }
        values.update(overrides)
        return Config(**values)

    return make


@pytest.fixture
def client(make_config: Callable[..., Config]):
    app = create_app(make_config())
    return app.test_client()


# --- end-to-end: the real app under gunicorn/gevent ------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ProxyProcess:
    """`python -m qwenproxy serve` (or gunicorn with gunicorn.conf.py, or `command`) on a
    free port; env values of None are left unset."""

    def __init__(
        self,
        env: dict[str, str | None],
        cwd: Path,
        log_path: Path,
        procfile: bool = False,
        command: list[str] | None = None,
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        full_env = {
            "PATH": os.environ.get("PATH", ""),
            "HOME": str(cwd),
            "PYTHONPATH": str(ROOT),
            "HOST": "127.0.0.1",
            "PORT": str(self.port),
            "LOG_LEVEL": "INFO",
            **env,
        }
        full_env = {k: v for k, v in full_env.items() if v is not None}  # None: unset
        if command is None and procfile:
            command = [
                sys.executable,
                "-m",
                "gunicorn",
                "-c",
                str(ROOT / "gunicorn.conf.py"),
                "wsgi:app",
            ]
        elif command is None:
            command = [sys.executable, "-m", "qwenproxy", "serve"]
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            command,
            cwd=cwd,
            env=full_env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._wait_ready()

    def _wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                output = self.output()
                self._log.close()
                raise RuntimeError(f"proxy exited early:\n{output}")
            try:
                if requests.get(self.url + "/health", timeout=0.5).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"proxy did not become ready:\n{self.output()}")

    def output(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self, graceful: bool = False, timeout: float = 15.0) -> int | None:
        """SIGTERM (graceful: in-flight requests finish) or SIGQUIT (quick shutdown)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM if graceful else signal.SIGQUIT)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(5)
        self._log.close()
        return self.process.returncode


@pytest.fixture
def start_proxy(tmp_path: Path, creds_path: Path, fake: FakeUpstream) -> Iterator[Callable]:
    started: list[ProxyProcess] = []

    def start(
        procfile: bool = False, command: list[str] | None = None, cwd: Path | None = None,
        **env: str | None,
    ) -> ProxyProcess:
        base = {
            "QWEN_OAUTH_CREDS": str(creds_path),
            "QWEN_OAUTH_URL": fake.url,
            "QWEN_API_BASE": fake.api_base,
            "UPSTREAM_READ_TIMEOUT": "5",
        }
        base.update(env)
        workdir = tmp_path / f"proxy{len(started)}"
        workdir.mkdir()
        log_path = tmp_path / f"proxy{len(started)}.log"
        proxy = ProxyProcess(base, cwd or workdir, log_path, procfile, command)
        started.append(proxy)
        return proxy

    yield start
    for proxy in started:
        proxy.stop()


@pytest.fixture(params=DATABASE_KINDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return database_url_for(request.param, tmp_path)


@pytest.fixture
def database(database_url: str) -> Iterator[Database]:
    db = Database(database_url)
    yield db
    db.dispose()
