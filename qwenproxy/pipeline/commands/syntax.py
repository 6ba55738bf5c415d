"""How in-chat commands are written: the prefix pattern, `name(key=value, ...)` arguments,
the table of commands with their usage and help text, and what finding and running them
yields (`Command`, `Extraction`, `Outcome`). The processor that runs them is
pipeline/commands/processor.py.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from qwenproxy.pipeline.router import POLICIES
from qwenproxy.pipeline.sessions import SessionState

LOCAL_MARKER = "[qwenproxy] "
ROUTE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
TRUE_WORDS = {"true", "on", "yes", "1"}
FALSE_WORDS = {"false", "off", "no", "0"}
TOGGLES = {"redact-api-keys-in-prompts": "redact_api_keys", "loop-detection": "loop_detection"}


@dataclass(frozen=True)
class Command:
    name: str
    args: dict[str, str]
    positional: tuple[str, ...]
    source: str


class CommandError(Exception):
    """A command that cannot run; the message says what is wrong and how to write it."""


@dataclass
class Extraction:
    messages: list[dict[str, Any]]
    commands: list[Command]
    command_only: bool


@dataclass
class Outcome:
    state: SessionState
    lines: list[str] = field(default_factory=list)
    error: str | None = None
    # The one-off to apply to this very request (a one-off sent together with text).
    immediate_oneoff: str | None = None


@dataclass(frozen=True)
class CommandSpec:
    usage: str
    summary: str
    details: str


COMMANDS: dict[str, CommandSpec] = {
    "set": CommandSpec(
        "set(model=backend:model | backend=name | redact-api-keys-in-prompts=true|false | "
        "loop-detection=true|false)",
        "set session options (several keys allowed)",
        "model: used instead of the request's model (a backend:model, an alias or a failover "
        "route name). backend: backend for bare model names. The toggles switch the guards "
        "for this session.",
    ),
    "unset": CommandSpec(
        "unset(model, backend, ...)",
        "remove session options",
        "Keys: model, backend, oneoff, redact-api-keys-in-prompts, loop-detection.",
    ),
    "oneoff": CommandSpec(
        "oneoff(backend:model)",
        "send the next request (or this message's text) to another model, once",
        "With other text in the same message, that text goes to the model now; otherwise the "
        "next request of this session does.",
    ),
    "hello": CommandSpec("hello", "show proxy version, session, backend, model and toggles", ""),
    "help": CommandSpec("help | help(name)", "list commands, or explain one", ""),
    "create-failover-route": CommandSpec(
        "create-failover-route(name=N, policy=k|m|km|mk)",
        "create (or reset) a named failover route",
        "Policies: " + "; ".join(f"{k}: {v}" for k, v in POLICIES.items()) + ". Use the route "
        "by sending model N or with set(model=N).",
    ),
    "route-append": CommandSpec(
        "route-append(name=N, element=backend:model)", "add an element at the end of route N", ""
    ),
    "route-prepend": CommandSpec(
        "route-prepend(name=N, element=backend:model)",
        "add an element at the start of route N",
        "",
    ),
    "route-clear": CommandSpec("route-clear(name=N)", "remove every element of route N", ""),
    "route-list": CommandSpec("route-list(name=N)", "show route N", ""),
    "list-failover-routes": CommandSpec("list-failover-routes", "list every failover route", ""),
    "delete-failover-route": CommandSpec("delete-failover-route(name=N)", "delete route N", ""),
}


def command_pattern(prefix: str) -> re.Pattern[str]:
    """A command starts the text or follows white space (`#!/bin/sh` is not one)."""
    return re.compile(r"(?<!\S)" + re.escape(prefix) + r"([A-Za-z][A-Za-z0-9_-]*)(?:\(([^()]*)\))?")


def parse_args(raw: str | None) -> tuple[dict[str, str], tuple[str, ...]]:
    args: dict[str, str] = {}
    positional: list[str] = []
    if not raw or not raw.strip():
        return args, ()
    for piece in raw.split(","):
        piece = piece.strip()
        if not piece:
            continue
        key, sep, value = piece.partition("=")
        if sep:
            args[key.strip().lower()] = value.strip()
        else:
            positional.append(piece)
    return args, tuple(positional)
