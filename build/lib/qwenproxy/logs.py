"""Logging set-up: one stderr handler, and a filter that scrubs secrets from every record
(message, arguments and traceback) on every handler we know of, gunicorn's included. The
proxy's own secrets come from the matcher the prompt redactor uses
(config/secrets.py): a log call reads no file and asks no token manager.
"""

from __future__ import annotations

import logging
import re
import sys

from qwenproxy.config.secrets import KnownSecrets

REDACTED = "[REDACTED]"
_BEARER = re.compile(r"(?i)\b(bearer\s+)[A-Za-z0-9._~+/=-]{8,}")
_SECRET_PARAMS = re.compile(r"(?i)\b((?:access|refresh|id)_token|api[_-]?key|key)=[^&\s\"']+")


class SecretFilter(logging.Filter):
    """Replaces known secrets and bearer tokens in a record before any handler formats it."""

    def __init__(self, secrets: KnownSecrets) -> None:
        super().__init__()
        self._secrets = secrets

    def scrub(self, text: str) -> str:
        text = self._secrets.replace(text, REDACTED)[0]
        # Each pattern runs only where it could match: its case-insensitive words are in
        # the lower-cased text (every character that matches them ignoring case lowers to
        # them). Most lines, the per-request ones included, have neither.
        lowered = text.lower()
        if "bearer" in lowered:
            text = _BEARER.sub(r"\1" + REDACTED, text)
        if "key=" in lowered or "token=" in lowered:
            text = _SECRET_PARAMS.sub(lambda m: f"{m.group(1)}={REDACTED}", text)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string must not lose the record
            message = str(record.msg)
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.scrub(record.exc_text)
            record.exc_info = None
        record.msg = self.scrub(message)
        record.args = None
        return True


class StderrHandler(logging.StreamHandler):
    """Writes to whatever `sys.stderr` is at the time of each record (a stream captured at
    start-up may be closed later, e.g. by a test runner or a daemonising wrapper)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property  # type: ignore[override]
    def stream(self):  # noqa: ANN201 - the file object logging writes to
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # noqa: ANN001 - logging assigns it; sys.stderr wins
        pass


LOGGERS_TO_GUARD = ("", "gunicorn.error", "gunicorn.access", "werkzeug")


def configure_logging(
    level: str, secrets: KnownSecrets, log_format: str = "human"
) -> SecretFilter:
    """Give `qwenproxy` a stderr handler (unless one exists) and guard every handler.
    With `log_format="json"`, the per-request lines (`qwenproxy.requests`) are bare JSON."""
    package = logging.getLogger("qwenproxy")
    package.setLevel(level)
    if not package.handlers:
        handler = StderrHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        package.addHandler(handler)
        package.propagate = False
    requests_log = logging.getLogger("qwenproxy.requests")
    if log_format == "json" and not requests_log.handlers:
        handler = StderrHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        requests_log.addHandler(handler)
        requests_log.propagate = False
    secret_filter = SecretFilter(secrets)
    for name in (*LOGGERS_TO_GUARD, "qwenproxy", "qwenproxy.requests"):
        for handler in logging.getLogger(name).handlers:
            for old in [f for f in handler.filters if isinstance(f, SecretFilter)]:
                handler.removeFilter(old)
            handler.addFilter(secret_filter)
    return secret_filter
