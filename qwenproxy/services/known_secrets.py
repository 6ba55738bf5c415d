"""The proxy's own secrets (client keys, backend keys, the upstream proxy's credentials,
Qwen OAuth tokens) as one matcher, shared by the prompt redactor (guards.SecretRedactor)
and the log filter (logs.SecretFilter), so that both hide the same strings under the same
rule. It is built from its source at start and again when `refresh()` is called (the
container calls it when a Qwen token manager's credentials change: a refresh, or a file
another process rewrote); matching only reads what was built, so it never reads a file,
never asks a token manager, and costs a few substring searches.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

# A configured secret shorter than this is not searched for, in prompts or in logs: so
# short a string turns up in ordinary text (and is no secret worth the name).
MIN_KNOWN_SECRET = 8


class KnownSecrets:
    """The secrets `source` yields, at least MIN_KNOWN_SECRET long, longest first (so
    that a secret which contains another is replaced whole)."""

    def __init__(self, source: Callable[[], Iterable[str]] = tuple) -> None:
        self._source = source
        self._secrets: tuple[str, ...] = ()
        self.refresh()

    def refresh(self) -> None:
        """Read the source again (once, here; never while matching)."""
        found = {s for s in self._source() if isinstance(s, str) and len(s) >= MIN_KNOWN_SECRET}
        self._secrets = tuple(sorted(found, key=lambda s: (-len(s), s)))  # one assignment

    @property
    def secrets(self) -> tuple[str, ...]:
        return self._secrets

    @property
    def shortest(self) -> int | None:
        """The length of the shortest secret held, or None when there are none."""
        secrets = self._secrets
        return len(secrets[-1]) if secrets else None

    def replace(self, text: str, placeholder: str) -> tuple[str, int]:
        """(text with every known secret replaced by `placeholder`, how many were)."""
        total = 0
        for secret in self._secrets:
            if secret in text:
                total += text.count(secret)
                text = text.replace(secret, placeholder)
        return text, total
