"""Two proxy instances (gunicorn/gevent) on one PostgreSQL enforce one quota window under a
concurrent burst: overshoot at most one request per instance, and both report the count
the ledger holds."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import openai
import requests

from tests.databases import database_url_for
from tests.e2e.conftest import openai_client, wait_for

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
