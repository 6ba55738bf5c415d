"""The ledger's aggregates: per-minute, per-hour and per-day buckets of the usage rows by
model, backend, session and client key (and one `all` series), each with request, error
and token sums and latency / TTFT histograms. The writer adds a batch's deltas in the
transaction that stores its raw rows; reads cover a window with at most five bucket ranges,
so they cost what the answer holds, not what the ledger holds.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import sqlalchemy as sa

from qwenproxy.store import metadata

# (resolution, bucket width in seconds), finest first. Days are UTC days (epoch-aligned).
RESOLUTIONS: tuple[tuple[str, int], ...] = (("m", 60), ("h", 3600), ("d", 86400))
WIDTH = dict(RESOLUTIONS)
# `ukey`: requests that reached an upstream, by "<backend>/<upstream key id>" (the key of
# the request's final attempt): few groups, so minute buckets too (quota windows, quota.py).
DIMS = ("all", "model", "backend", "session", "key", "ukey")
# Sessions and client keys are many: they get no minute buckets (per minute they would be
# about one bucket per request), so their windows start and end on whole hours.
HOURLY_DIMS = frozenset({"session", "key"})
# The stats groups that map onto a dimension (`day` is read from the `all` series).
DIM_OF_GROUP = {"model": "model", "backend": "backend", "session": "session", "key": "key"}

# Histogram bins of a duration in milliseconds: bin 0 holds [0, 1 ms); bin i (1..62) holds
# [2^((i-1)/3), 2^(i/3)) ms; bin 63 holds everything from 2^(62/3) ms (~28 min) up. A bin
# is read as its geometric middle, so a percentile is within 2^(1/6) - 1 = 12.3% of the
# exact one (within 0.5 ms below 1 ms). Prometheus reads quantiles from buckets the same way.
BINS = 64
STEPS_PER_OCTAVE = 3
PERCENTILE_ERROR = 2 ** (1 / (2 * STEPS_PER_OCTAVE)) - 1

SUMS = (
    "requests",
    "errors",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "cached_tokens",
    "tps_n",
    "cache_write_tokens",
    "cost_rows",  # rows whose cost is known (the others have no price)
)
LATENCY_BINS = tuple(f"lat_{i}" for i in range(BINS))
TTFT_BINS = tuple(f"ttft_{i}" for i in range(BINS))
INT_COUNTERS = SUMS + LATENCY_BINS + TTFT_BINS
FLOAT_COUNTERS = ("tps_sum", "cost_sum")
COUNTERS = (*INT_COUNTERS, *FLOAT_COUNTERS)
N = len(COUNTERS)
_I = {name: i for i, name in enumerate(COUNTERS)}
(REQUESTS, ERRORS, PROMPT, COMPLETION, TOTAL, CACHED, TPS_N, CACHE_WRITE,
 COST_ROWS) = (_I[name] for name in SUMS)  # fmt: skip
LAT0, TTFT0, TPS_SUM, COST_SUM = _I["lat_0"], _I["ttft_0"], _I["tps_sum"], _I["cost_sum"]

agg_table = sa.Table(
    "qp_usage_agg",
    metadata,
    sa.Column("dim", sa.String(8), primary_key=True),
    sa.Column("res", sa.String(1), primary_key=True),
    sa.Column("bucket", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("grp", sa.Text, primary_key=True),
    *(sa.Column(name, sa.BigInteger, nullable=False, server_default="0") for name in SUMS),
    # a bin counts requests of one bucket: 4 bytes are plenty (PostgreSQL stores them fixed)
    *(
        sa.Column(name, sa.Integer, nullable=False, server_default="0")
        for name in LATENCY_BINS + TTFT_BINS
    ),
    *(sa.Column(name, sa.Float, nullable=False, server_default="0") for name in FLOAT_COUNTERS),
)

# The raw-row columns a delta is made of, in this order (see `Deltas.add`).
SOURCE_COLUMNS = (
    "started_at",
    "status",
    "backend",
    "upstream_model",
    "requested_model",
    "session_id",
    "client_key_id",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "cached_tokens",
    "latency_ms",
    "ttft_ms",
    "tokens_per_s",
    "cache_write_tokens",
    "cost",
    "upstream_key_id",
)


def bin_of(ms: float) -> int:
    if ms < 1.0:
        return 0
    return min(BINS - 1, int(math.log2(ms) * STEPS_PER_OCTAVE) + 1)


def bin_value(i: int) -> float:
    """What a value in bin `i` is read as: the bin's geometric middle."""
    if i == 0:
        return 0.5
    if i == BINS - 1:
        return 2 ** ((BINS - 2) / STEPS_PER_OCTAVE)
    return 2 ** ((i - 0.5) / STEPS_PER_OCTAVE)


