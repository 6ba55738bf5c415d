"""Service objects of one app, built from a `Config` by `build_services`: the backends
that have credentials, the router, sessions, commands and the chat pipeline.
Each service receives its collaborators (HTTP session, clock, database) as arguments, so
tests can build them with fakes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import requests

from qwenproxy import __version__
from qwenproxy.config import Config
from qwenproxy.config.secrets import KnownSecrets, url_secrets
from qwenproxy.edge.access import ClientAccess
from qwenproxy.edge.client_keys import ClientKeyStore
from qwenproxy.edge.dashboard_login import DashboardSessions, LoginThrottle, shared_secret
from qwenproxy.edge.slow_answer import NonStreamKeepalive
from qwenproxy.errors import ProxyError
from qwenproxy.ledger.key_usage import KeyUsage
from qwenproxy.ledger.limits import LimitEngine
from qwenproxy.ledger.metrics import Metrics, build_metrics
from qwenproxy.ledger.prices import PriceTable
from qwenproxy.ledger.upkeep import LedgerUpkeep
from qwenproxy.ledger.writer import NullLedger, UsageLedger  # also registers qp_usage
from qwenproxy.pipeline.accounting import Accounting
from qwenproxy.pipeline.commands.processor import CommandProcessor
from qwenproxy.pipeline.guards.context import ContextGuard
from qwenproxy.pipeline.guards.redaction import SecretRedactor
from qwenproxy.pipeline.guards.tokens import PromptCounter
from qwenproxy.pipeline.messages.prompt_cache import markers_enabled
from qwenproxy.pipeline.quota import QuotaGate
from qwenproxy.pipeline.router import Router, RouteStore
from qwenproxy.pipeline.service import CompletionService, GuardSettings
from qwenproxy.pipeline.sessions import SessionStore
from qwenproxy.store import Database, default_database_url
from qwenproxy.upstream import catalogue as catalog
from qwenproxy.upstream.backends import OpenAICompatibleBackend
from qwenproxy.upstream.catalogue import ModelCatalog
from qwenproxy.upstream.credentials import Credentials, QwenOAuthCredentials, StaticKeyCredentials
from qwenproxy.upstream.http.transport import LeanAdapter
from qwenproxy.upstream.model_facts import ModelFacts, ModelFactsBook
from qwenproxy.upstream.model_lists import ModelListRefresher, model_list_sources
from qwenproxy.upstream.qwen_oauth.tokens import CredentialsFile, QwenTokenManager
from qwenproxy.upstream.specs import (
    effective_default_backend,
    key_backend_specs,
    qwen_oauth_available,
)

log = logging.getLogger(__name__)
POOL_SIZE = 1000  # connections kept per upstream host; gevent runs many requests at once


def make_http_session(config: Config | None = None) -> requests.Session:
    """The one `requests.Session` of a process: pooled keep-alive connections through the
    lean transport (upstream/http/transport.py), no automatic retries; the upstream proxy and
    CA bundle come from `config`."""
    session = requests.Session()
    adapter = LeanAdapter(
        max_idle_per_host=POOL_SIZE,
        proxy=config.upstream_proxy if config else None,
        http_proxy=config.upstream_http_proxy if config else None,
        no_proxy=config.upstream_no_proxy if config else (),
        ca_bundle=str(config.upstream_ca_bundle) if config and config.upstream_ca_bundle else None,
    )
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
    db: Database
    sessions: SessionStore
    token_managers: list[QwenTokenManager] = field(default_factory=list)

    ledger: UsageLedger | NullLedger | None = None
    upkeep: LedgerUpkeep | None = None
    metrics: Metrics | None = None
    # Records what the pipeline never saw (requests refused at the edge); the same
    # Accounting the pipeline records with.
    accounting: Accounting | None = None
    secrets: KnownSecrets = field(default_factory=KnownSecrets)
    nonstream_keepalive: NonStreamKeepalive | None = None  # None: NONSTREAM_KEEPALIVE off
    facts: ModelFactsBook = field(default_factory=ModelFactsBook)
    tokens: PromptCounter = field(default_factory=PromptCounter)
    model_lists: ModelListRefresher | None = None
    quota: QuotaGate | None = None  # None when accounting is off (limits count the ledger)
    client_keys: ClientKeyStore | None = None
    key_usage: KeyUsage | None = None
    dashboard_sessions: DashboardSessions | None = None
    login_throttle: LoginThrottle = field(default_factory=LoginThrottle)


def secrets_of(config: Config, managers: list[QwenTokenManager]) -> Callable[[], Iterator[str]]:
    """Every secret the proxy holds at call time (for redaction and log scrubbing): the
    OAuth tokens are those the managers hold in memory (read no file)."""

    def secrets() -> Iterator[str]:
        yield from config.proxy_api_keys
        for keys in (
            config.dashscope_api_keys,
            config.coding_plan_api_keys,
            config.openrouter_api_keys,
            config.fireworks_api_keys,
        ):
            yield from keys
        for custom in config.custom_backends:
            yield from custom.api_keys
        for proxy in (config.upstream_proxy, config.upstream_http_proxy):
            if not proxy:
                continue
            yield from url_secrets(proxy)
        for manager in managers:
            creds = manager.cached()
            if creds is None:  # not read yet: nothing of it can be in a log or a prompt
                continue
            yield creds.access_token
            yield creds.refresh_token

    return secrets


def facts_overrides(config: Config) -> dict[str, dict[str, ModelFacts]]:
    """MODEL_INFO as facts per backend and model."""
    return {
        backend: {
            model: ModelFacts(info.get("context_length"), info.get("max_output_tokens"))
            for model, info in table.items()
        }
        for backend, table in config.model_info.items()
    }


def _token_managers(
    config: Config,
    http: requests.Session,
    clock: Callable[[], float],
    sleep: Callable[[float], None],
    metrics: Any,
) -> tuple[list[QwenTokenManager], KnownSecrets]:
    """One token manager per qwen-code login, and the one matcher of the proxy's secrets,
    built again whenever a login's tokens change."""
    managers: list[QwenTokenManager] = []
    secrets = KnownSecrets(secrets_of(config, managers))
    managers.extend(
        QwenTokenManager(
            CredentialsFile(path),
            http,
            config.qwen_oauth_url,
            config.qwen_api_base,
            clock=clock,
            sleep=sleep,
            on_refresh=metrics.token_refresh,
            on_credentials=secrets.refresh,
        )
        for path in config.qwen_oauth_creds
    )
    for manager in managers:  # read each login now: its tokens are hidden from the start
        try:
            manager.current()
        except ProxyError:  # no login yet: it is read (and its tokens hidden) when made
            pass
    return managers, secrets


