"""Quota windows and client-key budgets through the app: a spent key is skipped, then 429
quota_exhausted; the report, the CLI and the ledger agree; the upstream's own exhausted
answers pause a key until its window frees; budgets answer 429 budget_exceeded."""

from __future__ import annotations

import json
import time

import pytest

from qwenproxy import create_app
from qwenproxy.cli import main as cli
from qwenproxy.config import Config
from qwenproxy.config.secrets import key_id as key_id_of
from qwenproxy.config.tables import parse_prices
from qwenproxy.container import build_services
from qwenproxy.edge.client_keys import ClientKey
from qwenproxy.errors import BudgetExceededError
from qwenproxy.ledger.records import UsageRecord
from qwenproxy.pipeline.quota import REMAINING_HEADER
from qwenproxy.pipeline.service import RequestContext
from qwenproxy.upstream.quota_answers import EXHAUSTED, RATE_LIMITED, classify
from tests.fake_upstream import reply_error

KEY_A, KEY_B = "sk-dash-1", "sk-dash-2"
ID_A, ID_B = key_id_of(KEY_A), key_id_of(KEY_B)


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def chat(client, text="hi"):
    return client.post(
        "/v1/chat/completions",
        json={"model": "qwen3-coder-plus", "messages": [{"role": "user", "content": text}]},
    )


def key_of(request) -> str:
    return request["headers"]["authorization"].removeprefix("Bearer ")


@pytest.fixture
def plan_config(make_config, fake_b):
    def make(windows=None, **overrides) -> Config:
        return make_config(
            coding_plan_api_keys=(KEY_A, KEY_B),
            coding_plan_base_url=fake_b.api_base,
            llm_backend="coding-plan",
            quota_windows=windows if windows is not None else {"coding-plan": {"5h": 2}},
            **overrides,
        )

    return make


@pytest.fixture
def plan_app(plan_config):
    apps = []

    def make(clock=None, **kwargs):
        config = plan_config(**kwargs)
        services = build_services(config, clock=clock or time.time)
        app = create_app(config, services)
        apps.append(services)
        return app, services

    yield make
    for services in apps:
        services.ledger.close()


def earlier_request(services, key_id: str, started_at: float) -> None:
    services.ledger.record(
        UsageRecord(started_at=started_at, backend="coding-plan", upstream_key_id=key_id)
    )
    services.ledger.flush()


