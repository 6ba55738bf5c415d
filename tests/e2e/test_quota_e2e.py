"""Two proxy instances (gunicorn/gevent) on one PostgreSQL enforce one quota window and one
client key's budget under a concurrent burst: overshoot at most one request per instance,
and both report the count the ledger holds."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

import openai
import requests

from tests.databases import database_url_for
from tests.e2e.conftest import openai_client, wait_for
from tests.e2e.test_client_keys_e2e import cli

LIMIT = 15
BURST = 40
USER = [{"role": "user", "content": "hi"}]


def test_two_instances_on_one_postgresql_share_one_quota_window(start_proxy, fake_b, tmp_path):
    url = database_url_for("postgresql", tmp_path)  # emptied; skips without PostgreSQL
    env = {
        "DATABASE_URL": url,
        "LLM_BACKEND": "coding-plan",
        "CODING_PLAN_API_KEY": "sk-dash-1",
        "CODING_PLAN_BASE_URL": fake_b.api_base,
        "QUOTA_WINDOWS": json.dumps({"coding-plan": {"5h": LIMIT}}),
    }
    proxies = [start_proxy(**env), start_proxy(**env)]
    clients = [openai_client(proxy) for proxy in proxies]

    def one(i: int) -> str:
        try:
            clients[i % 2].chat.completions.create(model="qwen3-coder-plus", messages=USER)
            return "served"
        except openai.RateLimitError as exc:
            assert int(exc.response.headers["retry-after"]) >= 1
            return exc.code or "429"

    with ThreadPoolExecutor(16) as pool:
        outcomes = list(pool.map(one, range(BURST)))
    served = outcomes.count("served")
    assert set(outcomes) <= {"served", "quota_exhausted"}
    assert served == len(fake_b.chat_requests)
    assert LIMIT - 2 <= served <= LIMIT + len(proxies)  # overshoot <= one per instance

    def reports() -> list[list[dict]]:
        return [requests.get(p.url + "/usage/quota", timeout=5).json()["data"] for p in proxies]

    assert wait_for(lambda: all(r[0]["used"] == served for r in reports()), timeout=10)
    for report in reports():
        assert report[0]["limit"] == LIMIT
        assert report[0]["remaining"] == max(0, LIMIT - served)


BUDGET = 12


def test_two_instances_on_one_postgresql_share_one_client_key_budget(start_proxy, fake, tmp_path):
    """A named key with --requests-per-day used through both instances at once: together
    they serve the budget (overshoot at most one request per instance), then 429
    budget_exceeded with Retry-After at the end of the UTC day."""
    url = database_url_for("postgresql", tmp_path)  # emptied; skips without PostgreSQL
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    env = {"DATABASE_URL": url, "PROXY_API_KEY": "sk-admin-budget", "CLIENT_KEYS_REFRESH": "0.5",
           "QWENPROXY_DATA_DIR": str(data_dir)}
    proxies = [start_proxy(**env), start_proxy(**env)]
    added = cli(data_dir, "add", "bob", "--requests-per-day", str(BUDGET), database_url=url)
    assert added.returncode == 0, added.stderr
    key = added.stdout.splitlines()[1].strip()
    clients = [openai_client(proxy, key) for proxy in proxies]
    day_end = (int(time.time()) // 86400 + 1) * 86400

    def one(i: int) -> str:
        try:
            clients[i % 2].chat.completions.create(model="qwen3-coder-plus", messages=USER)
            return "served"
        except openai.RateLimitError as exc:
            retry_after = int(exc.response.headers["retry-after"])
            assert abs(time.time() + retry_after - day_end) <= 5
            return exc.code or "429"

    with ThreadPoolExecutor(16) as pool:
        outcomes = list(pool.map(one, range(BURST)))
    served = outcomes.count("served")
    assert set(outcomes) <= {"served", "budget_exceeded"}
    assert served == len(fake.chat_requests)
    assert BUDGET - 2 <= served <= BUDGET + len(proxies)  # overshoot <= one per instance
    # Every request of the burst has its ledger row under the key (refusals too).
    expected = f"requests today (UTC): {BURST} of {BUDGET}"
    assert wait_for(
        lambda: expected in cli(data_dir, "show", "bob", database_url=url).stdout, timeout=10
    )
