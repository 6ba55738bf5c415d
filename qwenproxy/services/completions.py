"""The chat-completions pipeline, shared by every front door: session and in-chat
commands, routing with failover, guards, the upstream call, and turning its answer (JSON or
SSE) into what OpenAI clients expect — with one accounting record per request.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from qwenproxy.errors import ClientGoneError, ContextLengthExceededError, ProxyError, RateLimitError
from qwenproxy.services.commands import LOCAL_MARKER, CommandProcessor
from qwenproxy.services.content import SYSTEM_ROLES, content_text, is_text_part
from qwenproxy.services.context_guard import MAX_TOKENS_HEADER, ContextGuard, PromptSize
from qwenproxy.services.guards import LOOP_DEFAULTS, LoopDetector, SecretRedactor, shorten_snippet
from qwenproxy.services.input_rules import header_text
from qwenproxy.services.model_facts import ModelFacts, ModelFactsBook
from qwenproxy.services.prompt_cache import has_markers, without_markers
from qwenproxy.services.router import Plan, Router, Target
from qwenproxy.services.sessions import LoadedSession, SessionState, SessionStore
from qwenproxy.services.stream_relay import StreamRelaySettings, relay_stream
from qwenproxy.sse import DONE_FRAME, encode_data

log = logging.getLogger(__name__)

QUOTA_COOL_DOWN_S = 3600.0
ENDED_ACCOUNT_COOL_DOWN_S = 3600.0


def merge_system_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Qwen takes one system message, first, as a string: fold every system/developer
    message into one leading system message. Returns `messages` itself when it already fits.
    System text that carries cache_control markers stays text parts, markers on them (Model
    Studio's context cache takes a system message of parts; services/prompt_cache.py).
    """
    if not messages:
        return messages
    first = messages[0]
    extra = any(m.get("role") in SYSTEM_ROLES for m in messages[1:])
    if not extra and (
        first.get("role") != "developer"
        and (
            first.get("role") != "system"
            or isinstance(first.get("content"), str)
            or has_markers(first.get("content"))
        )
    ):
        return messages
    systems = [m for m in messages if m.get("role") in SYSTEM_ROLES]
    merged: dict[str, Any] = {"role": "system"}
    if any(has_markers(m.get("content")) for m in systems):
        merged["content"] = [part for m in systems for part in _system_parts(m.get("content"))]
    else:
        texts = [content_text(m.get("content")) for m in systems]
        merged["content"] = "\n\n".join(t for t in texts if t)
    return [merged, *(m for m in messages if m.get("role") not in SYSTEM_ROLES)]