class Deltas:
    """What a batch of rows adds to each bucket: counters by (dim, res, bucket, group),
    kept sparse (a row touches about ten of the counters) until `rows()`."""

    def __init__(self) -> None:
        self._minute: dict[tuple[str, int, str], dict[int, Any]] = {}

    def add(self, row: Sequence[Any]) -> None:
        """Add one row, given as the values of SOURCE_COLUMNS in order (the upstream key
        id, last, may be left out)."""
        (started, status, backend, upstream, requested, session, key, prompt,
         completion, total, cached, latency, ttft, tps, written, cost) = row[:16]  # fmt: skip
        ukey = row[16] if len(row) > 16 else None
        prompt = prompt or 0
        completion = completion or 0
        changes: list[tuple[int, Any]] = [
            (REQUESTS, 1),
            (PROMPT, prompt),
            (COMPLETION, completion),
            (TOTAL, total if total is not None else prompt + completion),
        ]
        if status >= 400:
            changes.append((ERRORS, 1))
        if cached:
            changes.append((CACHED, cached))
        if tps is not None:
            changes += ((TPS_N, 1), (TPS_SUM, tps))
        if written:
            changes.append((CACHE_WRITE, written))
        if cost is not None:
            changes += ((COST_ROWS, 1), (COST_SUM, cost))
        if latency is not None:
            changes.append((LAT0 + bin_of(latency), 1))
        if ttft is not None:
            changes.append((TTFT0 + bin_of(ttft), 1))
        minute = int(started // 60) * 60
        table = self._minute
        slots = [
            ("all", minute, ""),
            ("model", minute, upstream or requested or "-"),
            ("backend", minute, backend or "-"),
            ("session", minute, session or "-"),
            ("key", minute, key or "-"),
        ]
        if ukey:
            slots.append(("ukey", minute, f"{backend}/{ukey}"))
        for slot in slots:
            counters = table.get(slot)
            if counters is None:
                table[slot] = dict(changes)
            else:
                for index, value in changes:
                    counters[index] = counters.get(index, 0) + value

    def rows(self) -> list[tuple[Any, ...]]:
        """Upsert rows (values in COLUMNS order) for every bucket touched, at every
        resolution, in key order (so concurrent writers lock rows in the same order)."""
        merged: dict[tuple[str, str, int, str], dict[int, Any]] = {}
        for (dim, minute, group), counters in self._minute.items():
            for res, width in RESOLUTIONS:
                if res == "m" and dim in HOURLY_DIMS:
                    continue
                slot = (dim, res, minute - minute % width, group)
                into = merged.get(slot)
                if into is None:
                    merged[slot] = dict(counters)
                else:
                    for index, value in counters.items():
                        into[index] = into.get(index, 0) + value
        rows = []
        for slot in sorted(merged):
            values = empty()
            for index, value in merged[slot].items():
                values[index] = value
            rows.append((*slot, *values))
        return rows


COLUMNS = ("dim", "res", "bucket", "grp", *COUNTERS)
_ON_CONFLICT = "ON CONFLICT (dim, res, bucket, grp) DO UPDATE SET " + ", ".join(
    f"{c} = qp_usage_agg.{c} + excluded.{c}" for c in COUNTERS
)


def upsert_sql(placeholder: str) -> str:
    """The upsert of one row, with the driver's positional placeholder (`?` or `%s`)."""
    return (
        f"INSERT INTO qp_usage_agg ({', '.join(COLUMNS)}) "
        f"VALUES ({', '.join([placeholder] * len(COLUMNS))}) {_ON_CONFLICT}"
    )


UPSERT_SQLITE, UPSERT_PG = upsert_sql("?"), upsert_sql("%s")


_PG_STAGE = (
    "CREATE TEMP TABLE IF NOT EXISTS qp_usage_agg_in "
    "(LIKE qp_usage_agg INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
)
_PG_MERGE = (
    f"INSERT INTO qp_usage_agg ({', '.join(COLUMNS)}) "
    f"SELECT {', '.join(COLUMNS)} FROM qp_usage_agg_in ORDER BY dim, res, bucket, grp "
    + _ON_CONFLICT
)


def upsert(cursor: Any, rows: list[tuple[Any, ...]], postgresql: bool) -> None:
    """Add `rows` (from `Deltas.rows`) to the aggregates in the cursor's transaction.
    PostgreSQL takes many rows through COPY into a temporary table and one merge (an
    `executemany` of 13,000 upserts took ~3 s there); SQLite's executemany is fast."""
    if not rows:
        return
    if not postgresql:
        cursor.executemany(UPSERT_SQLITE, rows)
    elif len(rows) < 50:
        cursor.executemany(UPSERT_PG, rows)
    else:
        cursor.execute(_PG_STAGE)
        with cursor.copy(f"COPY qp_usage_agg_in ({', '.join(COLUMNS)}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        cursor.execute(_PG_MERGE)


# --- windows -------------------------------------------------------------------------------


def window(now: float, since_s: float) -> tuple[int, int]:
    """The whole minutes a `since` window covers: from the minute holding `now - since_s`
    up to and including the current minute."""
    return int((now - since_s) // 60) * 60, int(now // 60) * 60 + 60


def cover(lo: int, hi: int, levels: Sequence[tuple[str, int]] = RESOLUTIONS) -> list[Any]:
    """Ranges `(res, first, end)` of bucket starts whose buckets tile [lo, hi) exactly,
    coarsest first: at most one range of days, two of hours and two of minutes."""
    (res, width), finer = levels[-1], levels[:-1]
    first = -(-lo // width) * width
    end = hi // width * width
    if not finer:
        return [(res, lo, hi)] if lo < hi else []
    if first >= end:
        return cover(lo, hi, finer)
    return [(res, first, end), *cover(lo, first, finer), *cover(end, hi, finer)]


def parts_for(dim: str, lo: int, hi: int) -> list[Any]:
    """The bucket ranges that cover [lo, hi) in `dim`: whole hours for HOURLY_DIMS."""
    if dim not in HOURLY_DIMS:
        return cover(lo, hi)
    return cover(lo // 3600 * 3600, -(-hi // 3600) * 3600, RESOLUTIONS[1:])


def ranged_rows(
    parts: Sequence[tuple[str, int, int]], columns: str, one_group: bool = False
) -> tuple[str, dict[str, Any]]:
    """A subquery (`:name` placeholders) of the `columns` of the buckets of `parts` in
    dimension `:dim` (with `one_group`, of group `:grp` only): one index range per part,
    joined with UNION ALL (an OR of the ranges let SQLite scan every bucket of the
    dimension)."""
    if not parts:
        return f"SELECT {columns} FROM qp_usage_agg WHERE 1 = 0", {}
    selects, params = [], {}
    for i, (res, first, end) in enumerate(parts):
        selects.append(
            f"SELECT {columns} FROM qp_usage_agg WHERE dim = :dim AND res = :r{i} "
            f"AND bucket >= :a{i} AND bucket < :b{i}" + (" AND grp = :grp" if one_group else "")
        )
        params.update({f"r{i}": res, f"a{i}": first, f"b{i}": end})
    return " UNION ALL ".join(selects), params


_COUNTER_LIST = ", ".join(COUNTERS)
SUM_SELECT = ", ".join(f"SUM({c})" for c in COUNTERS)


def grouped_sql(parts: Sequence[tuple[str, int, int]]) -> tuple[str, dict[str, Any]]:
    """Counters summed per group over `parts` (`:dim`, `:limit` to bind), busiest first."""
    inner, params = ranged_rows(parts, f"grp, {_COUNTER_LIST}")
    sql = (
        f"SELECT grp, {SUM_SELECT} FROM ({inner}) AS buckets "
        "GROUP BY grp ORDER BY SUM(requests) DESC, grp LIMIT :limit"
    )
    return sql, params


def series_sql(parts: Sequence[tuple[str, int, int]]) -> tuple[str, dict[str, Any]]:
    """(bucket start, counters...) of the `all` series over `parts`."""
    inner, params = ranged_rows(parts, f"bucket, {_COUNTER_LIST}")
    return inner, {**params, "dim": "all"}


# --- reading counters ----------------------------------------------------------------------


def add_into(total: list[Any], counters: Iterable[Any]) -> None:
    for i, value in enumerate(counters):
        if value:
            total[i] += value


def empty() -> list[Any]:
    return [0] * len(INT_COUNTERS) + [0.0] * len(FLOAT_COUNTERS)


def hist_percentile(counts: Sequence[int], q: float) -> float | None:
    """The q-quantile read from histogram bins, interpolated between the neighbouring
    order statistics as the exact percentile is; None when empty."""
    n = sum(counts)
    if not n:
        return None
    position = (n - 1) * q
    low = math.floor(position)
    high = min(low + 1, n - 1)
    values = _order_values(counts, (low, high))
    return values[0] + (values[1] - values[0]) * (position - low)


def _order_values(counts: Sequence[int], ranks: tuple[int, int]) -> tuple[float, float]:
    found: list[float] = []
    seen = 0
    for i, count in enumerate(counts):
        seen += count
        while len(found) < len(ranks) and ranks[len(found)] < seen:
            found.append(bin_value(i))
        if len(found) == len(ranks):
            break
    return found[0], found[1]


def _round(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


def summary(group: str, counters: Sequence[Any]) -> dict[str, Any]:
    """A stats row (requests, errors, tokens, p50/p95 latency and TTFT, mean tokens/s)."""
    c = [int(v) if i < len(INT_COUNTERS) else float(v) for i, v in enumerate(counters)]
    latency = c[LAT0 : LAT0 + BINS]
    ttft = c[TTFT0 : TTFT0 + BINS]
    return {
        "group": group,
        "requests": c[REQUESTS],
        "errors": c[ERRORS],
        "prompt_tokens": c[PROMPT],
        "completion_tokens": c[COMPLETION],
        "total_tokens": c[TOTAL],
        "cached_tokens": c[CACHED],
        "cache_write_tokens": c[CACHE_WRITE],
        # cached prompt tokens over all prompt tokens
        "cache_hit_ratio": round(c[CACHED] / c[PROMPT], 4) if c[PROMPT] else None,
        # the sum over the rows whose price is known; None when no row had one
        "cost": round(c[COST_SUM], 6) if c[COST_ROWS] else None,
        "cost_unknown_requests": c[REQUESTS] - c[COST_ROWS],
        "latency_ms_p50": _round(hist_percentile(latency, 0.50)),
        "latency_ms_p95": _round(hist_percentile(latency, 0.95)),
        "ttft_ms_p50": _round(hist_percentile(ttft, 0.50)),
        "ttft_ms_p95": _round(hist_percentile(ttft, 0.95)),
        "tokens_per_s_avg": _round(c[TPS_SUM] / c[TPS_N]) if c[TPS_N] else None,
    }