def _backends(
    config: Config,
    http: requests.Session,
    managers: list[QwenTokenManager],
    specs: list[Any],
    clock: Callable[[], float],
) -> dict[str, OpenAICompatibleBackend]:
    """Every backend: qwen-oauth over the logins, and one per key backend spec (its keys
    in rotation, or none for a keyless upstream). Pauses run on the services' clock."""
    timeout = (config.upstream_connect_timeout, config.upstream_read_timeout)
    user_agent = config.qwen_user_agent or catalog.qwen_code_user_agent()
    oauth_catalog = ModelCatalog(catalog.QWEN_OAUTH_MODELS, catalog.QWEN_OAUTH_ALIASES)
    oauth_accounts: list[Credentials] = [QwenOAuthCredentials(m, user_agent) for m in managers]
    backends = {
        "qwen-oauth": OpenAICompatibleBackend(
            "qwen-oauth",
            http,
            oauth_accounts,
            oauth_catalog.with_overrides(config.model_aliases.get("qwen-oauth")),
            timeout,
            clock=clock,
            cache_markers=markers_enabled("qwen-oauth", config.cache_markers),
        )
    }
    for spec in specs:
        accounts: list[Credentials] = [
            StaticKeyCredentials(spec.base_url, key, spec.headers) for key in spec.keys
        ] or [StaticKeyCredentials(spec.base_url, None, spec.headers)]
        backends[spec.name] = OpenAICompatibleBackend(
            spec.name,
            http,
            accounts,
            spec.catalog,
            timeout,
            clock=clock,
            cache_markers=markers_enabled(spec.name, config.cache_markers),
        )
    return backends


def _ledger(
    config: Config, db: Database, clock: Callable[[], float]
) -> tuple[UsageLedger | NullLedger, LedgerUpkeep | None]:
    """The usage ledger's writer and its upkeep, started (nothing with accounting off)."""
    if config.disable_accounting:
        ledger = NullLedger()
        ledger.start()
        return ledger, None
    writer = UsageLedger(db, clock=clock, log_format=config.log_format)
    writer.start()
    upkeep = LedgerUpkeep(db, config.ledger_retention, clock)
    upkeep.start()
    return writer, upkeep


