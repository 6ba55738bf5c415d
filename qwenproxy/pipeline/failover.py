"""What failover does with a failed attempt: whether the next target or account may be
tried (429 and 5xx), what the failure does to its account (out of quota or an ended login:
a pause), and the answer when every account of every target is paused.
"""

from __future__ import annotations

from typing import Any

from qwenproxy.errors import ProxyError, RateLimitError
from qwenproxy.pipeline.router import Plan, Target

QUOTA_COOL_DOWN_S = 3600.0
ENDED_ACCOUNT_COOL_DOWN_S = 3600.0


def can_fail_over(error: ProxyError) -> bool:
    return error.status == 429 or error.status >= 500


def key_id_of(target: Target, account: int) -> str | None:
    """The id of the upstream key an attempt uses (None for a backend without ids)."""
    key_id = getattr(target.backend, "key_id", None)
    return key_id(account) if key_id is not None else None


def note_failure(target: Target, account: int, error: ProxyError, quota: Any = None) -> None:
    """What a failed attempt does to its account: out of quota, a pause until its window
    frees by our counts (else the upstream's Retry-After, else QUOTA_COOL_DOWN_S); an ended
    login, a pause that answers with the same error without a call."""
    if error.code == "insufficient_quota":
        seconds = None
        if quota is not None:
            seconds = quota.pause_seconds(target.backend.name, key_id_of(target, account))
        if seconds is None:
            retry_after = error.headers.get("Retry-After") or error.headers.get(
                "retry-after", ""
            )
            seconds = float(retry_after) if retry_after.isdigit() else QUOTA_COOL_DOWN_S
        target.backend.cool_down(account, seconds)
    elif error.code == "qwen_oauth_access_ended" and not target.backend.paused_answer(account):
        target.backend.cool_down(account, ENDED_ACCOUNT_COOL_DOWN_S, answer=error)


def all_paused(plan: Plan) -> RateLimitError:
    """The answer when every account of every target is cooling down after its quota."""
    wait = min(t.backend.seconds_until_ready() for t in plan.targets)
    return RateLimitError(
        f"Every account of {', '.join(sorted({t.backend.name for t in plan.targets}))} is "
        f"paused after running out of quota; ready again in {wait:.0f} s.",
        code="insufficient_quota",
        headers={"Retry-After": str(max(1, round(wait)))},
    )
