"""Named client keys end to end, on two instances that share one database: `keys add` on
the command line, the key used through the openai SDK, its own usage visible to it (and
nothing else), a browser login, and `keys revoke` taking effect on both instances within
CLIENT_KEYS_REFRESH. The key is never in the database files or the logs."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import openai
import pytest
import requests

from tests.conftest import ROOT
from tests.databases import DATABASE_KINDS, database_url_for
from tests.e2e.conftest import openai_client, poll

pytestmark = pytest.mark.e2e

ADMIN = "sk-admin-e2e-1"
USER = [{"role": "user", "content": "hi"}]


def cli(data_dir, *args: str, database_url: str | None = None) -> subprocess.CompletedProcess:
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(ROOT),
           "QWENPROXY_DATA_DIR": str(data_dir), "HOME": str(data_dir)}
    if database_url:
        env["DATABASE_URL"] = database_url
    return subprocess.run([sys.executable, "-m", "qwenproxy", "keys", *args], env=env,
                          cwd=data_dir, capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize("kind", DATABASE_KINDS)
def test_add_use_see_own_usage_login_and_revoke_on_two_instances(
    start_proxy, fake, tmp_path, kind
):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    url = None if kind == "sqlite" else database_url_for(kind, tmp_path)  # shared, emptied
    env = dict(PROXY_API_KEY=ADMIN, QWENPROXY_DATA_DIR=str(data_dir), CLIENT_KEYS_REFRESH="0.5",
               DATABASE_URL=url)
    one, two = start_proxy(**env), start_proxy(**env)

    def keys(*args: str) -> subprocess.CompletedProcess:
        return cli(data_dir, *args, database_url=url)

    added = keys("add", "alice", "--requests-per-day", "100", "--models", "qwen3-coder*")
    assert added.returncode == 0, added.stderr
    key = added.stdout.splitlines()[1].strip()
    assert key.startswith("qp-") and len(key) == 35

    client = openai_client(one, key)
    reply = client.chat.completions.create(model="qwen3-coder-plus", messages=USER)
    assert reply.choices[0].message.content
    with pytest.raises(openai.PermissionDeniedError) as refused:
        client.chat.completions.create(model="qwen-max", messages=USER)
    assert refused.value.code == "model_not_allowed"
    assert len(fake.chat_requests) == 1

    own = {"Authorization": f"Bearer {key}"}
    stats = poll(lambda: requests.get(two.url + "/usage/stats", headers=own, timeout=5).json(),
                 lambda body: body.get("data") and body["data"][0]["requests"] >= 2)
    assert stats["data"][0]["requests"] == 2 and stats["data"][0]["errors"] == 1
    admin = {"Authorization": f"Bearer {ADMIN}"}
    assert requests.get(two.url + "/metrics", headers=own, timeout=5).status_code == 403
    assert requests.get(two.url + "/metrics", headers=admin, timeout=5).status_code == 200
    shown = keys("show", "alice")
    assert "requests today (UTC): 2 of 100" in shown.stdout, shown.stdout + shown.stderr

    browser = requests.Session()
    login = browser.post(two.url + "/dashboard/login", data={"key": key},
                         headers={"Origin": two.url}, allow_redirects=False, timeout=5)
    assert login.status_code == 303
    assert "HttpOnly" in login.headers["Set-Cookie"]
    page = browser.get(two.url + "/dashboard", timeout=5)
    assert page.status_code == 200 and "key alice" in page.text and key not in page.text

    revoked = keys("revoke", "alice")
    assert revoked.returncode == 0, revoked.stderr
    started = time.monotonic()
    for proxy in (one, two):
        status = poll(lambda p=proxy: requests.get(p.url + "/usage/stats", headers=own,
                                                   timeout=5).status_code,
                      lambda code: code == 401, timeout=5)
        assert status == 401
    assert time.monotonic() - started < 5
    assert browser.get(two.url + "/dashboard", timeout=5).status_code == 401

    for path in [*data_dir.iterdir(), one.log_path, two.log_path]:
        if path.is_file():
            assert key[3:].encode() not in path.read_bytes(), path
    if url is not None:  # the shared PostgreSQL: no table holds the key
        import sqlalchemy as sa

        engine = sa.create_engine(url)
        try:
            with engine.connect() as conn:
                tables = conn.execute(sa.text(
                    "SELECT table_name FROM information_schema.tables "
                    "WHERE table_schema = 'public' AND table_name LIKE 'qp_%'")).scalars().all()
                for table in tables:
                    rows = conn.execute(sa.text(f'SELECT * FROM "{table}"')).all()
                    assert key[3:] not in repr(rows), table
        finally:
            engine.dispose()
