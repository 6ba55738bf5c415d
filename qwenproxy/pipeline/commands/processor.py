"""In-chat commands (`!/set(model=...)`, `!/oneoff(...)`, failover routes, ...): finding
them in the last user message, stripping them from what the model sees, and running them
against a session. A bad command changes nothing and says how to write it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from qwenproxy.errors import ProxyError
from qwenproxy.pipeline.commands.syntax import (
    COMMANDS,
    FALSE_WORDS,
    LOCAL_MARKER,
    ROUTE_NAME,
    TOGGLES,
    TRUE_WORDS,
    Command,
    CommandError,
    Extraction,
    Outcome,
    command_pattern,
    parse_args,
)
from qwenproxy.pipeline.input_rules import name_problem
from qwenproxy.pipeline.messages.content import is_text_part, text_parts
from qwenproxy.pipeline.router import POLICIES, FailoverRoute, Router, RouteStore
from qwenproxy.pipeline.sessions import LoadedSession


class CommandProcessor:
    def __init__(
        self,
        prefix: str,
        router: Router,
        routes: RouteStore,
        version: str,
        defaults: Callable[[], dict[str, bool]] = dict,
    ) -> None:
        self.prefix = prefix
        self.pattern = command_pattern(prefix)
        self.router = router
        self.routes = routes
        self.version = version
        self._defaults = defaults

    # --- finding and stripping ------------------------------------------------------

    def _strip(
        self, message: dict[str, Any], found: list[Command] | None, known_only: bool = True
    ) -> dict[str, Any]:
        """A copy of `message` with commands removed (collected into `found`). With
        `known_only`, text that merely looks like a command (`!/tmp/x`) stays as it is."""

        def repl(match: re.Match[str]) -> str:
            if known_only and match.group(1).lower() not in COMMANDS:
                return match.group(0)
            if found is not None:
                args, positional = parse_args(match.group(2))
                found.append(Command(match.group(1).lower(), args, positional, match.group(0)))
            return ""

        content = message.get("content")
        if isinstance(content, str):
            return {**message, "content": self.pattern.sub(repl, content).strip()}
        parts = []
        for part in content:
            if is_text_part(part):
                text = self.pattern.sub(repl, part["text"]).strip()
                if text:
                    parts.append({**part, "text": text})
            else:
                parts.append(part)
        return {**message, "content": parts}

    def _has_command(self, message: dict[str, Any]) -> bool:
        return any(
            self.prefix in text and self.pattern.search(text)
            for _, text in text_parts(message.get("content"))
        )

    @staticmethod
    def _is_empty(message: dict[str, Any]) -> bool:
        content = message.get("content")
        return not content if isinstance(content, (str, list)) else False

    def extract(self, messages: list[dict[str, Any]]) -> Extraction:
        """Commands of the last user message; every user turn stripped of command text;
        earlier command-only turns (and the proxy's local answers to them) dropped."""
        last_user = max(
            (i for i, m in enumerate(messages) if m.get("role") == "user"), default=None
        )
        if last_user is None or not any(
            m.get("role") == "user" and self._has_command(m) for m in messages
        ):
            return Extraction(messages, [], False)
        commands: list[Command] = []
        result: list[dict[str, Any]] = []
        command_only = False
        skip_local_answer = False
        for i, message in enumerate(messages):
            role = message.get("role")
            if skip_local_answer and role == "assistant":
                skip_local_answer = False
                if str(message.get("content") or "").startswith(LOCAL_MARKER):
                    continue
            skip_local_answer = False
            if role != "user" or not self._has_command(message):
                result.append(message)
                continue
            if i == last_user:
                # Nothing but command-like words: the user typed commands, and an unknown
                # one gets an answer. With other text, only known commands are taken.
                only_commands = self._is_empty(self._strip(message, None, known_only=False))
                stripped = self._strip(message, commands, known_only=not only_commands)
            else:
                stripped = self._strip(message, None)
            if self._is_empty(stripped):
                if i == last_user:
                    command_only = True
                else:
                    skip_local_answer = True
                continue
            result.append(stripped)
        return Extraction(result, commands, command_only)

    # --- running ----------------------------------------------------------------------

    def run(self, commands: list[Command], session: LoadedSession) -> Outcome:
        """Run every command against a copy; any error discards all changes."""
        outcome = Outcome(session.state)
        route_changes: list[Callable[[], None]] = []
        try:
            for command in commands:
                handler = getattr(self, "_cmd_" + command.name.replace("-", "_"), None)
                if handler is None or command.name not in COMMANDS:
                    raise CommandError(
                        f"Unknown command `{self.prefix}{command.name}`. Commands: "
                        + ", ".join(f"{self.prefix}{name}" for name in COMMANDS)
                        + f". `{self.prefix}help` explains them."
                    )
                handler(command, outcome, session, route_changes)
        except CommandError as exc:
            return Outcome(session.state, error=str(exc))
        try:
            for change in route_changes:
                change()
        except ProxyError as exc:
            return Outcome(session.state, error=exc.message)
        return outcome

    def _usage(self, name: str) -> str:
        return f"`{self.prefix}{COMMANDS[name].usage}`"

    def _bad(self, name: str, problem: str) -> CommandError:
        return CommandError(f"{problem} Write it as {self._usage(name)}.")

    def _check_name(self, name: str, what: str, value: str) -> str:
        """A value that names something (model, backend, element) meets the same rules
        as a request's `model` (`input_rules`)."""
        problem = name_problem(value, what)
        if problem is not None:
            raise self._bad(name, problem)
        return value

    def _check_model(self, name: str, value: str) -> str:
        if not value:
            raise self._bad(name, "The model is empty.")
        self._check_name(name, "The model", value)
        try:
            if ":" not in value and "/" not in value and self.routes.get(value) is not None:
                return value
            self.router.target(value)
        except ProxyError as exc:
            raise self._bad(name, exc.message) from None
        return value

    def _check_bool(self, name: str, key: str, value: str) -> bool:
        word = value.strip().lower()
        if word in TRUE_WORDS:
            return True
        if word in FALSE_WORDS:
            return False
        raise self._bad(name, f"`{key}` takes true or false, not {value!r}.")

    def _cmd_set(self, cmd: Command, out: Outcome, session: LoadedSession, _: list) -> None:
        if cmd.positional or not cmd.args:
            raise self._bad("set", "`set` takes key=value pairs.")
        for key, value in cmd.args.items():
            if key == "model":
                out.state = out.state.changed(model=self._check_model("set", value))
                out.lines.append(f"model set to {value}")
            elif key == "backend":
                backend = self._check_name("set", "The backend", value.strip().lower())
                if backend not in self.router.backends:
                    raise self._bad("set", self.router.unknown_backend_message(backend))
                out.state = out.state.changed(backend=backend)
                out.lines.append(f"backend set to {backend}")
            elif key in TOGGLES:
                flag = self._check_bool("set", key, value)
                out.state = out.state.changed(**{TOGGLES[key]: flag})
                out.lines.append(f"{key} {'on' if flag else 'off'}")
            else:
                raise self._bad("set", f"Unknown key `{key}`.")

    def _cmd_unset(self, cmd: Command, out: Outcome, session: LoadedSession, _: list) -> None:
        keys = [*cmd.positional, *cmd.args]
        if not keys:
            raise self._bad("unset", "`unset` needs the keys to remove.")
        fields = {"model": "model", "backend": "backend", "oneoff": "oneoff", **TOGGLES}
        for key in keys:
            key = key.strip().lower()
            if key not in fields:
                raise self._bad("unset", f"Unknown key `{key}`.")
            out.state = out.state.changed(**{fields[key]: None})
            out.lines.append(f"{key} unset")

    def _cmd_oneoff(self, cmd: Command, out: Outcome, session: LoadedSession, _: list) -> None:
        values = [*cmd.positional, *([cmd.args["model"]] if "model" in cmd.args else [])]
        if len(values) != 1 or set(cmd.args) - {"model"}:
            raise self._bad("oneoff", "`oneoff` takes exactly one backend:model.")
        model = self._check_model("oneoff", values[0])
        out.state = out.state.changed(oneoff=model)
        out.immediate_oneoff = model
        out.lines.append(f"the next request goes to {model}")

    def _cmd_hello(self, cmd: Command, out: Outcome, session: LoadedSession, _: list) -> None:
        state = out.state
        defaults = self._defaults()
        toggles = []
        for key, attr in TOGGLES.items():
            value = getattr(state, attr)
            on = defaults.get(attr, True) if value is None else value
            toggles.append(f"{key}={'on' if on else 'off'}")
        model = state.model or f"from the request (default {self.router.default_model})"
        out.lines.append(
            f"qwenproxy {self.version}; session {session.id}; "
            f"backend {state.backend or self.router.default_backend}; model {model}; "
            f"{', '.join(toggles)}; enabled backends: {', '.join(sorted(self.router.backends))}"
        )

    def _cmd_help(self, cmd: Command, out: Outcome, session: LoadedSession, _: list) -> None:
        if cmd.positional:
            name = cmd.positional[0].strip().lower().removeprefix(self.prefix)
            spec = COMMANDS.get(name)
            if spec is None:
                raise CommandError(f"No command `{name}`. `{self.prefix}help` lists them.")
            out.lines.append(f"{self._usage(name)}: {spec.summary}. {spec.details}".strip())
            return
        out.lines.append("commands:")
        out.lines.extend(f"  {self._usage(n)} - {s.summary}" for n, s in COMMANDS.items())

    # --- failover routes ----------------------------------------------------------------

    def _route_name(self, name: str, cmd: Command) -> str:
        value = cmd.args.get("name") or (cmd.positional[0] if cmd.positional else "")
        if not ROUTE_NAME.match(value):
            raise self._bad(name, "Give the route a name of letters, digits, `-`, `_` or `.`.")
        if value.lower() in self.router.known_backends:
            raise self._bad(name, f"{value!r} is a backend name; pick another route name.")
        if self.router.is_model_name(value) and value not in self.routes.declared:
            raise self._bad(name, f"{value!r} is a model name; pick another route name.")
        return value

    def _existing(self, name: str, cmd: Command) -> FailoverRoute:
        route_name = self._route_name(name, cmd)
        route = self.routes.get(route_name)
        if route is None:
            raise CommandError(
                f"No failover route {route_name!r}. Create it with "
                f"{self._usage('create-failover-route')}."
            )
        return route

    def _cmd_create_failover_route(
        self, cmd: Command, out: Outcome, session: LoadedSession, changes: list
    ) -> None:
        name = self._route_name("create-failover-route", cmd)
        policy = cmd.args.get("policy", "m").strip().lower()
        if policy not in POLICIES:
            raise self._bad("create-failover-route", f"Unknown policy {policy!r}.")
        route = FailoverRoute(name, policy, ())
        changes.append(lambda: self.routes.put(route))
        out.lines.append(f"failover route {name} created (policy {policy})")

    def _element(self, name: str, cmd: Command) -> str:
        element = cmd.args.get("element", "").strip()
        if not element:
            raise self._bad(name, "`element` is missing.")
        self._check_name(name, "The element", element)
        try:
            target = self.router.target(element)
        except ProxyError as exc:
            raise self._bad(name, exc.message) from None
        return f"{target.backend.name}:{target.model}"

    def _cmd_route_append(self, cmd: Command, out: Outcome, s: LoadedSession, ch: list) -> None:
        route = self._existing("route-append", cmd)
        element = self._element("route-append", cmd)
        updated = FailoverRoute(route.name, route.policy, (*route.elements, element))
        ch.append(lambda: self.routes.put(updated))
        out.lines.append(f"route {route.name}: {' -> '.join(updated.elements)}")

    def _cmd_route_prepend(self, cmd: Command, out: Outcome, s: LoadedSession, ch: list) -> None:
        route = self._existing("route-prepend", cmd)
        element = self._element("route-prepend", cmd)
        updated = FailoverRoute(route.name, route.policy, (element, *route.elements))
        ch.append(lambda: self.routes.put(updated))
        out.lines.append(f"route {route.name}: {' -> '.join(updated.elements)}")

    def _cmd_route_clear(self, cmd: Command, out: Outcome, s: LoadedSession, ch: list) -> None:
        route = self._existing("route-clear", cmd)
        cleared = FailoverRoute(route.name, route.policy, ())
        ch.append(lambda: self.routes.put(cleared))
        out.lines.append(f"route {route.name} cleared")

    def _cmd_route_list(self, cmd: Command, out: Outcome, s: LoadedSession, ch: list) -> None:
        out.lines.append(_describe(self._existing("route-list", cmd)))

    def _cmd_list_failover_routes(
        self, cmd: Command, out: Outcome, s: LoadedSession, ch: list
    ) -> None:
        routes = self.routes.all()
        out.lines.append("failover routes:" if routes else "no failover routes")
        out.lines.extend("  " + _describe(route) for route in routes)

    def _cmd_delete_failover_route(
        self, cmd: Command, out: Outcome, s: LoadedSession, ch: list
    ) -> None:
        route = self._existing("delete-failover-route", cmd)
        ch.append(lambda: self.routes.delete(route.name))
        out.lines.append(f"failover route {route.name} deleted")


def _describe(route: FailoverRoute) -> str:
    elements = " -> ".join(route.elements) or "(empty)"
    origin = ", declared in FAILOVER_ROUTES" if route.declared else ""
    return f"{route.name} (policy {route.policy}{origin}): {elements}"