def _quota(
    config: Config,
    db: Database,
    ledger: UsageLedger | NullLedger,
    backends: dict[str, OpenAICompatibleBackend],
    clock: Callable[[], float],
) -> QuotaGate | None:
    """Quota windows and client-key budgets on the limit engine, which counts the ledger:
    None with accounting off."""
    windows = config.effective_quota_windows()
    if not isinstance(ledger, UsageLedger):
        if windows:
            log.warning(
                "quota windows are not enforced: DISABLE_ACCOUNTING=true (they count the ledger)"
            )
        return None
    engine = LimitEngine(db, clock, flush=ledger.flush)
    ledger.batch_hooks.append(engine.hand_back_sql)
    key_ids = {
        name: [backends[name].key_id(i) or str(i) for i in range(len(backends[name].accounts))]
        for name in windows
        if name in backends
    }
    return QuotaGate(engine, windows, key_ids, clock)


def _edge(config: Config, db: Database, clock: Callable[[], float]) -> dict[str, Any]:
    """The edge's services: who may call (admin keys and the named keys' store, started),
    one key's usage, dashboard sessions and the non-stream keep-alive."""
    client_keys = ClientKeyStore(db, config.client_keys_refresh, clock=clock)
    client_keys.start()
    keepalive = config.nonstream_keepalive
    return {
        "access": ClientAccess(config.proxy_api_keys, config.trust_proxy_headers, client_keys),
        "client_keys": client_keys,
        "key_usage": KeyUsage(db, clock, enabled=not config.disable_accounting),
        "dashboard_sessions": DashboardSessions(
            lambda: shared_secret(db, "dashboard_session", clock),
            config.dashboard_session_ttl,
            clock,
        ),
        "nonstream_keepalive": NonStreamKeepalive(keepalive) if keepalive else None,
    }


def _commands(config: Config, router: Router, routes: RouteStore) -> CommandProcessor:
    return CommandProcessor(
        config.command_prefix,
        router,
        routes,
        __version__,
        defaults=lambda: {
            "redact_api_keys": config.redact_api_keys_in_prompts,
            "loop_detection": config.loop_detection,
        },
    )


def _guard_settings(config: Config) -> GuardSettings:
    return GuardSettings(
        loop_detection=config.loop_detection,
        loop_min_pattern=config.loop_min_pattern,
        loop_min_repeats=config.loop_min_repeats,
        loop_short_pattern=config.loop_short_pattern,
        loop_short_repeats=config.loop_short_repeats,
        redact_api_keys=config.redact_api_keys_in_prompts,
    )


def _router(
    config: Config, db: Database, backends: dict[str, OpenAICompatibleBackend], clock: Any
) -> tuple[Router, RouteStore]:
    routes = RouteStore(db, config.failover_routes, clock)
    hidden = () if qwen_oauth_available(config) else ("qwen-oauth",)
    router = Router(
        backends,
        effective_default_backend(config, [n for n in backends if n != "qwen-oauth"]),
        config.default_model,
        known_backends=config.backend_names(),
        routes=routes,
        unlisted=hidden,
    )
    return router, routes


def build_services(
    config: Config,
    http: requests.Session | None = None,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
) -> Services:
    http = http or make_http_session(config)
    metrics = build_metrics(config.data_dir)
    managers, secrets = _token_managers(config, http, clock, sleep, metrics)
    specs = key_backend_specs(config)
    backends = _backends(config, http, managers, specs, clock)
    db = Database(config.database_url or default_database_url(config.data_dir))
    router, routes = _router(config, db, backends, clock)
    sessions = SessionStore(db, config.session_ttl, clock)
    facts = ModelFactsBook(
        overrides=facts_overrides(config),
        upstream_name=lambda name, model: (
            backends[name].upstream_model(model) if name in backends else model
        ),
    )
    tokens = PromptCounter()
    ledger, upkeep = _ledger(config, db, clock)
    accounting = Accounting(
        ledger, metrics, known_model=router.is_model_name, prices=PriceTable.for_config(config)
    )
    quota = _quota(config, db, ledger, backends, clock)
    completions = CompletionService(
        router,
        sessions,
        _commands(config, router, routes),
        redactor=SecretRedactor(secrets),
        guards=_guard_settings(config),
        stream_keepalive=config.stream_keepalive,
        accounting=accounting,
        context_guard=ContextGuard(
            tokens, enabled=config.context_guard, floor=config.context_min_output_tokens
        ),
        facts=facts,
        quota=quota,
    )
    return Services(
        config=config,
        http=http,
        router=router,
        completions=completions,
        db=db,
        sessions=sessions,
        token_managers=managers,
        ledger=ledger,
        upkeep=upkeep,
        metrics=metrics,
        accounting=accounting,
        secrets=secrets,
        facts=facts,
        tokens=tokens,
        model_lists=ModelListRefresher(
            db, http, model_list_sources(specs), facts, config.model_list_refresh, clock=clock
        ),
        quota=quota,
        **_edge(config, db, clock),
    )
