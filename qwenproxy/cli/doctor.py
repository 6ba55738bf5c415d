"""`python -m qwenproxy doctor`: where each setting came from, every backend's credentials,
and a live check per backend — each failure with what to do about it."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

from qwenproxy.config import SETTINGS, Config
from qwenproxy.config.secrets import split_credentials
from qwenproxy.container import Services, qwen_oauth_available
from qwenproxy.errors import ProxyError
from qwenproxy.hosting import doctor_notes
from qwenproxy.upstream.backends import OpenAICompatibleBackend
from qwenproxy.upstream.catalogue import BACKEND_KEY_HINTS, key_backends_hint
from qwenproxy.upstream.credentials import QwenOAuthCredentials
from qwenproxy.upstream.model_lists import fetch_model_list

SECRET_SETTINGS = {s.env for s in SETTINGS if s.attr.endswith("api_keys")}


@dataclass
class BackendCheck:
    backend: str
    default: bool
    credentials: str
    ok: bool
    detail: str
    fix: str | None = None
    latency_ms: float | None = None
    # Models the upstream's own list offers that the built-in tables and MODEL_INFO do not
    # describe (no context window known for them but what the list says).
    unknown_models: list[str] = field(default_factory=list)


@dataclass
class DoctorReport:
    settings: list[dict[str, str]] = field(default_factory=list)
    backends: list[BackendCheck] = field(default_factory=list)
    default_backend: str = ""
    hosting: list[str] = field(default_factory=list)  # advice for a hosted proxy

    @property
    def ok(self) -> bool:
        return any(c.ok for c in self.backends if c.default)

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "default_backend": self.default_backend,
            "settings": self.settings,
            "backends": [asdict(c) for c in self.backends],
            "hosting": self.hosting,
        }


def without_password(url: str) -> str:
    """A proxy URL fit to show: its credentials (user name too: some proxies take a token
    there) replaced by ***."""
    prefix, userinfo, hostpart = split_credentials(url)
    return url if userinfo is None else f"{prefix}***@{hostpart}"


def describe_setting(config: Config, env: str, attr: str) -> str:
    value = getattr(config, attr)
    if env in SECRET_SETTINGS or env == "PROXY_API_KEY":
        return f"set ({len(value)} key{'s' if len(value) != 1 else ''})" if value else "unset"
    if value is None or value == () or value == {} or value == "":
        return "unset"
    if env in ("UPSTREAM_PROXY", "UPSTREAM_HTTP_PROXY", "DATABASE_URL"):
        return without_password(value)
    if isinstance(value, tuple):
        return ", ".join(str(v) for v in value)
    return str(value)


def _fix_for(error: ProxyError, backend: str) -> str:
    code = error.code or ""
    if code in ("qwen_oauth_credentials_missing", "qwen_oauth_login_required"):
        return "run `python -m qwenproxy auth login` (or `qwen-code --auth`)"
    if code == "qwen_oauth_access_ended":
        return f"switch to an API key backend: {key_backends_hint()}"
    if code == "insufficient_quota" or error.status == 429:
        retry = error.headers.get("Retry-After")
        until = (
            time.strftime("%H:%M", time.localtime(time.time() + float(retry)))
            if (retry and retry.isdigit())
            else None
        )
        return f"quota exhausted{f' until {until}' if until else ''}: wait, or add another key"
    if error.status in (401, 403):
        hint = BACKEND_KEY_HINTS.get(backend, f"BACKEND_{backend.upper()}_API_KEY")
        return f"the key was refused: check {hint}"
    if error.status == 504 or code == "upstream_timeout":
        return "the upstream did not answer in time: check the network or the base URL"
    if error.status == 502:
        return "could not reach the upstream: check the base URL and the network"
    return "see the message above"


def _credentials_state(backend: OpenAICompatibleBackend) -> str:
    states = []
    for account in backend.accounts:
        if isinstance(account, QwenOAuthCredentials):
            path = account.tokens.file.path
            try:
                creds = account.tokens.file.read()
            except ProxyError:
                states.append(f"{path}: missing or unreadable")
                continue
            left = creds.expiry_ms / 1000 - time.time()
            when = f"expires in {left / 60:.0f} min" if left > 0 else "expired (refreshable)"
            states.append(f"{path}: token {when}")
        else:
            states.append("key present" if account.auth().token else "no key (keyless upstream)")
    return "; ".join(states)


def live_check(backend: OpenAICompatibleBackend, model: str) -> tuple[float, str]:
    """One cheap real call (a 1-token completion); (latency ms, what answered)."""
    started = time.perf_counter()
    body = {
        "model": backend.upstream_model(model),
        "messages": [{"role": "user", "content": "ping"}],
        "max_tokens": 1,
    }
    reply = backend.complete(body, backend.account_order(include_paused=True)[0])
    latency = (time.perf_counter() - started) * 1000
    return latency, f"{body['model']} answered ({reply.body.get('model', '?')})"


def unknown_models(services: Services, backend: str, live: bool) -> list[str]:
    """Ids the backend's model list offers (read now when `live`, else the cached copy)
    that neither the built-in tables nor MODEL_INFO know. On OpenRouter only `qwen/` ones:
    its list holds every vendor's models."""
    refresher = services.model_lists
    if refresher is None:
        return []
    ids: list[str] = []
    source = next((s for s in refresher.sources if s.backend == backend), None)
    if live and source is not None:
        try:
            ids = [m.id for m in fetch_model_list(services.http, source)]
        except Exception:  # doctor reports what it can; the live check above says more
            ids = []
    if not ids:
        try:
            ids = [m.id for m in refresher.cached().get(backend, (0.0, []))[1]]
        except Exception:
            ids = []
    known = services.facts.known_names(backend)
    backend_obj = services.router.backends.get(backend)
    if backend_obj is not None:
        known |= set(backend_obj.models())
    if backend == "openrouter":
        ids = [i for i in ids if i.startswith("qwen/")]
    return sorted(i for i in set(ids) if i not in known)