def _system_parts(content: Any) -> list[dict[str, Any]]:
    """A system message's text as text parts, keeping the markers of marked ones."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    parts = []
    for part in content if isinstance(content, list) else ():
        if is_text_part(part):
            text = {"type": "text", "text": part["text"]}
            if "cache_control" in part:
                text["cache_control"] = part["cache_control"]
            parts.append(text)
    return parts


@dataclass
class RequestContext:
    """Who is asking, and the facts about one request that accounting records."""

    client_id: str
    session_id: str
    requested_model: str | None = None
    stream: bool = False
    started: float = field(default_factory=time.perf_counter)
    started_at: float = field(default_factory=time.time)
    backend: str | None = None
    upstream_model: str | None = None
    status: int = 200
    error_code: str | None = None
    usage: dict[str, Any] | None = None
    ttft_ms: float | None = None
    upstream_latency_ms: float | None = None
    first_token_at: float | None = None
    finished_at: float | None = None
    attempts: int = 0
    loop_detected: bool = False
    command_only: bool = False
    redactions: int = 0
    max_tokens_lowered: int | None = None  # what the context guard lowered max_tokens to
    # The body carries cache_control markers a front door put there (from its client's);
    # they go only to backends whose `cache_markers` switch is on.
    cache_markers: bool = False
    # Whether the client has closed its connection (None: cannot tell, e.g. in tests).
    client_gone: Callable[[], bool] | None = None
    # Called too while an upstream is awaited, after the client check: the non-stream
    # keep-alive sends its spaces from there (services/slow_answer.py). None: nothing.
    on_wait: Callable[[], None] | None = None

    def fail(self, error: ProxyError) -> None:
        self.status, self.error_code = error.status, error.code

    def check_client(self) -> None:
        """Raise ClientGoneError when the client has left (asked while an upstream is
        awaited, so an abandoned request stops costing upstream time)."""
        if self.client_gone is not None and self.client_gone():
            raise ClientGoneError("The client closed the connection.")
        if self.on_wait is not None:
            self.on_wait()


@dataclass
class Completion:
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class StreamingCompletion:
    frames: Iterator[bytes]
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class GuardSettings:
    """Guard defaults from configuration; sessions may switch each toggle."""

    loop_detection: bool = True
    loop_min_pattern: int = LOOP_DEFAULTS.min_pattern
    loop_min_repeats: int = LOOP_DEFAULTS.min_repeats
    loop_short_pattern: int = LOOP_DEFAULTS.short_pattern
    loop_short_repeats: int = LOOP_DEFAULTS.short_repeats
    redact_api_keys: bool = True

    def loop_detector(self) -> LoopDetector:
        return LoopDetector(
            self.loop_min_pattern,
            self.loop_min_repeats,
            self.loop_short_pattern,
            self.loop_short_repeats,
        )


def _message_text(body: dict[str, Any]) -> str:
    choices = body.get("choices")
    if not choices or not isinstance(choices[0], dict):
        return ""
    message = choices[0].get("message")
    content = message.get("content") if isinstance(message, dict) else None
    return content if isinstance(content, str) else ""


def _can_fail_over(error: ProxyError) -> bool:
    return error.status == 429 or error.status >= 500


class CompletionService:
    def __init__(
        self,
        router: Router,
        sessions: SessionStore,
        commands: CommandProcessor,
        redactor: SecretRedactor | None = None,
        guards: GuardSettings | None = None,
        stream_keepalive: float | None = None,
        accounting: Any = None,
        context_guard: ContextGuard | None = None,
        facts: ModelFactsBook | None = None,
    ) -> None:
        self.router = router
        self.sessions = sessions
        self.commands = commands
        self.redactor = redactor or SecretRedactor()
        self.guards = guards or GuardSettings()
        self.stream_keepalive = stream_keepalive
        self.accounting = accounting  # services.accounting.Accounting, or None
        self.context_guard = context_guard
        self.facts = facts

    # --- the entry point ----------------------------------------------------------------

    def handle(self, body: dict[str, Any], ctx: RequestContext) -> Completion | StreamingCompletion:
        if ctx.requested_model is None:  # a front door may have set what its client sent
            ctx.requested_model = body.get("model")
        ctx.stream = bool(body.get("stream"))
        try:
            result = self._handle(body, ctx)
        except ProxyError as exc:
            ctx.fail(exc)
            self._finish(ctx)
            raise
        if isinstance(result, Completion):
            self._finish(ctx)
        return result

    def _finish(self, ctx: RequestContext) -> None:
        if ctx.finished_at is None:
            ctx.finished_at = time.perf_counter()
        if self.accounting is not None:
            try:
                self.accounting.finished(ctx)
            except Exception:  # accounting must never break a request
                log.exception("recording a finished request failed")

    def _handle(
        self, body: dict[str, Any], ctx: RequestContext
    ) -> Completion | StreamingCompletion:
        session = self.sessions.load(ctx.session_id)
        state = session.state
        extraction = self.commands.extract(body["messages"])
        model_now: str | None = None
        if extraction.commands:
            outcome = self.commands.run(extraction.commands, session)
            if outcome.error is not None:
                ctx.command_only = True
                return self.local_reply(body, outcome.error, ctx)
            new_state = outcome.state
            if outcome.immediate_oneoff and not extraction.command_only:
                model_now, new_state = outcome.immediate_oneoff, new_state.changed(oneoff=None)
            if new_state != state:
                saved = self._save_changes(session, state, new_state)
                if saved is None:
                    ctx.command_only = True
                    return self.local_reply(
                        body,
                        "Other requests changed this session at the same moment; nothing was "
                        "changed. Send the command again.",
                        ctx,
                    )
                session, state = saved, saved.state
            if extraction.command_only:
                ctx.command_only = True
                return self.local_reply(body, "\n".join(outcome.lines), ctx)
        else:
            self.sessions.touch_if_stale(session)
        if model_now is None and state.oneoff:
            claimed = self.sessions.save(session, state.changed(oneoff=None))
            if claimed is not None:  # exactly one request of this session takes the one-off
                model_now = state.oneoff
        plan = self.router.plan(model_now or state.model or body.get("model"), state.backend)
        messages = merge_system_messages(extraction.messages)
        redact = (
            self.guards.redact_api_keys
            if state.redact_api_keys is None
            else (state.redact_api_keys)
        )
        if redact:
            messages, ctx.redactions = self.redactor.redact_messages(messages)
        upstream = dict(body)
        upstream["messages"] = messages
        loops = (
            self.guards.loop_detection if state.loop_detection is None else (state.loop_detection)
        )
        if ctx.stream:
            result: Completion | StreamingCompletion = self._stream(
                plan, upstream, body, ctx, loops
            )
        else:
            upstream.pop("stream", None)
            upstream.pop("stream_options", None)
            result = self._complete(plan, upstream, ctx, loops)
        if ctx.redactions:
            result.headers["X-Qwenproxy-Redactions"] = str(ctx.redactions)
        if ctx.max_tokens_lowered is not None:
            result.headers[MAX_TOKENS_HEADER] = str(ctx.max_tokens_lowered)
        return result

    def _save_changes(
        self, session: LoadedSession, before: SessionState, after: SessionState
    ) -> LoadedSession | None:
        """Store what the commands changed. When another request changed the session in the
        meantime, apply the same changes to its newer state (a few times at most)."""
        changes = {
            name: getattr(after, name)
            for name in SessionState.__dataclass_fields__
            if getattr(after, name) != getattr(before, name)
        }
        for _ in range(5):
            saved = self.sessions.save(session, session.state.changed(**changes))
            if saved is not None:
                return saved
            session = self.sessions.load(session.id)
        return None

    # --- attempts with failover -----------------------------------------------------------

    def _attempt(
        self, plan: Plan, upstream: dict[str, Any], ctx: RequestContext, call: str
    ) -> tuple[Any, Target]:
        last_error: ProxyError | None = None
        size = self.context_guard.measure(upstream) if self.context_guard else None
        unmarked: dict[str, Any] | None = None
        for target, account in plan.attempts():
            facts = self._facts(target)
            if ctx.cache_markers and not getattr(target.backend, "cache_markers", False):
                unmarked = unmarked or without_markers(upstream)
                body = {**unmarked, "model": target.upstream_model}
            else:
                body = {**upstream, "model": target.upstream_model}
            ctx.backend, ctx.upstream_model = target.backend.name, body["model"]
            if size is not None and self.context_guard is not None:
                try:
                    fit = self.context_guard.fit(size, upstream, facts)
                except ContextLengthExceededError as exc:
                    last_error = exc  # a later target of a route may have a larger window
                    continue
                if fit.max_tokens is not None:
                    body[fit.field] = ctx.max_tokens_lowered = fit.max_tokens
                else:
                    ctx.max_tokens_lowered = None
            ctx.attempts += 1
            started = time.perf_counter()
            try:
                paused = target.backend.paused_answer(account)
                if paused is not None:
                    raise paused
                waiting = (
                    ctx.check_client
                    if ctx.client_gone is not None or ctx.on_wait is not None
                    else None
                )
                result = getattr(target.backend, call)(body, account, waiting)
            except ContextLengthExceededError as exc:
                # The upstream refused for length: never a failover (the next model would
                # refuse too, or answer a prompt the client must shorten anyway).
                raise self._refusal_with_numbers(exc, size, upstream, facts) from None
            except ProxyError as exc:
                self._note_failure(target, account, exc)
                if not _can_fail_over(exc):
                    raise
                last_error = exc
                log.warning(
                    "attempt %d via %s:%s (account %d) failed with %s",
                    ctx.attempts,
                    target.backend.name,
                    body["model"],
                    account,
                    exc.code,
                )
                continue
            ctx.upstream_latency_ms = (time.perf_counter() - started) * 1000
            return result, target
        if last_error is not None:
            raise last_error
        wait = min(t.backend.seconds_until_ready() for t in plan.targets)
        raise RateLimitError(
            f"Every account of {', '.join(sorted({t.backend.name for t in plan.targets}))} is "
            f"paused after running out of quota; ready again in {wait:.0f} s.",
            code="insufficient_quota",
            headers={"Retry-After": str(max(1, round(wait)))},
        )

    def _facts(self, target: Target) -> ModelFacts:
        if self.facts is None:
            return ModelFacts()
        return self.facts.facts(target.backend.name, target.model)

    def _refusal_with_numbers(
        self,
        error: ContextLengthExceededError,
        size: PromptSize | None,
        upstream: dict[str, Any],
        facts: ModelFacts,
    ) -> ContextLengthExceededError:
        """An upstream's refusal, with the prompt's tokens and the window filled in where
        its words did not say them (counted now: the error path only)."""
        prompt = None
        if error.prompt_tokens is None:
            if size is None and self.context_guard is not None:
                size = self.context_guard.measure(upstream)
            if size is not None:
                try:
                    prompt = size.exact()
                except Exception:  # a count is a nicety here, never a new failure
                    log.exception("counting a refused prompt failed")
        return error.completed(prompt, facts.context_length)

    @staticmethod
    def _note_failure(target: Target, account: int, error: ProxyError) -> None:
        if error.code == "insufficient_quota":
            retry_after = error.headers.get("Retry-After", "")
            seconds = float(retry_after) if retry_after.isdigit() else QUOTA_COOL_DOWN_S
            target.backend.cool_down(account, seconds)
        elif error.code == "qwen_oauth_access_ended" and not target.backend.paused_answer(account):
            target.backend.cool_down(account, ENDED_ACCOUNT_COOL_DOWN_S, answer=error)

    @staticmethod
    def _served_by(target: Target) -> dict[str, str]:
        """The headers that say what served a request. The model may be a client's name
        (checked at the door or by the command that set it); `header_text` keeps it one
        header even so."""
        return {
            "X-Qwenproxy-Backend": target.backend.name,
            "X-Qwenproxy-Model": header_text(target.upstream_model),
        }

    def _complete(
        self, plan: Plan, upstream: dict[str, Any], ctx: RequestContext, loops: bool
    ) -> Completion:
        reply, target = self._attempt(plan, upstream, ctx, "complete")
        usage = reply.body.get("usage")
        ctx.usage = usage if isinstance(usage, dict) else None
        headers = {**self._served_by(target), **reply.headers}
        if loops:  # too late to save tokens, but the ledger and the client learn of it
            block = self.guards.loop_detector().feed(_message_text(reply.body))
            if block is not None:
                ctx.loop_detected = True
                headers["X-Qwenproxy-Loop-Detected"] = "true"
                log.warning(
                    "answer from %s repeats itself: %r", target.backend.name, shorten_snippet(block)
                )
        return Completion(reply.body, headers)

    def _stream(
        self,
        plan: Plan,
        upstream: dict[str, Any],
        body: dict[str, Any],
        ctx: RequestContext,
        loops: bool,
    ) -> StreamingCompletion:
        client_wants_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        upstream["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
        opened, target = self._attempt(plan, upstream, ctx, "stream")
        detector = self.guards.loop_detector() if loops else None
        accounting = self.accounting

        def started() -> None:
            if accounting is not None:
                accounting.stream_opened()

        def ended() -> None:
            if accounting is not None:
                accounting.stream_closed()
            self._finish(ctx)

        frames = relay_stream(
            opened,
            target.backend.name,
            ctx,
            StreamRelaySettings(client_wants_usage, detector, self.stream_keepalive),
            started,
            ended,
        )
        return StreamingCompletion(frames, self._served_by(target))

    # --- answers the proxy gives itself ---------------------------------------------------

    def local_reply(
        self, body: dict[str, Any], text: str, ctx: RequestContext
    ) -> Completion | StreamingCompletion:
        """A normal completion (or stream) that never touched an upstream: command results."""
        ctx.backend, ctx.upstream_model = "local", "qwenproxy"
        content = LOCAL_MARKER + text
        created = int(time.time())
        ident = f"chatcmpl-local-{int(time.time() * 1000):x}"
        model = body.get("model") or "qwenproxy"
        usage = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
        headers = {"X-Qwenproxy-Backend": "local", "X-Qwenproxy-Model": "qwenproxy"}
        if not ctx.stream:
            return Completion(
                {
                    "id": ident,
                    "object": "chat.completion",
                    "created": created,
                    "model": model,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": content},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": usage,
                },
                headers,
            )

        def chunk(delta: dict[str, Any], finish: str | None) -> bytes:
            return encode_data(
                orjson.dumps(
                    {
                        "id": ident,
                        "object": "chat.completion.chunk",
                        "created": created,
                        "model": model,
                        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
                    }
                )
            )

        def frames() -> Iterator[bytes]:
            try:
                yield chunk({"role": "assistant", "content": content}, None)
                yield chunk({}, "stop")
                if (body.get("stream_options") or {}).get("include_usage"):
                    yield encode_data(
                        orjson.dumps(
                            {
                                "id": ident,
                                "object": "chat.completion.chunk",
                                "created": created,
                                "model": model,
                                "choices": [],
                                "usage": usage,
                            }
                        )
                    )
                yield DONE_FRAME
            finally:
                self._finish(ctx)

        return StreamingCompletion(frames(), headers)
