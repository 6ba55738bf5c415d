"""qwen-code OAuth credentials: the creds file, the cross-process refresh lock, token
refresh (single-flight within a process and across processes); the device-flow login is
upstream/qwen_oauth/login.py.
Compatible with the qwen-code CLI sharing the same file: same lock file, same atomic
write, same field names. The creds file is never deleted or truncated.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from qwenproxy.errors import (
    LoginRequiredError,
    ProxyError,
    RateLimitError,
    ServiceUnavailableError,
    UpstreamError,
    UpstreamTimeoutError,
)
from qwenproxy.upstream.qwen_oauth.creds import (
    LOGIN_HINT,
    CredentialsFile,
    QwenCredentials,
    api_base_from_resource_url,
)

log = logging.getLogger(__name__)

# Source: QwenLM/qwen-code packages/core/src/qwen/qwenOAuth2.ts and sharedTokenManager.ts.
QWEN_OAUTH_CLIENT_ID = "f0304373b74a44d2b584a3fb70ca9e56"
QWEN_OAUTH_SCOPE = "openid profile email model.completion"
TOKEN_PATH = "/api/v1/oauth2/token"
DEVICE_CODE_PATH = "/api/v1/oauth2/device/code"
DEVICE_GRANT_TYPE = "urn:ietf:params:oauth:grant-type:device_code"
REFRESH_MARGIN_S = 30.0
# A refresh must finish well inside LOCK_STALE_S, or another process would take the lock
# and spend the same refresh token again.
REFRESH_TIMEOUT = (3.0, 6.0)
FILE_CHECK_INTERVAL_S = 5.0
LOCK_STALE_S = 10.0
LOCK_TRIES = 20
LOCK_FIRST_BACKOFF_S = 0.1
LOCK_MAX_BACKOFF_S = 2.0


class RefreshLock:
    """qwen-code's cross-process lock: exclusive-create a file holding a random UUID."""

    def __init__(
        self,
        path: Path,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = path
        self._sleep = sleep
        self._clock = clock
        self._owner = str(uuid.uuid4())

    def __enter__(self) -> RefreshLock:
        backoff = LOCK_FIRST_BACKOFF_S
        for _ in range(LOCK_TRIES):
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                if self._remove_if_stale():
                    continue
                self._sleep(backoff)
                backoff = min(backoff * 1.5, LOCK_MAX_BACKOFF_S)
                continue
            try:
                os.write(fd, self._owner.encode())
            finally:
                os.close(fd)
            return self
        raise ServiceUnavailableError(
            f"Could not take the token refresh lock {self.path}: another process holds it. "
            "Try again shortly; if it persists, remove the lock file.",
            code="qwen_oauth_lock_busy",
        )

    def _remove_if_stale(self) -> bool:
        try:
            age = self._clock() - os.stat(self.path).st_mtime
        except FileNotFoundError:
            return True
        if age <= LOCK_STALE_S:
            return False
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
        log.warning("removed a stale token refresh lock %s (%.0f s old)", self.path, age)
        return True

    def __exit__(self, *exc: object) -> None:
        try:
            if self.path.read_text() == self._owner:
                self.path.unlink()
        except OSError:
            pass


@dataclass(frozen=True)
class QwenAccess:
    """What a request needs: a valid bearer token and the API base it belongs to."""

    token: str
    api_base: str


class QwenTokenManager:
    """Keeps one account's access token valid. Safe for many greenlets and processes."""

    def __init__(
        self,
        creds_file: CredentialsFile,
        http: requests.Session,
        oauth_url: str,
        api_base_fallback: str,
        timeout: tuple[float, float] = REFRESH_TIMEOUT,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        on_refresh: Callable[[bool], None] | None = None,
        on_credentials: Callable[[], None] | None = None,
    ) -> None:
        self.file = creds_file
        self._http = http
        self._token_url = oauth_url.rstrip("/") + TOKEN_PATH
        self._api_base_fallback = api_base_fallback
        self._timeout = timeout
        self._clock = clock
        self._sleep = sleep
        self._on_refresh = on_refresh
        self._on_credentials = on_credentials  # told when the tokens held change
        self._lock = threading.Lock()
        self._creds: QwenCredentials | None = None
        self._mtime_ns: int | None = None
        self._checked_at = float("-inf")

    # --- reading --------------------------------------------------------------------

    def cached(self) -> QwenCredentials | None:
        """The last credentials read, without touching the disk."""
        return self._creds

    def current(self) -> QwenCredentials:
        """The cached credentials, re-read when the file changed (checked every 5 s)."""
        now = self._clock()
        if self._creds is None or now - self._checked_at >= FILE_CHECK_INTERVAL_S:
            self._checked_at = now
            mtime = self.file.mtime_ns()
            if self._creds is None or mtime != self._mtime_ns:
                self._reload()
        assert self._creds is not None
        return self._creds

    def _reload(self) -> QwenCredentials:
        mtime = self.file.mtime_ns()
        creds = self.file.read()
        self._hold(creds)
        self._mtime_ns, self._checked_at = mtime, self._clock()
        return creds

    def _hold(self, creds: QwenCredentials) -> None:
        old, self._creds = self._creds, creds
        changed = old is None or (old.access_token, old.refresh_token) != (
            creds.access_token,
            creds.refresh_token,
        )
        if changed and self._on_credentials is not None:
            self._on_credentials()

    def _access(self, creds: QwenCredentials) -> QwenAccess:
        return QwenAccess(
            creds.access_token,
            api_base_from_resource_url(creds.resource_url, self._api_base_fallback),
        )

    # --- the two entry points -------------------------------------------------------

    def access(self) -> QwenAccess:
        """A token valid for at least 30 s more, refreshing it first if needed."""
        creds = self.current()
        if not creds.expires_within(REFRESH_MARGIN_S, self._clock()):
            return self._access(creds)
        return self._access(self._refresh(rejected_token=None))

    def refresh_after_rejection(self, rejected_token: str) -> QwenAccess:
        """The API refused `rejected_token`: get a newer one (maybe another process's)."""
        return self._access(self._refresh(rejected_token=rejected_token))

    def force_refresh(self) -> QwenCredentials:
        """Refresh now, whatever the expiry (CLI `auth status --refresh`)."""
        return self._refresh(rejected_token=self.current().access_token)

    # --- refresh --------------------------------------------------------------------

    def _usable(self, creds: QwenCredentials, rejected_token: str | None) -> bool:
        if creds.expires_within(REFRESH_MARGIN_S, self._clock()):
            return False
        return rejected_token is None or creds.access_token != rejected_token

    def _refresh(self, rejected_token: str | None) -> QwenCredentials:
        with self._lock:  # one greenlet of this process refreshes; the others wait here
            creds = self._creds
            if creds is not None and self._usable(creds, rejected_token):
                return creds
            creds = self._reload()  # another process may have refreshed the file
            if self._usable(creds, rejected_token):
                return creds
            with RefreshLock(self.file.lock_path, sleep=self._sleep, clock=self._clock):
                creds = self._reload()
                if self._usable(creds, rejected_token):
                    return creds
                try:
                    fresh = self._request_refresh(creds)
                except ProxyError:
                    if self._on_refresh:
                        self._on_refresh(False)
                    raise
                try:
                    self.file.write(fresh.raw)
                except OSError as exc:  # keep serving with the new tokens held in memory
                    log.warning(
                        "could not save refreshed Qwen OAuth credentials to %s (%s); "
                        "keeping them in memory",
                        self.file.path,
                        exc.strerror or type(exc).__name__,
                    )
                    self._hold(fresh)
                    self._checked_at = float("inf")
                else:
                    self._hold(fresh)
                    self._mtime_ns = self.file.mtime_ns()
                if self._on_refresh:
                    self._on_refresh(True)
                log.info("refreshed the Qwen OAuth token for %s", self.file.path)
                return fresh

    def _request_refresh(self, creds: QwenCredentials) -> QwenCredentials:
        form = {
            "grant_type": "refresh_token",
            "refresh_token": creds.refresh_token,
            "client_id": QWEN_OAUTH_CLIENT_ID,
        }
        status, body = post_oauth_form(
            self._http, self._token_url, form, self._timeout, "token refresh"
        )
        if status == 429:
            raise RateLimitError(
                "Qwen is rate-limiting token refreshes; try again in a minute.",
                code="qwen_oauth_refresh_rate_limited",
            )
        if status in (400, 401):
            raise LoginRequiredError(
                f"Qwen rejected the refresh token in {self.file.path}: the login has expired "
                f"or was revoked. To log in again, {LOGIN_HINT}. The credentials file was "
                "left unchanged."
            )
        if status >= 400 or not isinstance(body, dict) or not body.get("access_token"):
            raise UpstreamError(f"Qwen OAuth token refresh failed (HTTP {status}).")
        raw = dict(creds.raw)
        raw["access_token"] = body["access_token"]
        raw["token_type"] = body.get("token_type") or raw.get("token_type") or "Bearer"
        if body.get("refresh_token"):
            raw["refresh_token"] = body["refresh_token"]
        if body.get("resource_url"):
            raw["resource_url"] = body["resource_url"]
        if body.get("id_token"):
            raw["id_token"] = body["id_token"]
        try:
            expires_in = float(body.get("expires_in", 3600))
        except (TypeError, ValueError):
            expires_in = 3600.0
        raw["expiry_date"] = int((self._clock() + expires_in) * 1000)
        return QwenCredentials(raw)


def post_oauth_form(
    http: requests.Session,
    url: str,
    form: dict[str, str],
    timeout: tuple[float, float],
    what: str,
) -> tuple[int, Any]:
    """POST a form to a Qwen OAuth endpoint; return (status, parsed JSON or None)."""
    try:
        response = http.post(
            url,
            data=form,
            headers={"Accept": "application/json"},
            timeout=timeout,
            allow_redirects=False,  # never re-post a token to wherever a redirect points
        )
    except requests.Timeout:
        raise UpstreamTimeoutError(f"Qwen OAuth {what} timed out.") from None
    except requests.RequestException:
        raise UpstreamError(f"Could not reach the Qwen OAuth server for {what}.") from None
    try:
        body = response.json()
    except ValueError:
        body = None
    return response.status_code, body
