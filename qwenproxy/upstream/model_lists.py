"""The upstreams' own model lists, read in the background and cached in the database, so
new models (and their windows) are known before the built-in tables list them.

- OpenRouter: `GET /api/v1/models` lists every model with `context_length`,
  `top_provider.max_completion_tokens` and `pricing` (https://openrouter.ai/docs/api-
  reference/list-available-models).
- DashScope / Model Studio (OpenAI-compatible mode) and the Coding Plan: `GET /models`
  lists ids only (https://www.alibabacloud.com/help/en/model-studio/compatibility-of-
  openai-with-dashscope).
- Custom (vLLM and the like): `GET /models`; vLLM adds `max_model_len` to each entry
  (vLLM's OpenAI-compatible server, `ModelCard`).

Never on the request path: one background thread (a greenlet under gevent) per worker
reads the cache every CHECK_SECONDS and refetches a backend's list only when the cached
copy is older than the refresh interval. Workers and instances share the cache, and a
worker first claims a stale entry (a conditional UPDATE of `checked_at`), so one of them
fetches while the others read its result. An unreachable list changes nothing; it is
tried again after RETRY_SECONDS.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
import requests
import sqlalchemy as sa

from qwenproxy.background import BackgroundLoop
from qwenproxy.store import Database, describe_db_error, metadata
from qwenproxy.upstream.model_facts import ModelFacts, ModelFactsBook

log = logging.getLogger(__name__)

model_lists_table = sa.Table(
    "qp_model_lists",
    metadata,
    sa.Column("backend", sa.String(128), primary_key=True),
    sa.Column("fetched_at", sa.Float, nullable=False),  # 0: never fetched successfully
    sa.Column("checked_at", sa.Float, nullable=False),  # last claim to fetch
    sa.Column("models", sa.Text, nullable=False),  # JSON list of ListedModel dicts
)

CHECK_SECONDS = 900.0  # how often each worker looks at the cache
RETRY_SECONDS = 600.0  # after a failed fetch
MAX_LIST_BYTES = 16 * 1024 * 1024
FETCH_TIMEOUT = (10.0, 30.0)


@dataclass(frozen=True)
class ModelListSource:
    """Where one backend lists its models."""

    backend: str
    url: str
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)


@dataclass(frozen=True)
class ListedModel:
    id: str
    context_length: int | None = None
    max_output_tokens: int | None = None
    pricing: Mapping[str, Any] | None = None  # OpenRouter's, as listed (USD per token)

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "context_length": self.context_length,
            "max_output_tokens": self.max_output_tokens,
            "pricing": dict(self.pricing) if self.pricing else None,
        }


def _positive_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)) and value >= 1:
        return int(value)
    return None


def parse_model_list(body: Any) -> list[ListedModel]:
    """The entries of an OpenAI-style `{"data": [{"id": ...}, ...]}` list."""
    entries = body.get("data") if isinstance(body, dict) else None
    if not isinstance(entries, list):
        raise ValueError("not a model list (no `data` array)")
    models = []
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("id"), str):
            continue
        top = entry.get("top_provider") if isinstance(entry.get("top_provider"), dict) else {}
        context = _positive_int(entry.get("context_length")) or _positive_int(
            entry.get("max_model_len")
        )
        output = _positive_int(top.get("max_completion_tokens")) or _positive_int(
            entry.get("max_output_tokens")
        )
        pricing = entry.get("pricing") if isinstance(entry.get("pricing"), dict) else None
        models.append(ListedModel(entry["id"], context, output, pricing))
    return models


def fetch_model_list(http: requests.Session, source: ModelListSource) -> list[ListedModel]:
    """One GET of a backend's list, at most MAX_LIST_BYTES; raises on any failure."""
    response = http.get(
        source.url,
        headers={"Accept": "application/json", **source.headers},
        timeout=FETCH_TIMEOUT,
        stream=True,
    )
    try:
        if response.status_code != 200:
            raise ValueError(f"HTTP {response.status_code}")
        raw = response.raw.read(MAX_LIST_BYTES + 1, decode_content=True)
    finally:
        response.close()
    if len(raw) > MAX_LIST_BYTES:
        raise ValueError(f"the list is larger than {MAX_LIST_BYTES} bytes")
    return parse_model_list(orjson.loads(raw))


