"""Model names to upstream attempts (`backend:model`, `backend/model`, a bare model, a
failover route name) and the failover routes themselves. Split at the first `:` or `/`:
before `/` an unknown word is part of the id (`qwen/qwen3-coder`); before `:` it must be
a backend, else 404 (write `backend:vendor:model` for ids that contain `:`)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
import sqlalchemy as sa

from qwenproxy.errors import InvalidRequestError, ModelNotAllowedError, ModelNotFoundError
from qwenproxy.store import Database, database_errors, routes_table
from qwenproxy.upstream.backends import Backend

POLICIES = {
    "k": "each key/account of the first element's backend in turn",
    "m": "each element (backend:model) in order",
    "km": "for each element, each of its backend's keys, then the next element",
    "mk": "for each key position, each element in order",
}


@dataclass(frozen=True)
class Target:
    backend: Backend
    model: str  # as the client named it; the backend maps aliases

    @property
    def upstream_model(self) -> str:
        return self.backend.upstream_model(self.model)


@dataclass(frozen=True)
class Plan:
    """What to try for one request, in which order."""

    targets: tuple[Target, ...]
    policy: str = "k"
    route: str | None = None

    def attempts(self) -> list[tuple[Target, int]]:
        """(target, account index) pairs in failover order. Paused accounts (out of quota,
        ended) are left out — unless nothing else is left, so the client still gets the
        account's own error rather than a guess."""
        return self._ordered(include_paused=False) or self._ordered(include_paused=True)

    def _ordered(self, include_paused: bool) -> list[tuple[Target, int]]:
        orders = [(t, t.backend.account_order(include_paused)) for t in self.targets]
        if self.policy == "m":
            return [(t, order[0]) for t, order in orders if order]
        if self.policy == "k":
            target, order = orders[0]
            return [(target, account) for account in order]
        if self.policy == "km":
            return [(t, account) for t, order in orders for account in order]
        longest = max((len(order) for _, order in orders), default=0)  # "mk"
        return [
            (t, order[position])
            for position in range(longest)
            for t, order in orders
            if position < len(order)
        ]


def allowed_plan(plan: Plan, key: Any) -> Plan:
    """`plan` with only the targets a named client key (edge/client_keys.ClientKey)
    may use: the model each target
    will send, after commands, aliases and routes resolved it. A route keeps its allowed
    elements; with none left the request is refused before any upstream call (403)."""
    if not key.models:
        return plan
    allowed = tuple(
        t
        for t in plan.targets
        if key.allows_model(t.model, t.upstream_model, f"{t.backend.name}:{t.model}")
    )
    if len(allowed) == len(plan.targets):
        return plan
    if not allowed:
        names = ", ".join(dict.fromkeys(t.upstream_model for t in plan.targets))
        raise ModelNotAllowedError(
            f"The client key {key.name!r} may not use the model {names[:200]}; it may use "
            f"models matching {', '.join(key.models)[:200]}.",
            param="model",
        )
    return dataclasses.replace(plan, targets=allowed)


@dataclass(frozen=True)
class FailoverRoute:
    name: str
    policy: str
    elements: tuple[str, ...]
    declared: bool = False  # from FAILOVER_ROUTES: read-only at run time


