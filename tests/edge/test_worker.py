"""What the gunicorn worker answers for requests gunicorn refuses itself."""

from __future__ import annotations

import orjson
from gunicorn.http import errors as gerrors

from qwenproxy.edge.worker import error_bytes, gunicorn_refusal


def test_gunicorn_parse_errors_keep_gunicorns_statuses_with_error_codes():
    cases = {
        gerrors.LimitRequestHeaders("limit request headers fields size"): (
            431, "request_header_fields_too_large"),
        gerrors.LimitRequestLine(9000, 4094): (414, "request_line_too_long"),
        gerrors.InvalidRequestLine("GARBAGE"): (400, "invalid_request"),
        gerrors.InvalidHeader("X-A\x01"): (400, "invalid_request"),
        gerrors.UnsupportedTransferCoding("gzip"): (501, "unsupported_transfer_coding"),
        gerrors.ForbiddenProxyRequest("10.0.0.1"): (403, "forbidden"),
        gerrors.InvalidResponseHeader("X-Bad"): (500, "internal_error"),
        RuntimeError("boom"): (500, "internal_error"),
    }
    for exc, (status, code) in cases.items():
        error = gunicorn_refusal(exc)
        assert (error.status, error.code) == (status, code), exc
        assert "GARBAGE" not in error.message and "\x01" not in error.message


def test_the_answer_is_a_whole_json_response_that_closes_the_connection():
    raw = error_bytes(gunicorn_refusal(gerrors.LimitRequestHeaders("x")))
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[0] == "HTTP/1.1 431 Request Header Fields Too Large"
    assert "Connection: close" in lines and "Content-Type: application/json" in lines
    assert f"Content-Length: {len(body)}" in lines
    error = orjson.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert "100 fields of 8190 bytes" in error["message"]


def test_on_the_messages_door_the_answer_has_anthropics_shape():
    raw = error_bytes(gunicorn_refusal(gerrors.InvalidHeader("x")), anthropic=True)
    body = orjson.loads(raw.partition(b"\r\n\r\n")[2])
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
