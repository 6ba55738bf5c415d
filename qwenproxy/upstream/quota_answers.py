"""Telling an upstream's "your quota is used up" from "slow down": the codes and messages
of Alibaba Cloud Model Studio / Coding Plan, qwen-code's OAuth tier and OpenRouter. An
exhausted key is paused until its window frees; a rate limit keeps the short Retry-After
behaviour.

Sources (read 2026-12):
- Model Studio error codes, https://help.aliyun.com/en/model-studio/error-code-start:
  429 `Throttling.RateQuota` (rate), `Throttling.AllocationQuota` / `insufficient_quota`
  (quota or limit reached: "check the message to identify the limit").
- Model Studio rate limits, https://help.aliyun.com/en/model-studio/rate-limit: "Requests
  rate limit exceeded" / "You exceeded your current requests list" (RPM), "Allocated quota
  exceeded" / "You exceeded your current quota" (TPM), "Request rate increased too quickly"
  (burst protection) — all recover within about a minute on pay-as-you-go keys.
- DashScope's exhausted free quota: 403 type `AllocationQuota.FreeTierOnly`, "The free quota
  has been exhausted" (github.com/axoviq-ai/synthadoc issue 215); qwen-code's OAuth tier:
  429 `insufficient_quota` "Free allocated quota exceeded." (QwenLM/qwen-code issue 1742).
- Coding Plan answers the same OpenAI-compatible `insufficient_quota` / "You exceeded your
  current quota, please check your plan and billing details" when a window is spent
  (issue 17; DESIGN.md "Plans, limits and caching"; anomalyco/opencode issue 23722).
- OpenRouter, https://openrouter.ai/docs/api_reference/limits: 402 when the account's
  credits or the key's credit limit are used up (`metadata.limit_source`
  `openrouter_credits` / `openrouter_key_limit`); 429 for rate limits.
The code `insufficient_quota` is final for the key (OpenAI's meaning, and qwen-code's:
DESIGN.md "Qwen OAuth facts"). Because the words "exceeded your current quota" and the
code `Throttling.AllocationQuota` also mean a per-minute limit on pay-as-you-go Model
Studio keys, an answer of that family without that code counts as a rate limit when it
carries a Retry-After.
"""

from __future__ import annotations

EXHAUSTED = "exhausted"
RATE_LIMITED = "rate_limited"

# Always exhausted: nothing of these frees up within minutes.
_EXHAUSTED_MARKS = (
    "allocationquota.freetieronly",
    "free quota has been exhausted",
    "free allocated quota exceeded",
    "insufficient credits",
    "insufficient_credits",
    "openrouter_credits",
    "openrouter_key_limit",
    "key limit exceeded",
    "usage limit has been reached",
    "quota exceeded for this plan",
)
# Exhausted unless the upstream says when to retry (then a per-minute limit).
_QUOTA_MARKS = (
    "insufficient_quota",
    "exceeded your current quota",
    "throttling.allocationquota",
    "quota exceeded",
)
# Short rate limits.
_RATE_MARKS = (
    "throttling.ratequota",
    "requests rate limit exceeded",
    "exceeded your current requests list",
    "request rate increased too quickly",
    "limitrequests",
    "rate limit",
    "too many requests",
)


def classify(status: int, code: str | None, message: str, retry_after: str | None) -> str | None:
    """EXHAUSTED, RATE_LIMITED, or None (neither: some other refusal)."""
    text = f"{code or ''} {message}".lower()
    if status == 429 and (code or "").lower() == "insufficient_quota":
        return EXHAUSTED
    if status == 402 or any(mark in text for mark in _EXHAUSTED_MARKS):
        return EXHAUSTED if status in (402, 403, 429) else None
    if status != 429:
        return None
    if any(mark in text for mark in _RATE_MARKS):
        return RATE_LIMITED
    if any(mark in text for mark in _QUOTA_MARKS):
        return RATE_LIMITED if retry_after else EXHAUSTED
    return RATE_LIMITED
