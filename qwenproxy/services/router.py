"""Model names to backends: `backend:model`, `backend/model`, or a bare model.

Split at the first `:` or `/`. Before `/` an unknown word is part of the model id
(`qwen/qwen3-coder` on OpenRouter); before `:` it must be a backend, else 404 (write
`backend:vendor:model` for ids that contain `:`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from qwenproxy.errors import ModelNotFoundError
from qwenproxy.services.backends import Backend


@dataclass(frozen=True)
class Route:
    backend: Backend
    model: str

    @property
    def qualified(self) -> str:
        return f"{self.backend.name}:{self.model}"


class Router:
    def __init__(
        self,
        backends: Mapping[str, Backend],
        default_backend: str,
        default_model: str,
        known_backends: tuple[str, ...] = (),
    ) -> None:
        self.backends = dict(backends)
        self.default_backend = default_backend
        self.default_model = default_model
        # Backends the proxy knows of but that are not enabled (no credentials set).
        self._known_backends = set(known_backends) | set(self.backends)

    def split(self, name: str | None) -> tuple[str | None, str]:
        """("backend" or None, "model") for a client's model string."""
        name = (name or "").strip()
        for i, ch in enumerate(name):
            if ch in ":/":
                prefix = name[:i].lower()
                if prefix in self._known_backends:
                    return prefix, name[i + 1 :].strip()
                if ch == ":":
                    raise ModelNotFoundError(
                        self._unknown_backend_message(prefix)
                        + " Write the model as `backend:model`.",
                        param="model",
                    )
                break
        if name.lower() in self._known_backends:
            return name.lower(), ""
        return None, name

    def resolve(self, name: str | None, backend_override: str | None = None) -> Route:
        backend_name, model = self.split(name)
        backend_name = backend_name or backend_override or self.default_backend
        backend = self.backends.get(backend_name)
        if backend is None:
            raise ModelNotFoundError(self._unknown_backend_message(backend_name), param="model")
        return Route(backend, model or self.default_model)

    def _unknown_backend_message(self, name: str) -> str:
        enabled = ", ".join(sorted(self.backends)) or "none"
        if name in self._known_backends:
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
            for model in backend.models()
        ]