class RouteStore:
    """Failover routes: declared at start-up (read-only) and created by command (shared
    through the database, so every worker and instance sees them)."""

    def __init__(
        self,
        db: Database,
        declared: Mapping[str, Mapping[str, Any]] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._db = db
        self._clock = clock
        self.declared = {
            name: FailoverRoute(name, spec["policy"], tuple(spec["elements"]), declared=True)
            for name, spec in (declared or {}).items()
        }

    def get(self, name: str) -> FailoverRoute | None:
        if name in self.declared:
            return self.declared[name]
        with database_errors("reading failover routes"):
            row = self._db.fetch_row(
                "SELECT policy, elements FROM qp_failover_routes WHERE name = :name", name=name
            )
        if row is None:
            return None
        policy, elements = row
        return FailoverRoute(name, policy, tuple(orjson.loads(elements)))

    def all(self) -> list[FailoverRoute]:
        with database_errors("reading failover routes"), self._db.engine.connect() as conn:
            rows = conn.execute(
                sa.select(routes_table.c.name, routes_table.c.policy, routes_table.c.elements)
            ).all()
        stored = {
            r.name: FailoverRoute(r.name, r.policy, tuple(orjson.loads(r.elements))) for r in rows
        }
        return sorted({**stored, **self.declared}.values(), key=lambda r: r.name)

    def put(self, route: FailoverRoute) -> None:
        if route.name in self.declared:
            raise InvalidRequestError(
                f"Route {route.name!r} is declared in FAILOVER_ROUTES and cannot be changed "
                "at run time."
            )
        values = {
            "policy": route.policy,
            "elements": orjson.dumps(list(route.elements)).decode(),
            "updated_at": self._clock(),
        }
        with database_errors("saving a failover route"), self._db.engine.begin() as conn:
            updated = conn.execute(
                routes_table.update().where(routes_table.c.name == route.name).values(**values)
            ).rowcount
            if not updated:
                conn.execute(routes_table.insert().values(name=route.name, **values))

    def delete(self, name: str) -> bool:
        if name in self.declared:
            raise InvalidRequestError(
                f"Route {name!r} is declared in FAILOVER_ROUTES and cannot be deleted at run time."
            )
        with database_errors("deleting a failover route"), self._db.engine.begin() as conn:
            return bool(
                conn.execute(routes_table.delete().where(routes_table.c.name == name)).rowcount
            )


class Router:
    def __init__(
        self,
        backends: Mapping[str, Backend],
        default_backend: str,
        default_model: str,
        known_backends: tuple[str, ...] = (),
        routes: RouteStore | None = None,
        unlisted: tuple[str, ...] = (),
    ) -> None:
        self.backends = dict(backends)
        self._unlisted = set(unlisted)  # enabled for their errors, but not in /v1/models
        self._model_names: frozenset[str] | None = None
        self.default_backend = default_backend
        self.default_model = default_model
        self.routes = routes
        # Backends the proxy knows of, enabled or not (not: no credentials configured).
        self.known_backends = tuple(dict.fromkeys((*known_backends, *self.backends)))
        self._known = set(self.known_backends)

    def split(self, name: str | None) -> tuple[str | None, str]:
        """("backend" or None, "model") for a client's model string."""
        name = (name or "").strip()
        for i, ch in enumerate(name):
            if ch in ":/":
                prefix = name[:i].lower()
                if prefix in self._known:
                    return prefix, name[i + 1 :].strip()
                if ch == ":":
                    raise ModelNotFoundError(
                        self.unknown_backend_message(prefix)
                        + " Write the model as `backend:model`.",
                        param="model",
                    )
                break
        if name.lower() in self._known:
            return name.lower(), ""
        return None, name

    def backend(self, name: str) -> Backend:
        backend = self.backends.get(name)
        if backend is None:
            raise ModelNotFoundError(self.unknown_backend_message(name), param="model")
        return backend

    def target(self, name: str | None, backend_override: str | None = None) -> Target:
        """One backend and model, without routes: for route elements and commands."""
        backend_name, model = self.split(name)
        if not model:
            default_backend, model = self.split(self.default_model)
            backend_name = backend_name or default_backend
        backend = self.backend(backend_name or backend_override or self.default_backend)
        return Target(backend, model)

    def plan(self, name: str | None, backend_override: str | None = None) -> Plan:
        name = (name or "").strip() or self.default_model
        route = self._route(name)
        if route is not None:
            return self.route_plan(route)
        return Plan((self.target(name, backend_override),))

    def route_plan(self, route: FailoverRoute) -> Plan:
        targets = []
        for element in route.elements:
            backend_name, model = self.split(element)
            backend = self.backends.get(backend_name or self.default_backend)
            if backend is not None:  # elements on disabled backends are skipped
                targets.append(Target(backend, model or self.default_model))
        if not targets:
            raise ModelNotFoundError(
                f"Failover route {route.name!r} has no usable element: add one with "
                f"`route-append(name={route.name}, element=backend:model)`. Enabled backends: "
                f"{', '.join(sorted(self.backends))}.",
                param="model",
            )
        return Plan(tuple(targets), route.policy, route.name)

    def _route(self, name: str) -> FailoverRoute | None:
        """Declared routes (the operator's) win; a route created in chat never shadows a
        model name, so one client cannot redirect another's traffic."""
        if self.routes is None or ":" in name or "/" in name:
            return None
        declared = self.routes.declared.get(name)
        if declared is not None or self.is_model_name(name):
            return declared
        return self.routes.get(name)

    def is_model_name(self, name: str) -> bool:
        """A model or alias some enabled backend lists, or the default model."""
        if name == self.default_model:
            return True
        if self._model_names is None:
            self._model_names = frozenset(
                model for backend in self.backends.values() for model in backend.models()
            )
        return name in self._model_names

    def unknown_backend_message(self, name: str) -> str:
        enabled = ", ".join(sorted(self.backends)) or "none"
        if name in self._known:
            return (
                f"Backend {name!r} is not enabled: its credentials are not configured. "
                f"Enabled backends: {enabled}."
            )
        return f"Unknown backend {name!r}. Known backends: {enabled}."

    def model_ids(self) -> list[tuple[str, str]]:
        """(qualified id, owning backend) for every model of every enabled backend."""
        return [
            (f"{name}:{model}", name)
            for name, backend in self.backends.items()
            if name not in self._unlisted
            for model in backend.models()
        ]
