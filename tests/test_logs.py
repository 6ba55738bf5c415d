"""The log filter scrubs configured secrets and bearer tokens from every record."""

from __future__ import annotations

import io
import logging

from qwenproxy.config.secrets import KnownSecrets
from qwenproxy.logs import SecretFilter, configure_logging


def capture(secret_filter: SecretFilter) -> tuple[logging.Logger, io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(secret_filter)
    logger = logging.getLogger(f"test.logs.{id(stream)}")
    logger.propagate = False
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    return logger, stream


def test_secrets_args_bearer_tokens_and_tracebacks_are_scrubbed():
    logger, stream = capture(SecretFilter(KnownSecrets(lambda: ["sk-configured-secret-1"])))
    logger.info("calling with %s", "sk-configured-secret-1")
    logger.info("header Authorization: Bearer abcdefghijklmnop1234 sent")
    logger.info("url https://x.test/v1?api_key=zzzzzzzzzz&other=1")
    try:
        raise RuntimeError("failed for sk-configured-secret-1")
    except RuntimeError:
        logger.exception("boom")
    out = stream.getvalue()
    assert "sk-configured-secret-1" not in out
    assert "abcdefghijklmnop1234" not in out and "zzzzzzzzzz" not in out
    assert out.count("[REDACTED]") >= 4
    assert "RuntimeError" in out  # the traceback itself is kept


def test_configure_logging_guards_gunicorn_handlers():
    gunicorn_error = logging.getLogger("gunicorn.error")
    handler = logging.StreamHandler(io.StringIO())
    gunicorn_error.addHandler(handler)
    try:
        configure_logging("INFO", KnownSecrets(lambda: ["secret-value-99"]))
        configure_logging("INFO", KnownSecrets(lambda: ["secret-value-99"]))  # idempotent
        assert sum(isinstance(f, SecretFilter) for f in handler.filters) == 1
        gunicorn_error.warning("worker saw secret-value-99")
        assert "secret-value-99" not in handler.stream.getvalue()
    finally:
        gunicorn_error.removeHandler(handler)


def test_json_request_lines_are_bare_json(make_config, fake, capsys):
    import json as jsonlib
    import logging as logging_mod

    from qwenproxy import create_app

    requests_log = logging_mod.getLogger("qwenproxy.requests")
    for handler in list(requests_log.handlers):
        requests_log.removeHandler(handler)
    app = create_app(make_config(log_format="json"))
    try:
        app.test_client().post("/v1/chat/completions",
                               json={"messages": [{"role": "user", "content": "hi"}]})
        assert app.extensions["qwenproxy"].ledger.flush(5)
        lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
        line = jsonlib.loads(lines[-1])
        assert line["event"] == "request" and line["status"] == 200 and line["total_tokens"] == 10
    finally:
        for handler in list(requests_log.handlers):
            requests_log.removeHandler(handler)
        requests_log.propagate = True


def test_bearer_tokens_and_key_parameters_are_scrubbed_in_any_letter_case():
    scrub = SecretFilter(KnownSecrets(lambda: [])).scrub
    assert scrub("sent BeArEr abcdefghijklmnop1234") == "sent BeArEr [REDACTED]"
    assert scrub("url /x?API-KEY=zzzzzzzz&Access_Token=yyyyyyyy") == (
        "url /x?API-KEY=[REDACTED]&Access_Token=[REDACTED]"
    )
    assert scrub("kelvin \u212aEY=zzzzzzzz") == "kelvin \u212aEY=[REDACTED]"  # K, the sign
    line = "req 969f09fc session=1da94e3a5db8 status=200 tokens=42/36 latency=1ms"
    assert scrub(line) == line
