"""Upstream refusals for length, in each provider's words (sources in
upstream/length_refusals.py), read into the window and the prompt's size."""

from __future__ import annotations

import pytest

from qwenproxy.upstream.length_refusals import context_refusal


@pytest.mark.parametrize(
    "status, message, code, limit, prompt",
    [
        (
            400,
            "<400> InternalError.Algo.InvalidParameter: Range of input length should be "
            "[1, 129024]",
            "invalid_parameter_error",
            129024,
            None,
        ),
        (500, "Range of input length should be [1, 30720]", "InternalError", 30720, None),
        (
            400,
            "This model's maximum context length is 32768 tokens. However, you requested "
            "40000 tokens (38000 in the messages, 2000 in the completion).",
            None,
            32768,
            38000,
        ),
        (
            400,
            "'max_tokens' is too large: 2000. This model's maximum context length is 32768 "
            "tokens and your request has 31000 input tokens",
            None,
            32768,
            31000,
        ),
        (
            400,
            "This endpoint's maximum context length is 262144 tokens. However, you requested "
            "about 300000 tokens (300000 of text input).",
            None,
            262144,
            300000,
        ),
        (400, "too long", "context_length_exceeded", None, None),
        (413, "Payload Too Large", None, None, None),
    ],
)
def test_upstream_length_refusals_are_recognised(status, message, code, limit, prompt):
    error = context_refusal(status, message, code)
    assert error is not None
    assert (error.limit, error.prompt_tokens) == (limit, prompt)
    assert error.status == 400


@pytest.mark.parametrize(
    "status, message",
    [(400, "model 'x' is not supported"), (401, "invalid access token"), (500, "boom")],
)
def test_other_refusals_are_left_alone(status, message):
    assert context_refusal(status, message) is None
