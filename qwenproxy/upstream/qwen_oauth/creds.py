"""qwen-code's credentials file: reading, validating and writing it atomically (0600).

No network here: the CLI's `serve` banner reads the file before gunicorn forks, and must
not import `requests`/`ssl` ahead of gevent's monkey-patching.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qwenproxy.errors import CredentialsMissingError

REQUIRED_FIELDS = ("access_token", "refresh_token", "token_type", "expiry_date")
LOGIN_HINT = "run `python -m qwenproxy auth login` (or `qwen-code --auth`)"


def api_base_from_resource_url(resource_url: str | None, fallback: str) -> str:
    """`portal.qwen.ai` -> `https://portal.qwen.ai/v1`; keep a given scheme; one `/v1`."""
    if not resource_url:
        return fallback.rstrip("/")
    base = resource_url.strip().rstrip("/")
    if not base.startswith(("http://", "https://")):
        base = "https://" + base
    if not base.endswith("/v1"):
        base += "/v1"
    return base


def _nonempty_str(value: Any) -> bool:
    return isinstance(value, str) and bool(value)


def _is_number(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, (int, float)):
        return True
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


@dataclass(frozen=True)
class QwenCredentials:
    """One snapshot of the creds file. `raw` keeps every field, known or not."""

    raw: dict[str, Any]

    @property
    def access_token(self) -> str:
        return self.raw["access_token"]

    @property
    def refresh_token(self) -> str:
        return self.raw["refresh_token"]

    @property
    def expiry_ms(self) -> float:
        return float(self.raw["expiry_date"])

    @property
    def resource_url(self) -> str | None:
        value = self.raw.get("resource_url")
        return value if isinstance(value, str) and value else None

    def expires_within(self, seconds: float, now: float) -> bool:
        return self.expiry_ms / 1000.0 - seconds <= now

    @classmethod
    def from_json(cls, text: str | bytes, path: Path) -> QwenCredentials:
        try:
            raw = json.loads(text)
        except ValueError:
            raise CredentialsMissingError(
                f"Qwen OAuth credentials file {path} is not valid JSON; {LOGIN_HINT}."
            ) from None
        if not isinstance(raw, dict):
            raise CredentialsMissingError(
                f"Qwen OAuth credentials file {path} does not hold a JSON object; {LOGIN_HINT}."
            )
        missing = [
            f for f in REQUIRED_FIELDS if f != "expiry_date" and not _nonempty_str(raw.get(f))
        ]
        if not _is_number(raw.get("expiry_date")):
            missing.append("a numeric expiry_date")
        if missing:
            raise CredentialsMissingError(
                f"Qwen OAuth credentials file {path} lacks {', '.join(missing)}; {LOGIN_HINT}."
            )
        return cls(raw)


class CredentialsFile:
    """Reads and atomically writes one qwen-code creds file (0600, directory 0700)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.lock_path = self.path.with_suffix(".lock")

    def mtime_ns(self) -> int | None:
        try:
            return os.stat(self.path).st_mtime_ns
        except OSError:
            return None

    def read(self) -> QwenCredentials:
        try:
            text = self.path.read_bytes()
        except FileNotFoundError:
            raise CredentialsMissingError(
                f"No Qwen OAuth credentials at {self.path}; {LOGIN_HINT}, or set "
                "QWEN_OAUTH_CREDS to the file's path."
            ) from None
        except OSError as exc:
            raise CredentialsMissingError(
                f"Cannot read Qwen OAuth credentials at {self.path} ({exc.strerror}); "
                f"check its permissions or {LOGIN_HINT}."
            ) from None
        return QwenCredentials.from_json(text, self.path)

    def write(self, raw: dict[str, Any]) -> None:
        directory = self.path.parent
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = directory / f"{self.path.name}.{secrets.token_hex(6)}.tmp"
        data = json.dumps(raw, indent=2).encode()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.chmod(tmp, 0o600)
            os.replace(tmp, self.path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        try:
            dir_fd = os.open(directory, os.O_RDONLY)
        except OSError:
            return
        try:
            os.fsync(dir_fd)
        except OSError:
            pass
        finally:
            os.close(dir_fd)