def test_a_spent_key_is_skipped_then_the_client_gets_quota_exhausted(plan_app, fake_b):
    app, services = plan_app()
    client = app.test_client()
    an_hour_ago = time.time() - 3600
    earlier_request(services, ID_A, an_hour_ago)  # key A has 1 of its 2 left
    first, second, third = chat(client), chat(client), chat(client)
    # Rotation starts at A, B, A: A's last request spends it, so the third goes to B.
    assert [key_of(r) for r in fake_b.chat_requests] == [KEY_A, KEY_B, KEY_B]
    assert [r.headers[REMAINING_HEADER] for r in (first, second, third)] == ["0", "1", "0"]
    refused = chat(client)
    assert refused.status_code == 429
    assert refused.json["error"]["code"] == "quota_exhausted"
    assert "coding-plan (5h)" in refused.json["error"]["message"]
    assert len(fake_b.chat_requests) == 3  # nothing was sent for the refused one
    # A reopens first: when its request of an hour ago leaves the 5-hour window.
    reopens = int(an_hour_ago // 60) * 60 + 60 + 5 * 3600
    assert abs(int(refused.headers["Retry-After"]) - (reopens - time.time())) <= 2


def test_quota_exhausted_is_anthropic_shaped_on_messages(plan_app, fake_b):
    app, _ = plan_app(windows={"coding-plan": {"1d": 1}})
    client = app.test_client()
    body = {
        "model": "qwen3-coder-plus",
        "max_tokens": 10,
        "messages": [{"role": "user", "content": "hi"}],
    }
    first = client.post("/v1/messages", json=body)
    assert first.status_code == 200 and first.headers[REMAINING_HEADER] == "0"
    assert client.post("/v1/messages", json=body).status_code == 200
    refused = client.post("/v1/messages", json=body)
    assert refused.status_code == 429 and "Retry-After" in refused.headers
    assert refused.json["type"] == "error"
    assert refused.json["error"]["type"] == "rate_limit_error"
    assert "quota exhausted" in refused.json["error"]["message"].lower()


def test_the_report_and_the_cli_agree_with_the_ledger(
    plan_app, plan_config, fake_b, capsys, monkeypatch
):
    app, services = plan_app(windows={"coding-plan": {"5h": 10, "7d": 100}})
    client = app.test_client()
    for _ in range(5):
        assert chat(client).status_code == 200
    services.ledger.flush()
    served = {KEY_A: 0, KEY_B: 0}
    for request in fake_b.chat_requests:
        served[key_of(request)] += 1
    report = client.get("/usage/quota").json["data"]
    assert {(r["key_id"], r["window"]): r["used"] for r in report} == {
        (ID_A, "5h"): served[KEY_A],
        (ID_A, "7d"): served[KEY_A],
        (ID_B, "5h"): served[KEY_B],
        (ID_B, "7d"): served[KEY_B],
    }
    for row in report:
        assert row["remaining"] == row["limit"] - row["used"]
        assert row["backend"] == "coding-plan" and row["resets_at"].endswith("Z")
    metrics = client.get("/metrics").get_data(as_text=True)
    assert f'qwenproxy_quota_remaining{{backend="coding-plan",key_id="{ID_A}",window="5h"}}' in (
        metrics
    )
    monkeypatch.setattr(Config, "from_env", classmethod(lambda cls, *a, **k: services.config))
    assert cli.main(["quota", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["data"] == report
    assert cli.main(["quota"]) == 0
    table = capsys.readouterr().out
    assert ID_A in table and "remaining" in table


def test_the_dashboard_shows_a_gauge_per_key_and_window(plan_app):
    app, _ = plan_app()
    page = app.test_client().get("/dashboard").get_data(as_text=True)
    assert page.count("<meter") == 2 and ID_A in page and ID_B in page


@pytest.mark.parametrize(
    ("status", "code", "message"),
    [
        (429, "insufficient_quota", "You exceeded your current quota, please check your plan."),
        (429, "Throttling.AllocationQuota", "Allocated quota exceeded, please increase it."),
        (403, "AllocationQuota.FreeTierOnly", "The free quota has been exhausted."),
        (429, None, "Free allocated quota exceeded."),
    ],
)
def test_an_exhausted_answer_pauses_the_key_until_its_window_frees(
    plan_app, fake_b, status, code, message
):
    clock = Clock()
    app, services = plan_app(clock=clock)
    client = app.test_client()
    started = clock.now - 2 * 3600
    earlier_request(services, ID_A, started)  # A: 1 of 2 used, 2 hours ago
    fake_b.script.append(reply_error(status, message, code=code))
    assert chat(client).status_code == 200  # A answered "exhausted": B served it
    assert [key_of(r) for r in fake_b.chat_requests] == [KEY_A, KEY_B]
    # Paused until A's fullest window frees: its request of 2 hours ago leaves the window.
    frees = int(started // 60) * 60 + 60 + 5 * 3600
    clock.now = frees - 60
    assert chat(client).status_code == 200
    assert key_of(fake_b.chat_requests[-1]) == KEY_B  # still paused (B now spent too)
    clock.now = frees + 1
    assert chat(client).status_code == 200
    assert key_of(fake_b.chat_requests[-1]) == KEY_A  # free again


def test_a_short_rate_limit_is_not_an_exhausted_quota():
    assert classify(429, "Throttling.RateQuota", "Requests rate limit exceeded", None) == (
        RATE_LIMITED
    )
    assert classify(429, None, "You exceeded your current quota", "20") == RATE_LIMITED
    assert classify(429, None, "You exceeded your current quota", None) == EXHAUSTED
    assert classify(402, None, "Insufficient credits", None) == EXHAUSTED
    assert classify(400, None, "bad request", None) is None


def named_key(**budgets) -> ClientKey:
    return ClientKey(name="alice", key_hash="-", key_id="c1d2e3", created_at=0.0, **budgets)


def ask(services, key: ClientKey):
    ctx = RequestContext(client_id=key.key_id, session_id="s", client_key=key)
    body = {"model": "qwen3-coder-plus", "messages": [{"role": "user", "content": "hi"}]}
    return services.completions.handle(body, ctx)


@pytest.mark.parametrize(
    ("budget", "served", "period"),
    [
        ({"requests_per_day": 3}, 3, "day"),
        ({"tokens_per_month": 25}, 3, "month"),  # the fake answers 10 tokens a request
        ({"cost_per_month": 0.0025}, 3, "month"),
    ],
)
def test_a_spent_budget_is_429_budget_exceeded_until_the_period_ends(
    plan_app, budget, served, period
):
    prices = parse_prices(
        "MODEL_PRICES",
        json.dumps(
            {
                "coding-plan": {
                    "qwen3-coder-plus": {"input": 100.0, "output": 100.0, "currency": "USD"}
                }
            }
        ),
    )
    _, services = plan_app(windows={}, model_prices=prices)
    key = named_key(**budget)
    for _ in range(served):
        ask(services, key)
        services.ledger.flush()
    with pytest.raises(BudgetExceededError) as refused:
        ask(services, key)
    now = time.gmtime()
    if period == "day":
        end = (int(time.time()) // 86400 + 1) * 86400
    else:
        year, month = (now.tm_year + 1, 1) if now.tm_mon == 12 else (now.tm_year, now.tm_mon + 1)
        end = int(time.mktime((year, month, 1, 0, 0, 0, 0, 0, 0)) - time.timezone)
    assert refused.value.status == 429 and refused.value.code == "budget_exceeded"
    assert abs(int(refused.value.headers["Retry-After"]) - (end - time.time())) <= 2
    assert "alice" in refused.value.message


def test_a_stream_carries_the_quota_remaining_header(plan_app, fake_b):
    app, _ = plan_app(windows={"coding-plan": {"5h": 10}})
    response = app.test_client().post(
        "/v1/chat/completions",
        json={
            "model": "qwen3-coder-plus",
            "stream": True,
            "messages": [{"role": "user", "content": "hi"}],
        },
    )
    assert response.status_code == 200
    assert response.headers[REMAINING_HEADER] == "9"
    response.get_data()  # read the stream to its end
