"""qwen-code OAuth: the creds file, token refresh, the cross-process lock, device login.

HTTP to https://chat.qwen.ai is answered by `responses`; time is a fake clock and sleeping
only records how long the code wanted to wait.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import responses

from qwenproxy.errors import (
    CredentialsMissingError,
    LoginRequiredError,
    ProxyError,
    ServiceUnavailableError,
    UpstreamError,
    UpstreamTimeoutError,
)
from qwenproxy.upstream.qwen_oauth.creds import CredentialsFile, api_base_from_resource_url
from qwenproxy.upstream.qwen_oauth.login import DeviceAuthorization, DeviceFlowLogin
from qwenproxy.upstream.qwen_oauth.tokens import QwenTokenManager, RefreshLock

NOW = 1_700_000_000.0
OAUTH_URL = "https://chat.qwen.ai"
TOKEN_URL = OAUTH_URL + "/api/v1/oauth2/token"
DEVICE_CODE_URL = OAUTH_URL + "/api/v1/oauth2/device/code"
FALLBACK_BASE = "https://dashscope.example.com/compatible-mode/v1"
CLIENT_ID = "f0304373b74a44d2b584a3fb70ca9e56"


class FakeClock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakeSleep:
    """Records each requested sleep and moves the fake clock on by it."""

    def __init__(self, clock: FakeClock | None = None) -> None:
        self.calls: list[float] = []
        self._clock = clock

    def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)
        if self._clock is not None:
            self._clock.advance(seconds)


def creds_dict(expires_in: float = 3600.0, **extra: Any) -> dict[str, Any]:
    return {
        "access_token": "tok-initial",
        "refresh_token": "refresh-initial",
        "token_type": "Bearer",
        "expiry_date": int((NOW + expires_in) * 1000),
        "resource_url": "portal.qwen.ai",
        **extra,
    }


def write_creds(path: Path, data: dict[str, Any] | None = None, **fields: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data if data is not None else creds_dict(**fields)))
    os.chmod(path, 0o600)
    return path


def bump_mtime(path: Path, seconds: int = 1) -> None:
    """Make sure a rewrite is visible as an mtime change, whatever the fs granularity."""
    st = os.stat(path)
    new = st.st_mtime_ns + seconds * 1_000_000_000
    os.utime(path, ns=(new, new))


def form_of(call: Any) -> dict[str, str]:
    body = call.request.body
    if isinstance(body, bytes):
        body = body.decode()
    parsed = urllib.parse.parse_qs(body, keep_blank_values=True, strict_parsing=True)
    assert all(len(v) == 1 for v in parsed.values()), parsed
    return {k: v[0] for k, v in parsed.items()}


@pytest.fixture
def rsps() -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield mock


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def sleep(clock: FakeClock) -> FakeSleep:
    return FakeSleep(clock)


@pytest.fixture
def creds_path(tmp_path: Path) -> Path:
    return tmp_path / ".qwen" / "oauth_creds.json"


@pytest.fixture
def make_manager(
    creds_path: Path, clock: FakeClock, sleep: FakeSleep
) -> Callable[..., QwenTokenManager]:
    def make(**kwargs: Any) -> QwenTokenManager:
        return QwenTokenManager(
            CredentialsFile(creds_path),
            requests.Session(),
            OAUTH_URL,
            FALLBACK_BASE,
            clock=clock,
            sleep=sleep,
            **kwargs,
        )

    return make


def token_calls(rsps: responses.RequestsMock) -> list[Any]:
    return [c for c in rsps.calls if c.request.url == TOKEN_URL]


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith((".tmp", ".lock")))


# --- using and refreshing the token -------------------------------------------------------


def test_valid_token_is_used_without_refresh(rsps, creds_path, make_manager) -> None:
    rsps.add(responses.POST, TOKEN_URL, json={"access_token": "should-not-be-used"})
    write_creds(creds_path)
    manager = make_manager()
    access = manager.access()
    assert access.token == "tok-initial"
    assert access.api_base == "https://portal.qwen.ai/v1"
    assert manager.access().token == "tok-initial"
    assert token_calls(rsps) == []


def test_api_base_falls_back_when_creds_have_no_resource_url(
    rsps, creds_path, make_manager
) -> None:
    data = creds_dict()
    del data["resource_url"]
    write_creds(creds_path, data)
    assert make_manager().access().api_base == FALLBACK_BASE


@pytest.mark.parametrize(
    ("seconds_left", "refreshed"),
    [(3600, False), (31, False), (30, True), (20, True), (0, True), (-600, True)],
)
def test_token_is_refreshed_within_30_seconds_of_expiry(
    rsps, creds_path, make_manager, seconds_left: float, refreshed: bool
) -> None:
    rsps.add(
        responses.POST,
        TOKEN_URL,
        json={"access_token": "tok-new", "token_type": "Bearer", "expires_in": 3600},
    )
    write_creds(creds_path, expires_in=seconds_left)
    token = make_manager().access().token
    assert token == ("tok-new" if refreshed else "tok-initial")
    assert len(token_calls(rsps)) == (1 if refreshed else 0)


def test_refresh_request_is_a_form_with_the_qwen_code_client_id(
    rsps, creds_path, make_manager
) -> None:
    rsps.add(responses.POST, TOKEN_URL, json={"access_token": "tok-new", "expires_in": 3600})
    write_creds(creds_path, expires_in=20)
    manager = make_manager()
    assert manager.access().token == "tok-new"
    (call,) = token_calls(rsps)
    assert call.request.method == "POST"
    assert call.request.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert form_of(call) == {
        "grant_type": "refresh_token",
        "refresh_token": "refresh-initial",
        "client_id": CLIENT_ID,
    }
    # The new token is cached: the next request does not refresh again.
    assert manager.access().token == "tok-new"
    assert len(token_calls(rsps)) == 1


def test_refreshed_file_keeps_unknown_fields_and_old_values_the_answer_omits(
    rsps, creds_path, make_manager, clock
) -> None:
    rsps.add(responses.POST, TOKEN_URL, json={"access_token": "tok-new", "expires_in": 7200})
    write_creds(
        creds_path,
        expires_in=10,
        resource_url="portal.qwen.ai",
        custom_field={"kept": [1, 2]},
        id_token="id-old",
    )
    access = make_manager().access()
    saved = json.loads(creds_path.read_text())
    assert saved == {
        "access_token": "tok-new",
        "refresh_token": "refresh-initial",
        "token_type": "Bearer",
        "expiry_date": int((clock.now + 7200) * 1000),
        "resource_url": "portal.qwen.ai",
        "custom_field": {"kept": [1, 2]},
        "id_token": "id-old",
    }
    assert access.api_base == "https://portal.qwen.ai/v1"


def test_refreshed_file_takes_new_refresh_token_and_resource_url(
    rsps, creds_path, make_manager, clock
) -> None:
    rsps.add(
        responses.POST,
        TOKEN_URL,
        json={
            "access_token": "tok-new",
            "refresh_token": "refresh-new",
            "resource_url": "other.qwen.ai",
            "token_type": "Bearer",
            "expires_in": 3600,
        },
    )
    write_creds(creds_path, expires_in=10, custom="x")
    access = make_manager().access()
    saved = json.loads(creds_path.read_text())
    assert saved["access_token"] == "tok-new"
    assert saved["refresh_token"] == "refresh-new"
    assert saved["resource_url"] == "other.qwen.ai"
    assert saved["custom"] == "x"
    assert saved["expiry_date"] == int((clock.now + 3600) * 1000)
    assert access.api_base == "https://other.qwen.ai/v1"


def test_the_next_refresh_uses_the_new_refresh_token(rsps, creds_path, make_manager, clock) -> None:
    rsps.add(
        responses.POST,
        TOKEN_URL,
        json={"access_token": "tok-2", "refresh_token": "refresh-2", "expires_in": 3600},
    )
    rsps.add(responses.POST, TOKEN_URL, json={"access_token": "tok-3", "expires_in": 3600})
    write_creds(creds_path, expires_in=10)
    manager = make_manager()
    assert manager.access().token == "tok-2"
    clock.advance(3600)
    assert manager.access().token == "tok-3"
    first, second = token_calls(rsps)
    assert form_of(first)["refresh_token"] == "refresh-initial"
    assert form_of(second)["refresh_token"] == "refresh-2"


def test_refreshed_file_is_0600_and_nothing_is_left_behind(rsps, creds_path, make_manager) -> None:
    rsps.add(responses.POST, TOKEN_URL, json={"access_token": "tok-new", "expires_in": 3600})
    write_creds(creds_path, expires_in=10)
    os.chmod(creds_path, 0o644)
    make_manager().access()
    assert stat.S_IMODE(os.stat(creds_path).st_mode) == 0o600
    assert leftovers(creds_path.parent) == []
    assert sorted(p.name for p in creds_path.parent.iterdir()) == ["oauth_creds.json"]


def test_refresh_reports_success_to_on_refresh(rsps, creds_path, make_manager) -> None:
    rsps.add(responses.POST, TOKEN_URL, json={"access_token": "tok-new", "expires_in": 3600})
    write_creds(creds_path, expires_in=10)
    outcomes: list[bool] = []
    make_manager(on_refresh=outcomes.append).access()
    assert outcomes == [True]


@pytest.mark.parametrize(
    ("status", "answer"),
    [
        (400, {"error": "invalid_grant", "error_description": "refresh token expired"}),
        (401, {"error": "invalid_client"}),
        (400, None),
    ],
)
def test_dead_refresh_token_asks_for_login_and_leaves_the_file_alone(
    rsps, creds_path, make_manager, status: int, answer: dict[str, Any] | None
) -> None:
    if answer is None:
        rsps.add(responses.POST, TOKEN_URL, status=status, body="Bad Request")
    else:
        rsps.add(responses.POST, TOKEN_URL, status=status, json=answer)
    write_creds(creds_path, expires_in=10, custom="x")
    before = creds_path.read_bytes()
    outcomes: list[bool] = []
    manager = make_manager(on_refresh=outcomes.append)
    with pytest.raises(LoginRequiredError) as caught:
        manager.access()
    error = caught.value
    assert error.status == 503
    assert error.code == "qwen_oauth_login_required"
    assert "auth login" in error.message
    assert str(creds_path) in error.message
    assert creds_path.read_bytes() == before
    assert leftovers(creds_path.parent) == []  # lock released, no temp file
    assert outcomes == [False]


@pytest.mark.parametrize(
    ("status", "kwargs"),
    [
        (500, {"json": {"error": "server_error"}}),
        (502, {"body": "<html>bad gateway</html>"}),
        (503, {"body": ""}),
        (200, {"json": {"token_type": "Bearer"}}),  # no access_token
        (200, {"body": "not json"}),
    ],
)
def test_failed_refresh_is_an_upstream_error_and_leaves_the_file_alone(
    rsps, creds_path, make_manager, status: int, kwargs: dict[str, Any]
) -> None:
    rsps.add(responses.POST, TOKEN_URL, status=status, **kwargs)
    write_creds(creds_path, expires_in=10)
    before = creds_path.read_bytes()
    with pytest.raises(UpstreamError) as caught:
        make_manager().access()
    assert caught.value.status == 502
    assert not isinstance(caught.value, LoginRequiredError)
    assert creds_path.read_bytes() == before
    assert leftovers(creds_path.parent) == []


def test_rate_limited_refresh_does_not_claim_the_login_expired(
    rsps, creds_path, make_manager
) -> None:
    # Being throttled by the token endpoint says nothing about the refresh token; telling
    # the user to log in again would be wrong (qwen-code treats only 400 as "re-login").
    rsps.add(
        responses.POST,
        TOKEN_URL,
        status=429,
        json={"error": "rate_limited", "error_description": "too many requests"},
    )
    write_creds(creds_path, expires_in=10)
    before = creds_path.read_bytes()
    with pytest.raises(ProxyError) as caught:
        make_manager().access()
    assert not isinstance(caught.value, LoginRequiredError)
    assert caught.value.code != "qwen_oauth_login_required"
    assert "log in again" not in caught.value.message
    assert creds_path.read_bytes() == before


@pytest.mark.parametrize(
    ("failure", "error_type", "status"),
    [
        (requests.ConnectionError("refused"), UpstreamError, 502),
        (requests.ReadTimeout("slow"), UpstreamTimeoutError, 504),
    ],
)
def test_unreachable_token_endpoint(
    rsps, creds_path, make_manager, failure: Exception, error_type: type, status: int
) -> None:
    rsps.add(responses.POST, TOKEN_URL, body=failure)
    write_creds(creds_path, expires_in=10)
    before = creds_path.read_bytes()
    with pytest.raises(error_type) as caught:
        make_manager().access()
    assert caught.value.status == status
    assert creds_path.read_bytes() == before


# --- a missing or broken creds file ---------------------------------------------------------


def assert_credentials_missing(error: CredentialsMissingError, path: Path) -> None:
    assert error.status == 503
    assert error.code == "qwen_oauth_credentials_missing"
    assert str(path) in error.message
    assert "auth login" in error.message


def test_missing_file_is_credentials_missing(rsps, creds_path, make_manager) -> None:
    with pytest.raises(CredentialsMissingError) as caught:
        make_manager().access()
    assert_credentials_missing(caught.value, creds_path)
    assert not creds_path.exists()


@pytest.mark.parametrize(
    "content",
    [
        "{not json",
        "",
        "[1, 2]",
        json.dumps({k: v for k, v in creds_dict().items() if k != "access_token"}),
        json.dumps({k: v for k, v in creds_dict().items() if k != "refresh_token"}),
        json.dumps({k: v for k, v in creds_dict().items() if k != "token_type"}),
        json.dumps({k: v for k, v in creds_dict().items() if k != "expiry_date"}),
        json.dumps(creds_dict(access_token="")),
        json.dumps(creds_dict(expiry_date="tomorrow")),
    ],
    ids=[
        "invalid-json",
        "empty",
        "array",
        "no-access-token",
        "no-refresh-token",
        "no-token-type",
        "no-expiry",
        "empty-access-token",
        "expiry-not-a-number",
    ],
)
def test_broken_file_is_credentials_missing(rsps, creds_path, make_manager, content: str) -> None:
    rsps.add(responses.POST, TOKEN_URL, json={"access_token": "tok-new", "expires_in": 3600})
    creds_path.parent.mkdir(parents=True)
    creds_path.write_text(content)
    with pytest.raises(CredentialsMissingError) as caught:
        make_manager().access()
    assert_credentials_missing(caught.value, creds_path)
    assert creds_path.read_text() == content  # never "repaired" or truncated
    assert token_calls(rsps) == []


# --- another process refreshed the file -------------------------------------------------------


def test_rejection_when_file_already_holds_a_newer_token_does_not_refresh(
    rsps, creds_path, make_manager
) -> None:
    rsps.add(responses.POST, TOKEN_URL, json={"access_token": "tok-ours", "expires_in": 3600})
    write_creds(creds_path)
    manager = make_manager()
    assert manager.access().token == "tok-initial"
    # qwen-code (another process) refreshes the token and rewrites the file.
    write_creds(creds_path, access_token="tok-from-other-process", refresh_token="refresh-2")
    access = manager.refresh_after_rejection("tok-initial")
    assert access.token == "tok-from-other-process"
    assert token_calls(rsps) == []
    assert json.loads(creds_path.read_text())["access_token"] == "tok-from-other-process"


def test_rejection_of_the_current_token_refreshes_it(rsps, creds_path, make_manager) -> None:
    rsps.add(responses.POST, TOKEN_URL, json={"access_token": "tok-new", "expires_in": 3600})
    write_creds(creds_path)  # valid for an hour, but the API said no
    manager = make_manager()
    assert manager.access().token == "tok-initial"
    assert manager.refresh_after_rejection("tok-initial").token == "tok-new"
    assert len(token_calls(rsps)) == 1
    assert json.loads(creds_path.read_text())["access_token"] == "tok-new"


def test_file_is_reread_when_it_changes_after_the_check_interval(
    rsps, creds_path, make_manager, clock
) -> None:
    write_creds(creds_path)
    manager = make_manager()
    assert manager.access().token == "tok-initial"
    write_creds(creds_path, access_token="tok-changed", resource_url="changed.qwen.ai")
    bump_mtime(creds_path)
    clock.advance(1)
    assert manager.access().token == "tok-initial"  # not re-checked within 5 s
    clock.advance(4)
    access = manager.access()
    assert access.token == "tok-changed"
    assert access.api_base == "https://changed.qwen.ai/v1"
    assert token_calls(rsps) == []


def test_file_deleted_after_start_reports_missing_credentials(
    rsps, creds_path, make_manager, clock
) -> None:
    write_creds(creds_path)
    manager = make_manager()
    assert manager.access().token == "tok-initial"
    creds_path.unlink()
    clock.advance(5)
    with pytest.raises(CredentialsMissingError):
        manager.access()


def test_refresh_takes_over_a_stale_lock_left_by_a_crashed_process(
    rsps, creds_path, make_manager, clock, sleep
) -> None:
    rsps.add(responses.POST, TOKEN_URL, json={"access_token": "tok-new", "expires_in": 3600})
    write_creds(creds_path, expires_in=10)
    lock = creds_path.with_suffix(".lock")
    lock.write_text("crashed-process")
    os.utime(lock, (clock.now - 60, clock.now - 60))
    assert make_manager().access().token == "tok-new"
    assert not lock.exists()
    assert sleep.calls == []


def test_refresh_gives_up_when_another_process_keeps_the_lock(
    rsps, creds_path, make_manager, clock
) -> None:
    rsps.add(responses.POST, TOKEN_URL, json={"access_token": "tok-new", "expires_in": 3600})
    write_creds(creds_path, expires_in=10)
    lock = creds_path.with_suffix(".lock")
    lock.write_text("busy-process")
    # The holder keeps its lock fresh (its mtime follows our fake clock).
    manager = QwenTokenManager(
        CredentialsFile(creds_path),
        requests.Session(),
        OAUTH_URL,
        FALLBACK_BASE,
        clock=clock,
        sleep=lambda s: (clock.advance(s), os.utime(lock, (clock.now, clock.now))),
    )
    os.utime(lock, (clock.now, clock.now))
    before = creds_path.read_bytes()
    with pytest.raises(ServiceUnavailableError) as caught:
        manager.access()
    assert caught.value.status == 503
    assert token_calls(rsps) == []
    assert creds_path.read_bytes() == before
    assert lock.read_text() == "busy-process"


# --- RefreshLock ------------------------------------------------------------------------------


def test_lock_is_created_and_removed(tmp_path, clock) -> None:
    path = tmp_path / "oauth_creds.lock"
    sleep = FakeSleep()
    with RefreshLock(path, sleep=sleep, clock=clock):
        assert path.exists()
        assert path.read_text()  # holds its owner id
    assert not path.exists()
    assert sleep.calls == []


def test_two_locks_have_different_owners(tmp_path, clock) -> None:
    path = tmp_path / "oauth_creds.lock"
    with RefreshLock(path, sleep=FakeSleep(), clock=clock):
        first = path.read_text()
    with RefreshLock(path, sleep=FakeSleep(), clock=clock):
        second = path.read_text()
    assert first != second


def test_stale_lock_is_removed_and_taken(tmp_path, clock) -> None:
    path = tmp_path / "oauth_creds.lock"
    path.write_text("dead-owner")
    os.utime(path, (clock.now - 11, clock.now - 11))
    sleep = FakeSleep()
    with RefreshLock(path, sleep=sleep, clock=clock):
        assert path.read_text() != "dead-owner"
    assert not path.exists()
    assert sleep.calls == []


def test_fresh_foreign_lock_is_retried_with_backoff_then_refused(tmp_path, clock) -> None:
    path = tmp_path / "oauth_creds.lock"
    path.write_text("other-owner")
    os.utime(path, (clock.now - 9, clock.now - 9))  # 9 s old: not stale yet
    sleep = FakeSleep()  # does not move the clock, so the lock stays fresh
    with pytest.raises(ServiceUnavailableError) as caught:
        with RefreshLock(path, sleep=sleep, clock=clock):
            pytest.fail("took a lock another process holds")
    assert caught.value.status == 503
    assert str(path) in caught.value.message
    expected = [0.1]
    while len(expected) < 20:
        expected.append(min(expected[-1] * 1.5, 2.0))
    # 20 tries: a sleep between each pair of tries (a last sleep after the 20th try is
    # tolerated, as qwen-code does the same).
    assert len(sleep.calls) in (19, 20)
    assert sleep.calls == pytest.approx(expected[: len(sleep.calls)])
    assert sleep.calls[:4] == pytest.approx([0.1, 0.15, 0.225, 0.3375])
    assert max(sleep.calls) == 2.0
    assert path.read_text() == "other-owner"  # the foreign lock is left alone


def test_lock_freed_by_its_holder_during_backoff_is_taken(tmp_path, clock) -> None:
    path = tmp_path / "oauth_creds.lock"
    path.write_text("other-owner")
    os.utime(path, (clock.now, clock.now))
    calls: list[float] = []

    def sleep(seconds: float) -> None:
        calls.append(seconds)
        if len(calls) == 3:
            path.unlink()  # the other process finishes its refresh

    with RefreshLock(path, sleep=sleep, clock=clock):
        assert path.read_text() != "other-owner"
    assert calls == pytest.approx([0.1, 0.15, 0.225])
    assert not path.exists()


def test_release_never_removes_another_owners_lock(tmp_path, clock) -> None:
    path = tmp_path / "oauth_creds.lock"
    with RefreshLock(path, sleep=FakeSleep(), clock=clock):
        # Another process judged our lock stale and took it over.
        path.write_text("another-owner")
    assert path.exists()
    assert path.read_text() == "another-owner"


def test_release_after_the_lock_vanished_is_quiet(tmp_path, clock) -> None:
    path = tmp_path / "oauth_creds.lock"
    with RefreshLock(path, sleep=FakeSleep(), clock=clock):
        path.unlink()
    assert not path.exists()


def test_lock_is_released_when_the_body_raises(tmp_path, clock) -> None:
    path = tmp_path / "oauth_creds.lock"
    with pytest.raises(RuntimeError):
        with RefreshLock(path, sleep=FakeSleep(), clock=clock):
            raise RuntimeError("refresh failed")
    assert not path.exists()


# --- api_base_from_resource_url ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("resource_url", "expected"),
    [
        ("portal.qwen.ai", "https://portal.qwen.ai/v1"),
        ("portal.qwen.ai/", "https://portal.qwen.ai/v1"),
        ("http://127.0.0.1:9000", "http://127.0.0.1:9000/v1"),
        ("https://x/v1", "https://x/v1"),
        ("https://x/v1/", "https://x/v1"),
        ("https://dashscope.aliyuncs.com", "https://dashscope.aliyuncs.com/v1"),
        (None, FALLBACK_BASE),
        ("", FALLBACK_BASE),
    ],
)
def test_api_base_from_resource_url(resource_url: str | None, expected: str) -> None:
    assert api_base_from_resource_url(resource_url, FALLBACK_BASE) == expected


def test_api_base_fallback_loses_its_trailing_slash() -> None:
    assert api_base_from_resource_url(None, FALLBACK_BASE + "/") == FALLBACK_BASE


# --- device-flow login ------------------------------------------------------------------------


DEVICE_ANSWER = {
    "device_code": "dev-code-1",
    "user_code": "ABCD-1234",
    "verification_uri": "https://chat.qwen.ai/authorize",
    "verification_uri_complete": "https://chat.qwen.ai/authorize?user_code=ABCD-1234",
    "expires_in": 600,
    "interval": 2,
}


@pytest.fixture
def login(creds_path: Path, clock: FakeClock, sleep: FakeSleep) -> DeviceFlowLogin:
    return DeviceFlowLogin(
        requests.Session(), OAUTH_URL, CredentialsFile(creds_path), clock=clock, sleep=sleep
    )


def authorization(**overrides: Any) -> DeviceAuthorization:
    values: dict[str, Any] = {
        "device_code": "dev-code-1",
        "user_code": "ABCD-1234",
        "verification_uri": "https://chat.qwen.ai/authorize",
        "verification_uri_complete": "https://chat.qwen.ai/authorize?user_code=ABCD-1234",
        "expires_in": 600.0,
        "interval": 2.0,
        "code_verifier": "verifier-" + "v" * 40,
    }
    values.update(overrides)
    return DeviceAuthorization(**values)


def test_device_login_start_sends_pkce_s256(rsps, login) -> None:
    rsps.add(responses.POST, DEVICE_CODE_URL, json=DEVICE_ANSWER)
    auth = login.start()
    (call,) = rsps.calls
    form = form_of(call)
    assert form["client_id"] == CLIENT_ID
    assert form["scope"] == "openid profile email model.completion"
    assert form["code_challenge_method"] == "S256"
    digest = hashlib.sha256(auth.code_verifier.encode()).digest()
    assert form["code_challenge"] == base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
    assert "code_verifier" not in form  # the verifier stays secret until the token call
    assert 43 <= len(auth.code_verifier) <= 128
    assert auth.device_code == "dev-code-1"
    assert auth.user_code == "ABCD-1234"
    assert auth.verification_uri_complete.endswith("user_code=ABCD-1234")
    assert auth.expires_in == 600
    assert auth.interval == 2


def test_device_login_uses_a_new_verifier_each_time(rsps, login) -> None:
    rsps.add(responses.POST, DEVICE_CODE_URL, json=DEVICE_ANSWER)
    first, second = login.start(), login.start()
    assert first.code_verifier != second.code_verifier
    assert form_of(rsps.calls[0])["code_challenge"] != form_of(rsps.calls[1])["code_challenge"]


def test_device_login_start_refused(rsps, login) -> None:
    rsps.add(
        responses.POST,
        DEVICE_CODE_URL,
        status=400,
        json={"error": "unauthorized_client", "error_description": "OAuth disabled"},
    )
    with pytest.raises(ServiceUnavailableError) as caught:
        login.start()
    assert caught.value.status == 503
    assert caught.value.code == "qwen_oauth_login_unavailable"
    assert "OAuth disabled" in caught.value.message


def test_device_login_wait_polls_slows_down_and_writes_creds(
    rsps, login, creds_path, clock, sleep
) -> None:
    rsps.add(responses.POST, TOKEN_URL, status=400, json={"error": "authorization_pending"})
    rsps.add(responses.POST, TOKEN_URL, status=429, json={"error": "slow_down"})
    rsps.add(
        responses.POST,
        TOKEN_URL,
        json={
            "access_token": "tok-device",
            "refresh_token": "refresh-device",
            "token_type": "Bearer",
            "resource_url": "portal.qwen.ai",
            "expires_in": 3600,
        },
    )
    auth = authorization()
    creds = login.wait(auth)
    assert sleep.calls == [2.0, 2.0, 3.0]  # 2 s, pending: 2 s, slow_down: x1.5
    calls = token_calls(rsps)
    assert len(calls) == 3
    assert form_of(calls[0]) == {
        "grant_type": "urn:ietf:params:oauth:grant-type:device_code",
        "client_id": CLIENT_ID,
        "device_code": "dev-code-1",
        "code_verifier": auth.code_verifier,
    }
    saved = json.loads(creds_path.read_text())
    assert saved["access_token"] == "tok-device"
    assert saved["refresh_token"] == "refresh-device"
    assert saved["token_type"] == "Bearer"
    assert saved["resource_url"] == "portal.qwen.ai"
    assert saved["expiry_date"] == int((NOW + 7 + 3600) * 1000)
    assert stat.S_IMODE(os.stat(creds_path).st_mode) == 0o600
    assert creds.access_token == "tok-device"
    assert leftovers(creds_path.parent) == []
    # The file written is one the token manager accepts.
    manager = QwenTokenManager(
        CredentialsFile(creds_path), requests.Session(), OAUTH_URL, FALLBACK_BASE, clock=clock
    )
    assert manager.access().token == "tok-device"


def test_device_login_slow_down_interval_is_capped_at_10_seconds(rsps, login, sleep) -> None:
    for _ in range(6):
        rsps.add(responses.POST, TOKEN_URL, status=400, json={"error": "slow_down"})
    rsps.add(
        responses.POST,
        TOKEN_URL,
        json={"access_token": "a", "refresh_token": "r", "expires_in": 3600},
    )
    login.wait(authorization())
    assert sleep.calls == pytest.approx([2.0, 3.0, 4.5, 6.75, 10.0, 10.0, 10.0])


def test_device_login_never_polls_faster_than_every_2_seconds(rsps, login, sleep) -> None:
    rsps.add(
        responses.POST,
        TOKEN_URL,
        json={"access_token": "a", "refresh_token": "r", "expires_in": 3600},
    )
    login.wait(authorization(interval=0.1))
    assert sleep.calls == [2.0]


def test_device_login_writes_token_type_default_bearer(rsps, login, creds_path) -> None:
    rsps.add(
        responses.POST,
        TOKEN_URL,
        json={"access_token": "a", "refresh_token": "r", "expires_in": 3600},
    )
    login.wait(authorization())
    assert json.loads(creds_path.read_text())["token_type"] == "Bearer"


@pytest.mark.parametrize("error", ["expired_token", "access_denied"])
def test_device_login_expired_or_denied_is_an_error(rsps, login, creds_path, error: str) -> None:
    rsps.add(responses.POST, TOKEN_URL, status=400, json={"error": "authorization_pending"})
    rsps.add(responses.POST, TOKEN_URL, status=400, json={"error": error})
    with pytest.raises(ServiceUnavailableError) as caught:
        login.wait(authorization())
    assert caught.value.status == 503
    assert error in caught.value.message
    assert not creds_path.exists()


def test_device_login_times_out_when_never_approved(rsps, login, creds_path, clock, sleep) -> None:
    rsps.add(responses.POST, TOKEN_URL, status=400, json={"error": "authorization_pending"})
    with pytest.raises(ServiceUnavailableError) as caught:
        login.wait(authorization(expires_in=10.0))
    assert caught.value.code == "qwen_oauth_login_timeout"
    assert clock.now >= NOW + 10
    assert sum(sleep.calls) <= 10 + 2  # stops at the code's expiry, not long after
    assert not creds_path.exists()
