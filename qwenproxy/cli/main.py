"""Command line: `python -m qwenproxy serve | auth status|login|refresh | doctor | usage |
keys add|list|show|revoke`.

`serve` must not import `requests` (and so `ssl`) in gunicorn's master: the auth commands
import the network services lazily.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from qwenproxy import __version__
from qwenproxy.cli.keys import add_keys_command
from qwenproxy.cli.quota import add_quota_command
from qwenproxy.cli.usage import add_usage_command
from qwenproxy.config import Config, ConfigError
from qwenproxy.errors import ProxyError
from qwenproxy.upstream.qwen_oauth.creds import CredentialsFile, api_base_from_resource_url


def _time_left(expiry_ms: float, now: float) -> str:
    seconds = expiry_ms / 1000 - now
    if seconds <= 0:
        return f"expired {_duration(-seconds)} ago"
    return f"valid for {_duration(seconds)}"


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    if seconds < 172800:
        return f"{seconds // 3600} h {seconds % 3600 // 60} min"
    return f"{seconds // 86400} days"


def _creds_line(path: Path) -> str:
    try:
        creds = CredentialsFile(path).read()
    except ProxyError as exc:
        return f"{path}: {exc.message}"
    return f"{path} (token {_time_left(creds.expiry_ms, time.time())})"


def banner(config: Config) -> str:
    # Configuration and files only: no network, and no `requests` import before gunicorn
    # forks its gevent workers.
    from qwenproxy.upstream.catalogue import key_backends_hint
    from qwenproxy.upstream.specs import (
        effective_default_backend,
        key_backend_specs,
        qwen_oauth_available,
    )

    key_backends = [spec.name for spec in key_backend_specs(config)]
    logged_in = qwen_oauth_available(config)
    default = effective_default_backend(config, key_backends)
    enabled = (["qwen-oauth"] if logged_in else []) + key_backends
    lines = [
        f"qwenproxy {__version__} listening on http://{config.host}:{config.port}/v1 "
        f"({config.workers} gevent worker{'s' if config.workers > 1 else ''})",
        f"  default backend: {default}, default model: {config.default_model}",
        f"  enabled backends: {', '.join(enabled) or 'none'}",
    ]
    if logged_in or not key_backends:
        for path in config.qwen_oauth_creds:
            lines.append(f"  qwen-oauth credentials: {_creds_line(path)}")
    else:
        lines.append("  qwen-oauth: not logged in (optional: `python -m qwenproxy auth login`)")
    if config.client_auth_enabled:
        lines.append(f"  client auth: on ({len(config.proxy_api_keys)} key(s) in PROXY_API_KEY)")
    else:
        lines.append("  client auth: off - serving loopback clients only (set PROXY_API_KEY)")
    if not enabled:
        lines.append(
            "  No backend has credentials: log in with `python -m qwenproxy auth login`, or "
            f"set an API key ({key_backends_hint()})."
        )
    if not enabled or (default == "qwen-oauth" and not logged_in):
        lines.append("  Run `python -m qwenproxy doctor` to see what works and what to fix.")
    return "\n".join(lines)


def cmd_serve(config: Config, args: argparse.Namespace) -> int:
    changes = {
        name: value
        for name, value in (("host", args.host), ("port", args.port), ("workers", args.workers))
        if value is not None
    }
    config = dataclasses.replace(config, **changes)
    print(banner(config), file=sys.stderr, flush=True)
    from qwenproxy.serving import run_gunicorn

    run_gunicorn(config)
    return 0


def _token_manager(config: Config, path: Path):
    from qwenproxy.container import make_http_session
    from qwenproxy.upstream.qwen_oauth.tokens import QwenTokenManager

    return QwenTokenManager(
        CredentialsFile(path),
        make_http_session(config),
        config.qwen_oauth_url,
        config.qwen_api_base,
    )


def cmd_auth_status(config: Config, args: argparse.Namespace) -> int:
    ok = True
    for path in config.qwen_oauth_creds:
        manager = _token_manager(config, path)
        print(f"credentials: {path}")
        try:
            creds = manager.current()
            if args.refresh:
                creds = manager.force_refresh()
                print("  refreshed: yes")
            elif creds.expires_within(30, time.time()):
                manager.access()
                creds = manager.current()
                print("  refreshed: yes (the token had expired)")
        except ProxyError as exc:
            print(f"  error: {exc.message}")
            ok = False
            continue
        print(f"  token: {_time_left(creds.expiry_ms, time.time())}")
        print(f"  resource_url: {creds.resource_url or '(none)'}")
        print(f"  API base: {api_base_from_resource_url(creds.resource_url, config.qwen_api_base)}")
    return 0 if ok else 1


def cmd_doctor(config: Config, args: argparse.Namespace) -> int:
    import json

    from qwenproxy.cli.doctor import format_report, run_doctor
    from qwenproxy.container import build_services
    from qwenproxy.logs import configure_logging

    services = build_services(config)
    configure_logging("ERROR", services.secrets)
    report = run_doctor(services, live=not args.offline)
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        print(format_report(report))
    return 0 if report.ok else 1


def cmd_auth_login(config: Config, args: argparse.Namespace) -> int:
    from qwenproxy.container import make_http_session
    from qwenproxy.upstream.qwen_oauth.login import DeviceFlowLogin

    path = config.qwen_oauth_creds[0]
    login = DeviceFlowLogin(
        make_http_session(config), config.qwen_oauth_url, CredentialsFile(path)
    )
    try:
        auth = login.start()
        print("Open this address in a browser and approve the login:")
        print(f"  {auth.verification_uri_complete}")
        if auth.user_code:
            print(f"  code: {auth.user_code}")
        print("Waiting for approval...", flush=True)
        creds = login.wait(auth)
    except ProxyError as exc:
        print(f"login failed: {exc.message}", file=sys.stderr)
        return 1
    left = _time_left(creds.expiry_ms, time.time())
    print(f"Logged in. Credentials written to {path} (token {left}).")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qwenproxy", description="OpenAI-compatible proxy to Qwen"
    )
    parser.add_argument("--version", action="version", version=f"qwenproxy {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the proxy under gunicorn (gevent)")
    serve.add_argument("--host", help="address to listen on (HOST)")
    serve.add_argument("--port", type=int, help="port to listen on (PORT)")
    serve.add_argument("--workers", type=int, help="worker processes (WEB_CONCURRENCY)")
    serve.set_defaults(handler=cmd_serve)

    doctor = commands.add_parser("doctor", help="check settings, credentials and backends")
    doctor.add_argument("--json", action="store_true", help="print JSON")
    doctor.add_argument("--offline", action="store_true", help="skip the live calls")
    doctor.set_defaults(handler=cmd_doctor)

    auth = commands.add_parser("auth", help="qwen-code OAuth credentials")
    auth_commands = auth.add_subparsers(dest="auth_command", required=True)
    status = auth_commands.add_parser("status", help="show the credentials and token expiry")
    status.add_argument("--refresh", action="store_true", help="refresh the token now")
    status.set_defaults(handler=cmd_auth_status)
    refresh = auth_commands.add_parser("refresh", help="refresh the token now")
    refresh.set_defaults(handler=cmd_auth_status, refresh=True)
    login = auth_commands.add_parser("login", help="log in with the device flow")
    login.set_defaults(handler=cmd_auth_login)

    add_usage_command(commands)
    add_quota_command(commands)
    add_keys_command(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = Config.from_env()
        if getattr(args, "port", None) is not None and not 0 < args.port < 65536:
            raise ConfigError("--port", f"must be between 1 and 65535, got {args.port}")
        if getattr(args, "workers", None) is not None and args.workers < 1:
            raise ConfigError("--workers", f"must be at least 1, got {args.workers}")
    except ConfigError as exc:
        print(f"qwenproxy: configuration error: {exc}", file=sys.stderr)
        return 2
    return args.handler(config, args)