class ModelListRefresher:
    def __init__(
        self,
        db: Database,
        http: requests.Session,
        sources: list[ModelListSource],
        facts: ModelFactsBook,
        interval: float,
        clock: Callable[[], float] = time.time,
        fetch: Callable[[requests.Session, ModelListSource], list[ListedModel]] = (
            fetch_model_list
        ),
    ) -> None:
        self._db = db
        self._http = http
        self.sources = sources
        self._facts = facts
        self.interval = interval
        self._clock = clock
        self._fetch = fetch
        self._loop = BackgroundLoop("qwenproxy-model-lists")

    # --- the cache ---------------------------------------------------------------------

    def cached(self) -> dict[str, tuple[float, list[ListedModel]]]:
        """backend -> (fetched_at, models) of every cached list."""
        table = model_lists_table
        with self._db.engine.connect() as conn:
            rows = conn.execute(
                sa.select(table.c.backend, table.c.fetched_at, table.c.models)
            ).all()
        result = {}
        for backend, fetched_at, raw in rows:
            try:
                models = [ListedModel(**entry) for entry in orjson.loads(raw)]
            except (orjson.JSONDecodeError, TypeError):
                continue
            result[backend] = (fetched_at, models)
        return result

    def load_cached(self) -> None:
        """Hand the cached lists of the configured backends to the facts book."""
        wanted = {source.backend for source in self.sources}
        for backend, (_, models) in self.cached().items():
            if backend in wanted:
                self._publish(backend, models)

    def _publish(self, backend: str, models: list[ListedModel]) -> None:
        facts = {
            m.id: ModelFacts(m.context_length, m.max_output_tokens)
            for m in models
            if m.context_length is not None or m.max_output_tokens is not None
        }
        self._facts.set_listed(backend, facts, tuple(m.id for m in models))

    def _claim(self, backend: str, now: float) -> bool:
        """True when this process should fetch `backend`'s list now: the cached copy is
        stale and no other worker claimed it within the retry delay."""
        table = model_lists_table
        with self._db.engine.connect() as conn:
            row = conn.execute(
                sa.select(table.c.fetched_at, table.c.checked_at).where(table.c.backend == backend)
            ).first()
        if row is None:
            try:
                with self._db.engine.begin() as conn:
                    conn.execute(
                        table.insert().values(
                            backend=backend, fetched_at=0.0, checked_at=now, models="[]"
                        )
                    )
                return True
            except sa.exc.IntegrityError:  # another worker inserted it first: its claim
                return False
        fetched_at, checked_at = row
        if now - fetched_at < self.interval or now - checked_at < min(
            self.interval, RETRY_SECONDS
        ):
            return False
        with self._db.engine.begin() as conn:
            claimed = conn.execute(
                table.update()
                .where(table.c.backend == backend, table.c.checked_at == checked_at)
                .values(checked_at=now)
            ).rowcount
        return claimed == 1

    def _store(self, backend: str, models: list[ListedModel], now: float) -> None:
        raw = orjson.dumps([m.as_dict() for m in models]).decode()
        table = model_lists_table
        with self._db.engine.begin() as conn:
            conn.execute(
                table.update()
                .where(table.c.backend == backend)
                .values(models=raw, fetched_at=now, checked_at=now)
            )

    def refresh_stale(self) -> list[str]:
        """Fetch the lists that are stale and unclaimed; returns the backends fetched."""
        fetched = []
        for source in self.sources:
            now = self._clock()
            try:
                if not self._claim(source.backend, now):
                    continue
            except sa.exc.SQLAlchemyError as exc:
                log.warning("model list cache unavailable: %s", describe_db_error(exc))
                return fetched
            try:
                models = self._fetch(self._http, source)
            except Exception as exc:  # an unreachable list changes nothing
                log.warning(
                    "reading %s's model list failed (%s); trying again later",
                    source.backend,
                    type(exc).__name__ if not str(exc) else str(exc)[:200],
                )
                continue
            try:
                self._store(source.backend, models, self._clock())
            except sa.exc.SQLAlchemyError as exc:
                log.warning(
                    "storing %s's model list failed: %s", source.backend, describe_db_error(exc)
                )
            self._publish(source.backend, models)
            fetched.append(source.backend)
            log.info("read %d models from %s's model list", len(models), source.backend)
        return fetched

    # --- the background loop -----------------------------------------------------------

    def run_once(self) -> None:
        try:
            self.load_cached()
            self.refresh_stale()
        except Exception:  # the loop must outlive any surprise
            log.exception("model list refresh failed")

    def start(self) -> None:
        if self.interval <= 0 or not self.sources:
            return
        self._loop.start(self._run)

    def stop(self, timeout: float = 2.0) -> None:
        self._loop.stop(timeout)

    def _run(self) -> None:
        while not self._loop.stopping.is_set():
            self.run_once()
            self._loop.stopping.wait(min(self.interval, CHECK_SECONDS))


def model_list_sources(specs: list[Any]) -> list[ModelListSource]:
    """Where each enabled key backend lists its models (first key; its own host only)."""
    sources = []
    for spec in specs:
        key = spec.keys[0] if spec.keys else None
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        sources.append(ModelListSource(spec.name, spec.base_url.rstrip("/") + "/models", headers))
    return sources