def run_doctor(services: Services, live: bool = True) -> DoctorReport:
    config = services.config
    router = services.router
    report = DoctorReport(default_backend=router.default_backend, hosting=doctor_notes(config))
    for setting in SETTINGS:
        report.settings.append(
            {
                "name": setting.env,
                "value": describe_setting(config, setting.env, setting.attr),
                "source": config.sources.get(setting.env, "default"),
            }
        )
    for custom in config.custom_backends:
        report.settings.append(
            {
                "name": f"BACKEND_{custom.name.upper().replace('-', '_')}_BASE_URL",
                "value": custom.base_url,
                "source": config.sources.get(
                    f"BACKEND_{custom.name.upper().replace('-', '_')}_BASE_URL", "env"
                ),
            }
        )
    for name, backend in router.backends.items():
        is_default = name == router.default_backend
        if name == "qwen-oauth" and not qwen_oauth_available(config) and not is_default:
            continue
        check = BackendCheck(name, is_default, _credentials_state(backend), ok=False, detail="")
        model = router.default_model if is_default else (backend.models() or ["-"])[0]
        if not live:
            check.ok, check.detail = True, "not checked (--offline)"
        else:
            try:
                check.latency_ms, check.detail = live_check(backend, model)
                check.ok = True
            except ProxyError as exc:
                check.detail = exc.message
                check.fix = _fix_for(exc, name)
        check.unknown_models = unknown_models(services, name, live)
        report.backends.append(check)
    if not any(c.default for c in report.backends):
        report.backends.append(
            BackendCheck(
                router.default_backend,
                True,
                "not enabled",
                False,
                f"the default backend {router.default_backend!r} has no credentials",
                f"set its credentials, or enable another: {key_backends_hint()}",
            )
        )
    return report


def format_report(report: DoctorReport) -> str:
    lines = ["settings:"]
    width = max(len(s["name"]) for s in report.settings)
    for s in report.settings:
        lines.append(f"  {s['name']:<{width}}  {s['value']:<40}  ({s['source']})")
    lines.append("")
    lines.append("backends:")
    for check in report.backends:
        mark = "ok  " if check.ok else "FAIL"
        default = " (default)" if check.default else ""
        latency = f" in {check.latency_ms:.0f} ms" if check.latency_ms is not None else ""
        lines.append(f"  [{mark}] {check.backend}{default}: {check.detail}{latency}")
        lines.append(f"         credentials: {check.credentials}")
        if check.fix:
            lines.append(f"         what to do: {check.fix}")
        if check.unknown_models:
            shown = ", ".join(check.unknown_models[:20])
            more = len(check.unknown_models) - 20
            lines.append(
                f"         upstream models the tables do not know: {shown}"
                + (f" and {more} more" if more > 0 else "")
                + " (describe them with MODEL_INFO)"
            )
    lines.append("")
    if report.hosting:
        lines.append("hosting:")
        for note in report.hosting:
            lines.append(f"  - {note}")
        lines.append("")
    if report.ok:
        lines.append(f"The default backend {report.default_backend} works.")
    else:
        lines.append(f"The default backend {report.default_backend} does NOT work (see above).")
    return "\n".join(lines)
