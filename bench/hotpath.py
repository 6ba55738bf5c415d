"""What each step of a non-stream chat request costs, in µs per call, measured in-process on
the proxy's real services (built by `build_services` with every feature on) against the
fast fake upstream: the whole pipeline, its database reads, validation, accounting, and
the upstream HTTP call with `requests` next to leaner clients (urllib3, http.client).

    python -m bench.hotpath [--calls N] [--json PATH]

Numbers are CPU-bound wall times of a warm loop in one plain thread (no gevent), so they
add up to a little less than the worker's CPU per request under gunicorn.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import http.client
import io
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests

from bench.load import chat_body
from bench.processes import HOST, PROXY_KEY, FakeProcess, write_creds


def timed(fn: Callable[[], Any], calls: int, warmup: int = 200) -> dict[str, float]:
    for _ in range(warmup):
        fn()
    samples = []
    clock = time.perf_counter
    for _ in range(calls):
        t0 = clock()
        fn()
        samples.append(clock() - t0)
    samples.sort()
    return {
        "p50_us": samples[len(samples) // 2] * 1e6,
        "mean_us": statistics.fmean(samples) * 1e6,
        "p90_us": samples[int(len(samples) * 0.9)] * 1e6,
    }


def measure(calls: int) -> dict[str, Any]:
    from qwenproxy.config import Config
    from qwenproxy.container import build_services, make_http_session
    from qwenproxy.edge.schemas import load_chat_completion_request
    from qwenproxy.pipeline.context import RequestContext

    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-hotpath-") as tmp_name:
        tmp = Path(tmp_name)
        fake = FakeProcess(tmp, 20, 0.0)
        try:
            creds = write_creds(tmp / "qwen" / "oauth_creds.json", fake, 3600)
            config = Config(
                qwen_oauth_creds=(creds,),
                qwen_oauth_url=fake.url,
                proxy_api_keys=(PROXY_KEY,),
                data_dir=tmp / "data",
            )
            services = build_services(config)
            logging.getLogger("qwenproxy").setLevel(logging.WARNING)  # no log I/O here
            raw = chat_body("qwen3-coder-plus")
            body = load_chat_completion_request(raw)
            headers = {"Authorization": f"Bearer {PROXY_KEY}", "Content-Type": "application/json"}
            comp = services.completions
            client_id = services.access.check(headers, "127.0.0.1")

            def pipeline() -> None:
                ctx = RequestContext(client_id, client_id)
                comp.handle(load_chat_completion_request(raw), ctx)

            from qwenproxy import create_app

            app = create_app(config, services)  # the same services: one ledger writer
            package_log = logging.getLogger("qwenproxy")
            package_log.setLevel(logging.WARNING)  # the log line is measured on its own

            def wsgi() -> None:
                environ = {
                    "REQUEST_METHOD": "POST",
                    "PATH_INFO": "/v1/chat/completions",
                    "QUERY_STRING": "",
                    "SERVER_NAME": HOST,
                    "SERVER_PORT": "8000",
                    "SERVER_PROTOCOL": "HTTP/1.1",
                    "REMOTE_ADDR": HOST,
                    "CONTENT_TYPE": "application/json",
                    "CONTENT_LENGTH": str(len(raw)),
                    "HTTP_AUTHORIZATION": f"Bearer {PROXY_KEY}",
                    "wsgi.version": (1, 0),
                    "wsgi.url_scheme": "http",
                    "wsgi.input": io.BytesIO(raw),
                    "wsgi.errors": sys.stderr,
                    "wsgi.multithread": False,
                    "wsgi.multiprocess": False,
                    "wsgi.run_once": False,
                }
                answer = app(environ, lambda status, headers, exc_info=None: None)
                try:
                    b"".join(answer)
                finally:
                    getattr(answer, "close", lambda: None)()

            steps: list[tuple[str, Callable[[], Any]]] = [
                ("Flask app, one WSGI call (everything but gunicorn/gevent)", wsgi),
                ("whole pipeline: validate + CompletionService.handle (no HTTP edge)", pipeline),
                ("ClientAccess.check (key compare)", lambda: services.access.check(headers, HOST)),
                (
                    "load_chat_completion_request (orjson + marshmallow)",
                    lambda: load_chat_completion_request(raw),
                ),
                (
                    "SessionStore.load (SQLite SELECT on a pooled DBAPI connection)",
                    lambda: services.sessions.load(client_id),
                ),
                (
                    "Router.plan, bare model name (route SELECT)",
                    lambda: services.router.plan("qwen3-coder-plus"),
                ),
                (
                    "Router.plan, backend:model (no SELECT)",
                    lambda: services.router.plan("qwen-oauth:qwen3-coder-plus"),
                ),
            ]
            import sqlite3

            raw_db = sqlite3.connect(str(tmp / "data" / "qwenproxy.db"), check_same_thread=False)
            select = "SELECT state, updated_at FROM qp_sessions WHERE id = ?"
            steps.append(
                (
                    "the same session SELECT with the sqlite3 module (comparison)",
                    lambda: raw_db.execute(select, (client_id,)).fetchone(),
                )
            )

            def driver_sql() -> None:
                with services.db.engine.connect() as conn:
                    conn.exec_driver_sql(select, (client_id,)).first()

            steps.append(
                ("the same SELECT via SQLAlchemy exec_driver_sql (comparison)", driver_sql)
            )
            commands = getattr(comp, "commands", None)
            if commands is not None:
                steps.append(
                    (
                        "CommandProcessor.extract (look for !/ commands)",
                        lambda: commands.extract(body["messages"]),
                    )
                )
            guards = getattr(comp, "guards", None)
            if guards is not None:
                from bench.fake_upstream import ANSWER_TEXT

                steps.append(
                    (
                        "LoopDetector on the answer (new detector + feed)",
                        lambda: guards.loop_detector().feed(ANSWER_TEXT),
                    )
                )
            redactor = getattr(comp, "redactor", None)
            if redactor is not None:
                steps.append(
                    (
                        "SecretRedactor.redact_messages",
                        lambda: redactor.redact_messages(body["messages"]),
                    )
                )
            accounting = getattr(comp, "accounting", None)
            if accounting is not None:

                def account() -> None:
                    ctx = RequestContext(client_id, client_id, requested_model="qwen3-coder-plus")
                    ctx.outcome.served_by("qwen-oauth", "coder-model")
                    ctx.outcome.usage = {"prompt_tokens": 42, "completion_tokens": 36}
                    ctx.outcome.finished_at = ctx.started + 0.001
                    accounting.finished(ctx)

                steps.append(("Accounting.finished (metrics + ledger queue)", account))
            backend = services.router.backends["qwen-oauth"]
            steps.append(("QwenOAuthCredentials.auth (token + headers)", backend.accounts[0].auth))
            request_log = logging.getLogger("qwenproxy.requests")
            devnull = open(os.devnull, "w")  # noqa: SIM115 - closed below
            line = (
                "req 969f09fc session=1da94e3a5db8 client=1da94e3a5db8 backend=qwen-oauth "
                "model=coder-model status=200 tokens=42/36 latency=1ms ttft=- tps=1070.1"
            )

            def log_line() -> None:
                request_log.info(line)

            steps.append(("one INFO log line (qwenproxy.requests, SecretFilter)", log_line))
            upstream_body = {**body, "model": "coder-model"}
            steps.append(
                (
                    "backend.complete (POST via the lean transport + orjson, incl. fake's ~30 µs)",
                    lambda: backend.complete(upstream_body, 0),
                )
            )
            session = make_http_session()
            url = f"{fake.url}/v1/chat/completions"
            payload = json.dumps(upstream_body).encode()
            up_headers = {"Authorization": "Bearer x", "Content-Type": "application/json"}
            stock = requests.Session()  # requests' own HTTPAdapter (urllib3), for comparison
            for label, http_session in (
                ("requests.Session.post + .content, lean transport", session),
                ("requests.Session.post + .content, requests' HTTPAdapter (urllib3)", stock),
            ):
                steps.append(
                    (
                        label,
                        functools.partial(
                            lambda s: s.post(
                                url, data=payload, headers=up_headers, timeout=(10, 300)
                            ).content,
                            http_session,
                        ),
                    )
                )
            import urllib3

            pool = urllib3.HTTPConnectionPool(HOST, fake.port, maxsize=4)
            steps.append(
                (
                    "urllib3 HTTPConnectionPool.urlopen",
                    lambda: (
                        pool.urlopen(
                            "POST",
                            "/v1/chat/completions",
                            body=payload,
                            headers=up_headers,
                            retries=False,
                        ).data
                    ),
                )
            )
            conn = http.client.HTTPConnection(HOST, fake.port)

            def plain() -> bytes:
                conn.request("POST", "/v1/chat/completions", payload, up_headers)
                return conn.getresponse().read()

            steps.append(("http.client.HTTPConnection (keep-alive)", plain))
            for name, fn in steps:
                # The log step writes to /dev/null: the package's handler writes to whatever
                # sys.stderr is at each record (setStream() does not move it), so swap that.
                logged = fn is log_line
                package_log.setLevel(logging.INFO if logged else logging.WARNING)
                quiet = contextlib.redirect_stderr(devnull) if logged else contextlib.nullcontext()
                try:
                    with quiet:
                        results[name] = timed(fn, calls)
                except Exception as exc:  # noqa: BLE001 - the code under test moves
                    results[name] = {"error": f"{type(exc).__name__}: {exc}"[:200]}
            package_log.setLevel(logging.WARNING)
            devnull.close()
            raw_db.close()
            ledger = getattr(services, "ledger", None)
            if ledger is not None:
                ledger.close()
            services.db.dispose() if hasattr(services.db, "dispose") else None
        finally:
            fake.stop()
    return results


def format_table(results: dict[str, Any]) -> str:
    lines = ["| step | p50 µs | mean µs |", "|---|---:|---:|"]
    for name, r in results.items():
        if "error" in r:
            lines.append(f"| {name} | {r['error']} | |")
        else:
            lines.append(f"| {name} | {r['p50_us']:.0f} | {r['mean_us']:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    results = measure(args.calls)
    print(format_table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
