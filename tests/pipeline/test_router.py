"""The router's plans as a named client key narrows them: the model each target will send
(after aliases and routes) is matched against the key's globs."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from qwenproxy.edge.client_keys import ClientKey
from qwenproxy.errors import ModelNotAllowedError
from qwenproxy.pipeline.router import Plan, Target, allowed_plan


def _plan(*models: str) -> Plan:
    aliases = {"coder": "qwen3-coder-plus"}
    backend = SimpleNamespace(name="dashscope", upstream_model=lambda m: aliases.get(m, m))
    return Plan(tuple(Target(backend, m) for m in models), policy="m")  # type: ignore[arg-type]


def _key(*globs: str) -> ClientKey:
    return ClientKey("alice", "h", "id", 0.0, models=globs)


def test_a_key_without_globs_may_use_every_model():
    plan = _plan("qwen3-max")
    assert allowed_plan(plan, _key()) is plan


def test_the_model_the_request_will_use_is_checked_after_aliases():
    assert allowed_plan(_plan("coder"), _key("qwen3-coder*")).targets[0].model == "coder"
    assert allowed_plan(_plan("x"), _key("dashscope:*")).targets[0].model == "x"
    with pytest.raises(ModelNotAllowedError) as refused:
        allowed_plan(_plan("qwen3-max"), _key("qwen3-coder*"))
    assert (refused.value.status, refused.value.code) == (403, "model_not_allowed")
    assert "qwen3-max" in refused.value.message


def test_a_route_keeps_only_the_elements_the_key_may_use():
    plan = allowed_plan(_plan("qwen3-max", "qwen3-coder-flash"), _key("qwen3-coder*"))
    assert [t.model for t in plan.targets] == ["qwen3-coder-flash"]
