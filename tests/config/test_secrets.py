"""KnownSecrets: one matcher of the proxy's secrets for the prompt redactor and the log
filter, built at start and again when a login's tokens change; a log call reads no file.

Token refreshes are answered by `responses`; the clock is a fake one."""

from __future__ import annotations

import io
import json
import logging
import os
from pathlib import Path

import pytest
import requests
import responses

from qwenproxy.config import Config
from qwenproxy.config.secrets import MIN_KNOWN_SECRET, KnownSecrets
from qwenproxy.container import build_services
from qwenproxy.logs import SecretFilter
from qwenproxy.pipeline.guards.redaction import PLACEHOLDER
from qwenproxy.upstream.qwen_oauth.creds import CredentialsFile

OAUTH_URL = "https://chat.qwen.ai"
TOKEN_URL = OAUTH_URL + "/api/v1/oauth2/token"
NOW = 1_700_000_000.0
OLD_TOKEN, NEW_TOKEN = "access-token-before-0001", "access-token-after-refresh-0002"


def test_secrets_are_held_longest_first_and_short_ones_left_out() -> None:
    known = KnownSecrets(lambda: ["short", "key-12345", "key-12345-extended", 7, "key-12345"])
    assert known.secrets == ("key-12345-extended", "key-12345")
    assert known.shortest == len("key-12345") >= MIN_KNOWN_SECRET
    assert known.replace("a key-12345-extended b key-12345", "#") == ("a # b #", 2)
    assert KnownSecrets().shortest is None


def test_the_source_is_read_at_refresh_only() -> None:
    calls: list[int] = []

    def source() -> list[str]:
        calls.append(1)
        return ["a-secret-string"]

    known = KnownSecrets(source)
    for _ in range(100):
        known.replace("text with a-secret-string", "#")
    assert len(calls) == 1
    known.refresh()
    assert len(calls) == 2


class FakeClock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


class CountingFile(CredentialsFile):
    """The real creds file, counting how often it is looked at."""

    looks = 0

    def mtime_ns(self) -> int | None:
        CountingFile.looks += 1
        return super().mtime_ns()

    def read(self):  # noqa: ANN201 - QwenCredentials
        CountingFile.looks += 1
        return super().read()


@pytest.fixture
def services(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    path = tmp_path / "oauth_creds.json"
    creds = {
        "access_token": OLD_TOKEN,
        "refresh_token": "refresh-token-before-0001",
        "token_type": "Bearer",
        "expiry_date": int((NOW + 10) * 1000),  # expires within the refresh margin
        "resource_url": "portal.qwen.ai",
    }
    path.write_text(json.dumps(creds))
    os.chmod(path, 0o600)
    monkeypatch.setattr("qwenproxy.container.CredentialsFile", CountingFile)
    config = Config(
        qwen_oauth_creds=(path,),
        qwen_oauth_url=OAUTH_URL,
        data_dir=tmp_path / "data",
        disable_accounting=True,
        model_list_refresh=0.0,
    )
    clock = FakeClock()
    built = build_services(config, http=requests.Session(), clock=clock)
    built.clock = clock
    return built


def logged(secrets: KnownSecrets, *lines: str) -> str:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(SecretFilter(secrets))
    logger = logging.getLogger(f"test.known_secrets.{id(stream)}")
    logger.propagate = False
    logger.addHandler(handler)
    for line in lines:
        logger.warning("%s", line)
    return stream.getvalue()


@responses.activate
def test_a_refreshed_token_is_hidden_from_logs_and_prompts(services) -> None:
    assert OLD_TOKEN not in logged(services.secrets, f"upstream said {OLD_TOKEN}")
    responses.add(
        responses.POST,
        TOKEN_URL,
        json={"access_token": NEW_TOKEN, "refresh_token": "refresh-after-0002", "expires_in": 3600},
    )
    assert services.token_managers[0].access().token == NEW_TOKEN
    out = logged(services.secrets, f"upstream said {NEW_TOKEN}", "refresh-after-0002 too")
    assert NEW_TOKEN not in out and "refresh-after-0002" not in out
    redacted, count = services.completions.redactor.redact_text(f"my token is {NEW_TOKEN}")
    assert (redacted, count) == (f"my token is {PLACEHOLDER}", 1)


def test_a_log_call_does_no_file_io(services) -> None:
    assert isinstance(services.token_managers[0].file, CountingFile)
    services.clock.now += 3600  # long past the creds file's next check
    CountingFile.looks = 0
    out = logged(services.secrets, *(f"line {i} with {OLD_TOKEN}" for i in range(200)))
    assert CountingFile.looks == 0
    assert OLD_TOKEN not in out
