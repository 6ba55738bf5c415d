"""Service objects of one app, built from a `Config` by `build_services`.

Each service receives its collaborators (HTTP session, clock, ...) as arguments, so tests
can build them with fakes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import requests
from requests.adapters import HTTPAdapter

from qwenproxy import __version__
from qwenproxy.config import Config
from qwenproxy.services.access import ClientAccess
from qwenproxy.services.backends import OpenAICompatibleBackend, qwen_oauth_backend
from qwenproxy.services.completions import CompletionService
from qwenproxy.services.models import QWEN_OAUTH_MODELS
from qwenproxy.services.qwen_auth import CredentialsFile, QwenTokenManager
from qwenproxy.services.router import Router

POOL_SIZE = 1000  # connections kept per upstream host; gevent runs many requests at once


def make_http_session() -> requests.Session:
    """The one `requests.Session` of a process: pooled, no automatic retries."""
    session = requests.Session()
    adapter = HTTPAdapter(pool_connections=16, pool_maxsize=POOL_SIZE, max_retries=0)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    session.trust_env = False  # upstream addresses come from our config only
    return session


@dataclass
class Services:
    config: Config
    http: requests.Session
    access: ClientAccess
    router: Router
    completions: CompletionService
    token_managers: list[QwenTokenManager] = field(default_factory=list)

    def secrets(self) -> Iterator[str]:
        """Every secret the proxy holds right now (for log scrubbing)."""
        yield from self.config.proxy_api_keys
        for manager in self.token_managers:
            creds = manager.cached()
            if creds is not None:
                yield creds.access_token
                yield creds.refresh_token


def build_services(
    config: Config,
    http: requests.Session | None = None,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
) -> Services:
    http = http or make_http_session()
    timeout = (config.upstream_connect_timeout, config.upstream_read_timeout)
    user_agent = config.qwen_user_agent or f"qwenproxy/{__version__}"
    managers = [
        QwenTokenManager(
            CredentialsFile(path),
            http,
            config.qwen_oauth_url,
            config.qwen_api_base,
            timeout=(config.upstream_connect_timeout, 30.0),
            clock=clock,
            sleep=sleep,
        )
        for path in config.qwen_oauth_creds
    ]
    backends: dict[str, OpenAICompatibleBackend] = {
        "qwen-oauth": qwen_oauth_backend(http, managers[0], user_agent, QWEN_OAUTH_MODELS, timeout)
    }
    router = Router(backends, config.llm_backend, config.default_model)
    return Services(
        config=config,
        http=http,
        access=ClientAccess(config.proxy_api_keys, config.trust_proxy_headers),
        router=router,
        completions=CompletionService(router),
        token_managers=managers,
    )
