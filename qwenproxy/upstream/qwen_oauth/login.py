"""qwen-code's `--auth` equivalent: the OAuth 2.0 device authorization grant with PKCE
against chat.qwen.ai, saving the tokens it gets to the creds file that the token manager
(upstream/qwen_oauth/tokens.py) reads and refreshes.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import requests

from qwenproxy.errors import ProxyError, ServiceUnavailableError
from qwenproxy.upstream.qwen_oauth.creds import CredentialsFile, QwenCredentials
from qwenproxy.upstream.qwen_oauth.tokens import (
    DEVICE_CODE_PATH,
    DEVICE_GRANT_TYPE,
    QWEN_OAUTH_CLIENT_ID,
    QWEN_OAUTH_SCOPE,
    TOKEN_PATH,
    post_oauth_form,
)


def pkce_pair() -> tuple[str, str]:
    """(code_verifier, S256 code_challenge) as RFC 7636 describes."""
    verifier = base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()
    digest = hashlib.sha256(verifier.encode()).digest()
    challenge = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
    return verifier, challenge


@dataclass(frozen=True)
class DeviceAuthorization:
    device_code: str
    user_code: str
    verification_uri: str
    verification_uri_complete: str
    expires_in: float
    interval: float
    code_verifier: str


class DeviceFlowLogin:
    """OAuth 2.0 device authorization grant with PKCE against chat.qwen.ai."""

    def __init__(
        self,
        http: requests.Session,
        oauth_url: str,
        creds_file: CredentialsFile,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        timeout: tuple[float, float] = (10.0, 30.0),
    ) -> None:
        self._http = http
        self._base = oauth_url.rstrip("/")
        self._file = creds_file
        self._clock = clock
        self._sleep = sleep
        self._timeout = timeout

    def start(self) -> DeviceAuthorization:
        verifier, challenge = pkce_pair()
        status, body = post_oauth_form(
            self._http,
            self._base + DEVICE_CODE_PATH,
            {
                "client_id": QWEN_OAUTH_CLIENT_ID,
                "scope": QWEN_OAUTH_SCOPE,
                "code_challenge": challenge,
                "code_challenge_method": "S256",
            },
            self._timeout,
            "device authorization",
        )
        if status >= 400 or not isinstance(body, dict) or not body.get("device_code"):
            detail = f"HTTP {status}"
            if isinstance(body, dict) and (body.get("error_description") or body.get("error")):
                detail += ": " + str(body.get("error_description") or body.get("error"))[:200]
            raise ServiceUnavailableError(
                f"Qwen refused to start a device login ({detail}). "
                "New Qwen OAuth logins may no longer be possible (the free OAuth tier ended on "
                "2026-04-15); consider a DashScope or Coding Plan API key instead.",
                code="qwen_oauth_login_unavailable",
            )
        uri = body.get("verification_uri") or ""
        return DeviceAuthorization(
            device_code=body["device_code"],
            user_code=body.get("user_code", ""),
            verification_uri=uri,
            verification_uri_complete=body.get("verification_uri_complete") or uri,
            expires_in=float(body.get("expires_in", 600)),
            interval=float(body.get("interval", 2) or 2),
            code_verifier=verifier,
        )

    def wait(self, auth: DeviceAuthorization) -> QwenCredentials:
        """Poll until the user approves; write the creds file; return it."""
        deadline = self._clock() + auth.expires_in
        interval = max(auth.interval, 2.0)
        form = {
            "grant_type": DEVICE_GRANT_TYPE,
            "client_id": QWEN_OAUTH_CLIENT_ID,
            "device_code": auth.device_code,
            "code_verifier": auth.code_verifier,
        }
        while self._clock() < deadline:
            self._sleep(interval)
            status, body = post_oauth_form(
                self._http, self._base + TOKEN_PATH, form, self._timeout, "device login"
            )
            error = body.get("error") if isinstance(body, dict) else None
            if status == 200 and isinstance(body, dict) and body.get("access_token"):
                return self._save(body)
            if error == "authorization_pending" or (status == 400 and error is None):
                continue
            if error == "slow_down" or status == 429:
                interval = min(interval * 1.5, 10.0)
                continue
            raise ServiceUnavailableError(
                f"Qwen device login failed: {error or f'HTTP {status}'}.",
                code="qwen_oauth_login_failed",
            )
        raise ServiceUnavailableError(
            "Qwen device login timed out before it was approved; run it again.",
            code="qwen_oauth_login_timeout",
        )

    def _save(self, body: dict[str, Any]) -> QwenCredentials:
        try:
            old = dict(self._file.read().raw)
        except ProxyError:
            old = {}
        # Keep unknown fields of the old file, but nothing that belongs to the old login.
        raw = {k: v for k, v in old.items() if k not in ("resource_url", "id_token")}
        for key in ("access_token", "refresh_token", "token_type", "resource_url", "id_token"):
            if body.get(key):
                raw[key] = body[key]
        raw.setdefault("token_type", "Bearer")
        raw["expiry_date"] = int((self._clock() + float(body.get("expires_in", 3600))) * 1000)
        creds = QwenCredentials.from_json(json.dumps(raw), self._file.path)
        self._file.write(creds.raw)
        return creds
