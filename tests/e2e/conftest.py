"""End-to-end helpers: SDK clients that are closed after each test (an open client's
sockets would surface as ResourceWarnings, which the suite treats as errors)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import openai
import pytest

_open_clients: list[openai.OpenAI] = []


def wait_for(predicate: Callable[[], object], timeout: float = 5.0, step: float = 0.05) -> bool:
    """Poll `predicate` until it holds or `timeout` passes; its last answer."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return bool(predicate())


def poll(fetch, predicate, timeout: float = 10.0):
    """`fetch()` again every 0.1 s until `predicate` holds of it or `timeout` passes; the
    last value fetched."""
    deadline = time.monotonic() + timeout
    value = fetch()
    while not predicate(value) and time.monotonic() < deadline:
        time.sleep(0.1)
        value = fetch()
    return value


def openai_client(proxy, key: str = "x", **options) -> openai.OpenAI:
    options.setdefault("max_retries", 0)
    options.setdefault("timeout", 20)
    client = openai.OpenAI(base_url=proxy.url + "/v1", api_key=key, **options)
    _open_clients.append(client)
    return client


@pytest.fixture(autouse=True)
def _close_openai_clients() -> Iterator[None]:
    yield
    while _open_clients:
        _open_clients.pop().close()
