"""`python -m qwenproxy usage`: an aligned table with a TOTAL line, or JSON, for a known
set of rows in the configured database (SQLite, and PostgreSQL when TEST_DATABASE_URL is
set); bad periods are refused by the argument parser."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from qwenproxy.cli.main import build_parser, main
from qwenproxy.cli.usage import GROUP_CHOICES
from qwenproxy.config import Config
from qwenproxy.ledger.aggregates import PERCENTILE_ERROR
from qwenproxy.ledger.stats import GROUP_BY
from qwenproxy.ledger.writer import UsageLedger, UsageRecord
from qwenproxy.store import Database
from tests.databases import DATABASE_KINDS, database_url_for


@pytest.fixture(params=DATABASE_KINDS)
def config(request: pytest.FixtureRequest, tmp_path: Path) -> Config:
    """A configuration whose database holds five known rows (one of them 10 days old)."""
    url = database_url_for(request.param, tmp_path)
    db = Database(url)
    ledger = UsageLedger(db)
    now = time.time()
    rows = [
        ("qwen-oauth", "coder-model", 200, 1000, 200, 800.0),
        ("qwen-oauth", "coder-model", 200, 3000, 100, 1200.0),
        ("qwen-oauth", "coder-model", 429, None, None, 50.0),
        ("dashscope", "qwen3-coder-plus", 200, 500, 50, 400.0),
    ]
    for backend, model, status, prompt, completion, latency in rows:
        ledger.record(
            UsageRecord(
                started_at=now - 180,  # minutes before any 1s window (whole minutes)
                backend=backend,
                upstream_model=model,
                status=status,
                prompt_tokens=prompt,
                completion_tokens=completion,
                latency_ms=latency,
            )
        )
    ledger.record(UsageRecord(started_at=now - 10 * 86400, backend="old", upstream_model="old"))
    ledger.close()
    db.dispose()
    return Config(data_dir=tmp_path, database_url=url)


def run(config: Config, *argv: str) -> int:
    args = build_parser().parse_args(["usage", *argv])
    return args.handler(config, args)


def test_table_groups_by_model_with_a_total_line(config, capsys):
    assert run(config, "--since", "7d", "--by", "model") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "usage in the last 7d, by model"
    header, rule, coder, plus, rule2, total = lines[1:]
    assert header.split()[:4] == ["group", "requests", "errors", "prompt"]
    assert set(rule) == {"-"} and rule == rule2
    assert coder.split()[:6] == ["coder-model", "3", "1", "4,000", "300", "4,300"]
    assert plus.split()[:6] == ["qwen3-coder-plus", "1", "0", "500", "50", "550"]
    assert total.split()[:6] == ["TOTAL", "4", "1", "4,500", "350", "4,850"]
    # right-aligned numbers: every column ends where its heading ends
    end = header.index("requests") + len("requests")
    assert {line[end - 1] for line in (coder, plus, total)} <= set("0123456789")
    assert all(line[end] == " " for line in (coder, plus, total))


def test_json_report(config, capsys):
    assert run(config, "--since", "24h", "--by", "backend", "--json") == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["since"], report["since_s"], report["group_by"]) == ("24h", 86400.0, "backend")
    groups = {g["group"]: g for g in report["groups"]}
    assert set(groups) == {"qwen-oauth", "dashscope"}
    assert (groups["qwen-oauth"]["requests"], groups["qwen-oauth"]["errors"]) == (3, 1)
    assert groups["qwen-oauth"]["latency_ms_p50"] == pytest.approx(800.0, rel=PERCENTILE_ERROR)
    assert report["total"]["requests"] == 4
    assert report["total"]["prompt_tokens"] == 4500


def test_a_longer_period_includes_older_rows(config, capsys):
    run(config, "--since", "30d", "--json")
    assert json.loads(capsys.readouterr().out)["total"]["requests"] == 5


def test_empty_period_says_so(config, capsys):
    run(config, "--since", "1s")
    assert capsys.readouterr().out.splitlines()[-1] == "no requests recorded"


def test_bad_since_is_refused_by_the_parser(capsys):
    with pytest.raises(SystemExit) as caught:
        build_parser().parse_args(["usage", "--since", "soon"])
    assert caught.value.code == 2
    assert "duration" in capsys.readouterr().err


def test_group_choices_match_the_ledger():
    assert GROUP_CHOICES == GROUP_BY


def test_main_reads_the_database_from_the_environment(tmp_path, monkeypatch, capsys):
    data_dir = tmp_path / "data"
    db = Database(f"sqlite:///{data_dir / 'qwenproxy.db'}")
    ledger = UsageLedger(db)
    ledger.record(UsageRecord(started_at=time.time(), backend="b", upstream_model="m"))
    ledger.close()
    db.dispose()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("QWENPROXY_DATA_DIR", str(data_dir))
    monkeypatch.delenv("DATABASE_URL", raising=False)
    assert main(["usage", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["groups"][0]["group"] == "m"


def test_export_streams_the_raw_rows_of_the_period_as_csv(config, capsys):
    assert run(config, "export", "--since", "7d", "--format", "csv") == 0
    import csv
    import io

    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert len(rows) == 4  # the 10-day-old row is outside the period
    assert {row["backend"] for row in rows} == {"qwen-oauth", "dashscope"}
    assert sorted(row["prompt_tokens"] for row in rows) == ["", "1000", "3000", "500"]


def test_export_as_json_lines_holds_every_field(config, capsys):
    assert run(config, "export", "--since", "30d", "--format", "jsonl") == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 5
    assert rows[0]["backend"] == "old"  # oldest first
    assert set(rows[0]) == set(UsageRecord(started_at=0).as_row())


def test_export_pages_through_rows_that_share_a_start_time(tmp_path):
    db = Database(f"sqlite:///{tmp_path / 'x.db'}")
    ledger = UsageLedger(db)
    now = time.time()
    for i in range(25):
        ledger.record(UsageRecord(started_at=now - 100 - (i // 10), session_id=f"s{i}"))
    ledger.flush()
    exported = list(ledger.export(3600, page=7))
    assert sorted(row["session_id"] for row in exported) == sorted(f"s{i}" for i in range(25))
    ledger.close()
    db.dispose()
