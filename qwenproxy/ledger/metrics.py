"""Prometheus metrics: requests, latency, TTFT, tokens, open streams, token refreshes,
failovers and loop detections. Under gunicorn every worker writes its values into one
directory (prometheus_client's multiprocess mode) and `/metrics` adds them up.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    values,
)

from qwenproxy.ledger.records import UsageRecord
from qwenproxy.serving import metrics_dir

LATENCY_BUCKETS_S = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)
TTFT_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 60.0)


def multiprocess_mode() -> bool:
    """Whether prometheus_client keeps values in files (PROMETHEUS_MULTIPROC_DIR was set
    before it was imported, as gunicorn's master does for its workers)."""
    return values.ValueClass is not values.MutexValue


class Metrics:
    """The proxy's metrics in a private registry (tests build many apps in one process).

    With `multiprocess_dir`, values live in files there (one per process) and `render()`
    aggregates every process's files; `stream_opened()` counts only live processes.
    """

    def __init__(self, multiprocess_dir: Path | str | None = None) -> None:
        if multiprocess_dir is not None and not multiprocess_mode():
            raise RuntimeError(
                "prometheus_client was imported before PROMETHEUS_MULTIPROC_DIR was set; "
                "its values would not reach the multiprocess directory"
            )
        self.multiprocess_dir = Path(multiprocess_dir) if multiprocess_dir is not None else None
        if self.multiprocess_dir is not None:
            self.multiprocess_dir.mkdir(parents=True, exist_ok=True)
        registry = CollectorRegistry(auto_describe=True)
        self._define(registry)
        # Labelled children by (metric, label values): `labels()` takes a lock and builds a
        # key each time. Label values are bounded (see Accounting), and so is this.
        self._children: dict[tuple[Any, tuple[str, ...]], Any] = {}
        if self.multiprocess_dir is not None:
            self._export = CollectorRegistry()
            multiprocess.MultiProcessCollector(self._export, path=str(self.multiprocess_dir))
        else:
            self._export = registry

    def _define(self, registry: CollectorRegistry) -> None:
        """The proxy's metrics, registered on `registry`."""
        self.requests = Counter(
            "qwenproxy_requests",
            "Requests answered, by backend, upstream model and HTTP status.",
            ("backend", "model", "status"),
            registry=registry,
        )
        self.latency = Histogram(
            "qwenproxy_request_duration_seconds",
            "Time from receiving a request to its last byte, by backend.",
            ("backend",),
            buckets=LATENCY_BUCKETS_S,
            registry=registry,
        )
        self.ttft = Histogram(
            "qwenproxy_time_to_first_token_seconds",
            "Time from receiving a streamed request to its first content token, by backend.",
            ("backend",),
            buckets=TTFT_BUCKETS_S,
            registry=registry,
        )
        self.tokens = Counter(
            "qwenproxy_tokens",
            "Tokens reported by upstreams, by backend, model and kind (prompt, completion, "
            "cached: the part of prompt served from the prompt cache).",
            ("backend", "model", "kind"),
            registry=registry,
        )
        self.active_streams = Gauge(
            "qwenproxy_active_streams",
            "Streams open right now.",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.cost = Counter(
            "qwenproxy_cost",
            "What requests cost by the price table, by backend and currency (requests whose "
            "price is unknown add nothing).",
            ("backend", "currency"),
            registry=registry,
        )
        self.token_refreshes = Counter(
            "qwenproxy_token_refreshes",
            "qwen-oauth token refreshes, by result (ok, failed).",
            ("result",),
            registry=registry,
        )
        self.failovers = Counter(
            "qwenproxy_failovers",
            "Requests moved to the next element of a failover route.",
            registry=registry,
        )
        self.loop_detections = Counter(
            "qwenproxy_loop_detections",
            "Streams stopped because the model repeated itself.",
            registry=registry,
        )

    def observe(self, rec: UsageRecord) -> None:
        """Count one finished request: status, latency, TTFT and tokens. Failovers and
        loop detections are counted where they happen (`failover()`, `loop_detected()`)."""
        backend = rec.backend or "-"
        model = rec.upstream_model or rec.requested_model or "-"
        self._child(self.requests, backend, model, str(rec.status)).inc()
        self._child(self.latency, backend).observe(rec.latency_ms / 1000.0)
        if rec.ttft_ms is not None:
            self._child(self.ttft, backend).observe(rec.ttft_ms / 1000.0)
        if rec.prompt_tokens:
            self._child(self.tokens, backend, model, "prompt").inc(rec.prompt_tokens)
        if rec.completion_tokens:
            self._child(self.tokens, backend, model, "completion").inc(rec.completion_tokens)
        if rec.cached_tokens:  # the cache hit ratio is cached / prompt
            self._child(self.tokens, backend, model, "cached").inc(rec.cached_tokens)
        if rec.cost:
            self._child(self.cost, backend, rec.currency or "-").inc(rec.cost)

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (metric, labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def stream_opened(self) -> None:
        self.active_streams.inc()

    def stream_closed(self) -> None:
        self.active_streams.dec()

    def token_refresh(self, ok: bool) -> None:
        self.token_refreshes.labels("ok" if ok else "failed").inc()

    def failover(self) -> None:
        self.failovers.inc()

    def loop_detected(self) -> None:
        self.loop_detections.inc()

    def render(self) -> tuple[bytes, str]:
        """The Prometheus text exposition (of every process in multiprocess mode)."""
        return generate_latest(self._export), CONTENT_TYPE_LATEST


def build_metrics(data_dir: Path) -> Metrics:
    """The metrics of this process: aggregated over `<data_dir>/metrics` under gunicorn
    (whose master set the directory up), single-process otherwise."""
    return Metrics(metrics_dir(data_dir) if multiprocess_mode() else None)
