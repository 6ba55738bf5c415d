"""The chat-completions pipeline, shared by every front door: session and in-chat
commands, routing with failover, guards, the upstream call, and its answer — JSON, or a
stream of typed events (pipeline/relay.py) that each door encodes — with one
accounting record per request. The request's context: pipeline/context.py.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from qwenproxy.config.values import LOOP_DEFAULTS
from qwenproxy.errors import ContextLengthExceededError, ProxyError
from qwenproxy.pipeline.commands.processor import CommandProcessor
from qwenproxy.pipeline.context import RequestContext
from qwenproxy.pipeline.failover import all_paused, can_fail_over, key_id_of, note_failure
from qwenproxy.pipeline.guards.context import (
    MAX_TOKENS_HEADER,
    ContextGuard,
    PromptSize,
    refusal_with_numbers,
)
from qwenproxy.pipeline.guards.loops import LoopDetector, shorten_snippet
from qwenproxy.pipeline.guards.redaction import SecretRedactor
from qwenproxy.pipeline.input_rules import header_text
from qwenproxy.pipeline.local_reply import LOCAL_HEADERS, local_reply
from qwenproxy.pipeline.messages.prompt_cache import without_markers
from qwenproxy.pipeline.messages.system import merge_system_messages
from qwenproxy.pipeline.quota import REMAINING_HEADER
from qwenproxy.pipeline.relay import StreamRelaySettings, relay_stream
from qwenproxy.pipeline.router import Plan, Router, Target, allowed_plan
from qwenproxy.pipeline.sessions import LoadedSession, SessionState, SessionStore
from qwenproxy.upstream.model_facts import ModelFacts, ModelFactsBook

log = logging.getLogger(__name__)



@dataclass
class Completion:
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class StreamingCompletion:
    events: Iterator[list[Any]]  # batches of pipeline/events.py events
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


def _chosen(switch: bool | None, default: bool) -> bool:
    """A session's switch, or the configured default where the session has none."""
    return default if switch is None else switch


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
        quota: Any = None,
    ) -> None:
        self.quota = quota  # services.quota.QuotaGate, or None (no windows, no budgets)
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
            if self.quota is not None and ctx.client_key is not None:
                ctx.outcome.budget_spends = self.quota.check_budgets(ctx.client_key)
            result = self._handle(body, ctx)
        except ProxyError as exc:
            ctx.fail(exc)
            self._finish(ctx)
            raise
        if isinstance(result, Completion):
            self._finish(ctx)
        return result

    def _finish(self, ctx: RequestContext) -> None:
        ctx.outcome.finish()
        record = None
        if self.accounting is not None:
            try:
                record = self.accounting.finished(ctx)
            except Exception:  # accounting must never break a request
                log.exception("recording a finished request failed")
        if ctx.outcome.budget_spends and self.quota is not None:
            self.quota.budgets_done(ctx.outcome.budget_spends, record)
            ctx.outcome.budget_spends = []

    def _handle(
        self, body: dict[str, Any], ctx: RequestContext
    ) -> Completion | StreamingCompletion:
        session = self.sessions.load(ctx.session_id)
        extraction = self.commands.extract(body["messages"])
        model_now: str | None = None
        if extraction.commands:
            ran = self._run_commands(body, extraction, session, ctx)
            if isinstance(ran, (Completion, StreamingCompletion)):
                return ran
            session, model_now = ran
        else:
            self.sessions.touch_if_stale(session)
        state = session.state
        if model_now is None and state.oneoff:
            claimed = self.sessions.save(session, state.changed(oneoff=None))
            if claimed is not None:  # exactly one request of this session takes the one-off
                model_now = state.oneoff
        plan = self.router.plan(model_now or state.model or body.get("model"), state.backend)
        if ctx.client_key is not None:
            plan = allowed_plan(plan, ctx.client_key)
        messages = merge_system_messages(extraction.messages)
        outcome = ctx.outcome
        if _chosen(state.redact_api_keys, self.guards.redact_api_keys):
            messages, outcome.redactions = self.redactor.redact_messages(messages)
        upstream = dict(body)
        upstream["messages"] = messages
        loops = _chosen(state.loop_detection, self.guards.loop_detection)
        if ctx.stream:
            result: Completion | StreamingCompletion = self._stream(
                plan, upstream, body, ctx, loops
            )
        else:
            upstream.pop("stream", None)
            upstream.pop("stream_options", None)
            result = self._complete(plan, upstream, ctx, loops)
        if outcome.redactions:
            result.headers["X-Qwenproxy-Redactions"] = str(outcome.redactions)
        if outcome.max_tokens_lowered is not None:
            result.headers[MAX_TOKENS_HEADER] = str(outcome.max_tokens_lowered)
        return result

    def _run_commands(
        self, body: dict[str, Any], extraction: Any, session: LoadedSession, ctx: RequestContext
    ) -> Completion | StreamingCompletion | tuple[LoadedSession, str | None]:
        """Run the request's in-chat commands: their local answer when that is all the
        request holds (or they failed), else (the session as they left it, the model for
        this request only)."""
        ran = self.commands.run(extraction.commands, session)
        if ran.error is not None:
            ctx.outcome.command_only = True
            return self._local_reply(body, ran.error, ctx)
        state, new_state, model_now = session.state, ran.state, None
        if ran.immediate_oneoff and not extraction.command_only:
            model_now, new_state = ran.immediate_oneoff, new_state.changed(oneoff=None)
        if new_state != state:
            saved = self._save_changes(session, state, new_state)
            if saved is None:
                ctx.outcome.command_only = True
                return self._local_reply(
                    body,
                    "Other requests changed this session at the same moment; nothing was "
                    "changed. Send the command again.",
                    ctx,
                )
            session = saved
        if extraction.command_only:
            ctx.outcome.command_only = True
            return self._local_reply(body, "\n".join(ran.lines), ctx)
        return session, model_now

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
        unmarked: list[dict[str, Any]] = []  # the body without markers, made once if needed
        outcome = ctx.outcome
        watched = ctx.client_gone is not None or ctx.on_wait is not None
        waiting = ctx.check_client if watched else None
        spent: list[Any] = []  # keys skipped because a quota window is spent
        counted: tuple[str, str | None] | None = None  # the admitted key of an earlier attempt
        for target, account in plan.attempts():
            facts = self._facts(target)
            try:
                body = self._body_for(target, upstream, ctx, size, facts, unmarked)
            except ContextLengthExceededError as exc:
                last_error = exc  # a later target of a route may have a larger window
                continue
            key_id = key_id_of(target, account)
            if self.quota is not None and target.backend.paused_answer(account) is None:
                refused = self.quota.admit(target.backend.name, key_id)
                if refused is not None:
                    spent.append(refused)
                    continue
                if counted is not None:  # the key that answers last is the one counted
                    self.quota.give_back(*counted)
                counted = (target.backend.name, key_id)
            outcome.attempts += 1
            started = time.perf_counter()
            try:
                paused = target.backend.paused_answer(account)
                if paused is not None:
                    raise paused
                outcome.upstream_key_id = key_id
                result = getattr(target.backend, call)(body, account, waiting)
            except ContextLengthExceededError as exc:
                # The upstream refused for length: never a failover (the next model would
                # refuse too, or answer a prompt the client must shorten anyway).
                raise refusal_with_numbers(exc, self.context_guard, size, upstream, facts) from None
            except ProxyError as exc:
                note_failure(target, account, exc, self.quota)
                if not can_fail_over(exc):
                    raise
                last_error = exc
                log.warning(
                    "attempt %d via %s:%s (account %d) failed with %s",
                    outcome.attempts,
                    target.backend.name,
                    body["model"],
                    account,
                    exc.code,
                )
                continue
            outcome.upstream_latency_ms = (time.perf_counter() - started) * 1000
            return result, target
        if last_error is not None:
            raise last_error
        if spent:
            raise self.quota.refusal(spent)
        raise all_paused(plan)

    def _body_for(
        self,
        target: Target,
        upstream: dict[str, Any],
        ctx: RequestContext,
        size: PromptSize | None,
        facts: ModelFacts,
        unmarked: list[dict[str, Any]],
    ) -> dict[str, Any]:
        """The body one attempt sends: the target's model, cache markers only where its
        backend takes them, `max_tokens` lowered to fit the window (ContextLengthExceeded
        when the prompt cannot fit)."""
        outcome = ctx.outcome
        if ctx.cache_markers and not getattr(target.backend, "cache_markers", False):
            if not unmarked:
                unmarked.append(without_markers(upstream))
            body = {**unmarked[0], "model": target.upstream_model}
        else:
            body = {**upstream, "model": target.upstream_model}
        outcome.served_by(target.backend.name, body["model"])
        if size is not None and self.context_guard is not None:
            fit = self.context_guard.fit(size, upstream, facts)
            if fit.max_tokens is not None:
                body[fit.field] = outcome.max_tokens_lowered = fit.max_tokens
            else:
                outcome.max_tokens_lowered = None
        return body

    def _facts(self, target: Target) -> ModelFacts:
        if self.facts is None:
            return ModelFacts()
        return self.facts.facts(target.backend.name, target.model)

    def _served_by(self, target: Target, ctx: RequestContext) -> dict[str, str]:
        """The headers that say what served a request (and, for a backend with quota
        windows, what its key has left). The model may be a client's name (checked at the
        door or by the command that set it); `header_text` keeps it one header even so."""
        headers = {
            "X-Qwenproxy-Backend": target.backend.name,
            "X-Qwenproxy-Model": header_text(target.upstream_model),
        }
        if self.quota is not None:
            left = self.quota.remaining(target.backend.name, ctx.outcome.upstream_key_id)
            if left is not None:
                headers[REMAINING_HEADER] = str(left)
        return headers

    def _complete(
        self, plan: Plan, upstream: dict[str, Any], ctx: RequestContext, loops: bool
    ) -> Completion:
        reply, target = self._attempt(plan, upstream, ctx, "complete")
        usage = reply.body.get("usage")
        ctx.outcome.usage = usage if isinstance(usage, dict) else None
        headers = {**self._served_by(target, ctx), **reply.headers}
        if loops:  # too late to save tokens, but the ledger and the client learn of it
            block = self.guards.loop_detector().feed(_message_text(reply.body))
            if block is not None:
                ctx.outcome.loop_detected = True
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

        events = relay_stream(
            opened,
            target.backend.name,
            ctx,
            StreamRelaySettings(
                client_wants_usage, detector, self.stream_keepalive, ctx.translated
            ),
            started,
            ended,
        )
        return StreamingCompletion(events, self._served_by(target, ctx))

    def _local_reply(
        self, body: dict[str, Any], text: str, ctx: RequestContext
    ) -> Completion | StreamingCompletion:
        """A command's answer, recorded as finished when it has been sent."""
        answer = local_reply(body, text, ctx, lambda: self._finish(ctx))
        if isinstance(answer, dict):
            return Completion(answer, dict(LOCAL_HEADERS))
        return StreamingCompletion(answer, dict(LOCAL_HEADERS))
