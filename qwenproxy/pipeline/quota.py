"""Quota windows per upstream key and budgets per client key, on the limit engine
(ledger/limits.py): which limits a request meets, the 429s when one is spent, the
`X-Qwenproxy-Quota-Remaining` header, how long an exhausted key is paused, and the
`/usage/quota` report. A request counts toward the key that answered it (its final
attempt); only requests that reached an upstream count toward a key's windows.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from qwenproxy.config.values import duration_seconds
from qwenproxy.errors import BudgetExceededError, QuotaExhaustedError
from qwenproxy.ledger.limits import LEASE_TTL_S, LimitEngine, Scope

REMAINING_HEADER = "X-Qwenproxy-Quota-Remaining"
SPENT_RECHECK_S = 1.0  # a spent key is looked at again (in the database) after this
UKEY_DIM = "ukey"
BUDGETS = (
    # (attribute of the client key, measure, period, what the message calls it)
    ("requests_per_day", "requests", "day", "requests per day"),
    ("tokens_per_month", "tokens", "month", "tokens per month"),
    ("cost_per_month", "cost", "month", "cost per month"),
)




def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class Spent:
    """A key whose window is spent: which window, and when it reopens."""

    backend: str
    window: str
    reopens_at: float


class QuotaGate:
    """Quota windows of the backends that have them (`windows`: {backend: {window:
    limit}}), and the budgets of named client keys, enforced through `engine`."""

    def __init__(
        self,
        engine: LimitEngine,
        windows: Mapping[str, Mapping[str, int]],
        key_ids: Mapping[str, list[str]],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.engine = engine
        self.windows = {b: dict(w) for b, w in windows.items() if b in key_ids}
        self.key_ids = {b: list(ids) for b, ids in key_ids.items()}
        self._clock = clock
        self._scopes: dict[tuple[str, str], list[tuple[str, Scope]]] = {}
        self._budget_keys: set[str] = set()
        self._spent: dict[tuple[str, str], tuple[Spent, float]] = {}  # refusal, until
        self._budget_cache: dict[tuple[Any, ...], list[tuple[str, str, Scope]]] = {}
        engine.counts_with(self.counted)

    # --- quota windows -------------------------------------------------------------------

    def scopes(self, backend: str, key_id: str) -> list[tuple[str, Scope]]:
        """(window name, scope) of each window of one upstream key."""
        found = self._scopes.get((backend, key_id))
        if found is None:
            found = [
                (
                    window,
                    Scope(
                        f"q:{backend}/{key_id}:{window}",
                        UKEY_DIM,
                        f"{backend}/{key_id}",
                        limit,
                        seconds=duration_seconds(window),
                    ),
                )
                for window, limit in self.windows.get(backend, {}).items()
            ]
            self._scopes[(backend, key_id)] = found
        return found

    def admit(self, backend: str, key_id: str | None) -> Spent | None:
        """Take one request from every window of the key; None when admitted (or the
        backend has no windows), else the spent window (nothing is taken then)."""
        if key_id is None or backend not in self.windows:
            return None
        now = self._clock()
        known = self._spent.get((backend, key_id))
        if known is not None and now < known[1]:
            return known[0]  # refused a moment ago: no database work for each refusal
        taken: list[Scope] = []
        for window, scope in self.scopes(backend, key_id):
            if not self.engine.take(scope):
                for done in taken:
                    self.engine.give_back(done)
                self.engine.settle()
                used = self.engine.used(scope)
                if used < scope.limit:  # what is left is leased by other instances
                    reopens = now + LEASE_TTL_S  # they use it, or their leases lapse
                else:
                    reopens = self.engine.frees_at(scope, used) or now + 60.0
                spent = Spent(backend, window, reopens)
                self._spent[(backend, key_id)] = (spent, min(now + SPENT_RECHECK_S, reopens))
                return spent
            taken.append(scope)
        return None

    def give_back(self, backend: str, key_id: str | None) -> None:
        """An admitted attempt that was not the request's last: the key is not counted."""
        if key_id is None or backend not in self.windows:
            return
        for _, scope in self.scopes(backend, key_id):
            self.engine.give_back(scope)

    def remaining(self, backend: str, key_id: str | None) -> int | None:
        """The smallest remaining count over the key's windows (this instance's view)."""
        if key_id is None or backend not in self.windows:
            return None
        scopes = self.scopes(backend, key_id)
        known = [v for _, s in scopes if (v := self.engine.remaining_estimate(s)) is not None]
        return min(known) if known else None

    def pause_seconds(self, backend: str, key_id: str | None) -> float | None:
        """How long to pause a key the upstream called exhausted: until its fullest window
        (by our counts) frees a request; None without windows or counts."""
        if key_id is None or backend not in self.windows:
            return None
        best: tuple[float, Scope, float] | None = None
        for _, scope in self.scopes(backend, key_id):
            used = self.engine.used(scope)
            share = used / scope.limit
            if used > 0 and (best is None or share > best[0]):
                best = (share, scope, used)
        if best is None:
            return None
        _, scope, used = best
        self.engine.settle()
        frees = self.engine.frees_at(scope, max(used, scope.limit))
        return None if frees is None else max(1.0, frees - self._clock())

    def refusal(self, spent: list[Spent]) -> QuotaExhaustedError:
        first = min(spent, key=lambda s: s.reopens_at)
        wait = max(1, round(first.reopens_at - self._clock()))
        names = ", ".join(sorted({f"{s.backend} ({s.window})" for s in spent}))
        return QuotaExhaustedError(
            f"Quota exhausted: every key of {names} has spent its request window; the first "
            f"reopens at "
            f"{iso(first.reopens_at)} ({first.backend}, {first.window} window, in {wait} s).",
            headers={"Retry-After": str(wait)},
        )

    def counted(self, rec: Any) -> Iterable[tuple[str, float]]:
        """(limit key, amount) of each limit a ledger row counts toward (the engine's
        hand-back): the windows of the key that answered it, its client key's budgets."""
        keys: list[tuple[str, float]] = []
        ukey = getattr(rec, "upstream_key_id", None)
        if ukey and rec.backend in self.windows:
            keys.extend((scope.key, 1.0) for _, scope in self.scopes(rec.backend, ukey))
        client = rec.client_key_id
        if client and rec.error_code != "budget_exceeded":
            for attr, _, _, _ in BUDGETS:
                key = f"b:{client}:{attr}"
                if key in self._budget_keys:
                    keys.append((key, _amount(attr, rec)))
        return keys

    # --- client-key budgets --------------------------------------------------------------

    def budget_scopes(self, client_key: Any) -> list[tuple[str, str, Scope]]:
        """(measure, label, scope) of each budget of a client key (kept per key and limits:
        this runs on every request of a named key)."""
        limits = tuple(getattr(client_key, attr, None) for attr, _, _, _ in BUDGETS)
        cache_key = (client_key.key_id, limits)
        cached = self._budget_cache.get(cache_key)
        if cached is not None:
            return cached
        found = []
        for attr, measure, period, label in BUDGETS:
            limit = getattr(client_key, attr, None)
            if limit is None:
                continue
            key = f"b:{client_key.key_id}:{attr}"
            scope = Scope(key, "key", client_key.key_id, float(limit), measure, period=period)
            found.append((measure, label, scope))
        if len(self._budget_cache) > 10000:  # keys change rarely; bound it anyway
            self._budget_cache.clear()
        self._budget_cache[cache_key] = found
        return found

    def check_budgets(self, client_key: Any) -> list[tuple[Scope, float]]:
        """Admit a request of a named client key against its budgets; the token and cost
        places taken (hand them to `budgets_done` when the request ends). Raises
        BudgetExceededError (Retry-After at the period's end) when one is spent."""
        if client_key is None:
            return []
        taken: list[Scope] = []
        spending: list[tuple[Scope, float]] = []
        for measure, label, scope in self.budget_scopes(client_key):
            self._budget_keys.add(scope.key)
            reserve: float | None = None
            if measure == "requests":
                admitted = self.engine.take(scope)
            else:
                reserve = self.engine.may_spend(scope)
                admitted = reserve is not None
            if not admitted:
                for done in taken:
                    self.engine.give_back(done)
                self.budgets_done(spending)
                raise self._over_budget(client_key, label, scope)
            if reserve is None:
                taken.append(scope)
            else:
                spending.append((scope, reserve))
        return spending

    def budgets_done(self, spending: list[tuple[Scope, float]], record: Any = None) -> None:
        """A request holding places in token or cost budgets ended; `record` (its ledger
        row, when known) says what it spent."""
        for scope, reserve in spending:
            attr = scope.key.rsplit(":", 1)[1]
            amount = _amount(attr, record) if record is not None else 0.0
            self.engine.spent(scope, reserve, amount)

    def _over_budget(self, client_key: Any, label: str, scope: Scope) -> BudgetExceededError:
        end = scope.period_end(self._clock())
        wait = max(1, round(end - self._clock()))
        limit = scope.limit if scope.measure == "cost" else int(scope.limit)
        return BudgetExceededError(
            f"Client key {client_key.name!r} has spent its budget of {limit} {label}; it "
            f"renews at {iso(end)} (the start of the next UTC "
            f"{'day' if scope.period == 'day' else 'month'}).",
            headers={"Retry-After": str(wait)},
        )

    # --- the report ----------------------------------------------------------------------

    def report(self, resets: bool = True) -> list[dict[str, Any]]:
        """Every window of every key of every backend with windows, read afresh (without
        `resets`, `resets_at` is left None: one read less per window, for /metrics)."""
        rows = []
        for backend in sorted(self.windows):
            for key_id in self.key_ids.get(backend, []):
                for window, scope in self.scopes(backend, key_id):
                    used = self.engine.used(scope)
                    rows.append(
                        {
                            "backend": backend,
                            "key_id": key_id,
                            "window": window,
                            "limit": int(scope.limit),
                            "used": int(used),
                            "remaining": max(0, int(scope.limit - used)),
                            "resets_at": iso(self.engine.frees_at(scope, used)) if resets else None,
                        }
                    )
        return rows


def _amount(attr: str, rec: Any) -> float:
    """What a ledger row adds to the budget named by `attr`."""
    if attr == "requests_per_day":
        return 1.0
    if attr == "tokens_per_month":
        total = rec.total_tokens
        if total is None:
            total = (rec.prompt_tokens or 0) + (rec.completion_tokens or 0)
        return float(total)
    return float(rec.cost or 0.0)


def quota_metrics_text(rows: Iterable[Mapping[str, Any]]) -> bytes:
    """`qwenproxy_quota_remaining{backend,key_id,window}` in Prometheus text format (read
    from the database at scrape time, so every instance reports the shared count)."""
    lines = [
        "# HELP qwenproxy_quota_remaining Requests left in each window of each upstream key.",
        "# TYPE qwenproxy_quota_remaining gauge",
    ]
    for row in rows:
        labels = ",".join(f'{name}="{row[name]}"' for name in ("backend", "key_id", "window"))
        lines.append(f"qwenproxy_quota_remaining{{{labels}}} {row['remaining']}")
    return ("\n".join(lines) + "\n").encode()
