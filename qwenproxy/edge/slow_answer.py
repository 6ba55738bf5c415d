"""NONSTREAM_KEEPALIVE: a non-stream answer slower than the interval gets its 200 and JSON
headers, then a space every interval until its JSON body (JSON allows leading whitespace),
so that a router that cuts silent requests (Heroku: 30 s to the first byte, then 55 s
between bytes, devcenter.heroku.com/articles/request-timeout) lets a thinking model finish.
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import Callable, Iterator
from typing import Any

import greenlet

from qwenproxy.errors import ClientGoneError

SPACE = b" "
_TICK, _DONE = "tick", "done"

Work = Callable[[Callable[[], None]], Any]  # work(tick) -> result; calls tick() while waiting


class SlowAnswer:
    """The rest of an answer past its first interval: the body's chunks — a space now, a
    space each time one is due, then what `render` makes of the work's result (or of the
    exception that ended it)."""

    def __init__(
        self, work: greenlet.greenlet, render: Callable[[Any, BaseException | None], bytes]
    ) -> None:
        self._work = work
        self._render = render

    def chunks(self) -> Iterator[bytes]:
        try:
            yield SPACE
            while True:
                try:
                    kind, value = self._work.switch()
                except Exception as exc:  # the work failed after the 200 went out
                    yield self._render(None, exc)
                    return
                if kind == _TICK:
                    yield SPACE
                    continue
                yield self._render(value, None)
                return
        finally:
            self.abandon()

    def abandon(self) -> None:
        """The server stopped reading (the client left): end the work where it waits, as
        if its client check had seen the client go (its upstream call is closed and the
        request recorded as such)."""
        if not self._work.dead:
            try:
                self._work.throw(ClientGoneError("The client closed the connection."))
            except Exception:
                pass


class NonStreamKeepalive:
    """Runs a request's work and, when it outlasts `interval` seconds, turns the rest into
    a `SlowAnswer`.

    No greenlet is scheduled for it and nothing waits on a timer: the work runs in a
    greenlet of its own that the request *drives*, as a coroutine. The pipeline already
    calls a hook about once a second while it waits for an upstream (the one that notices
    a departed client); here that hook switches back to the request when a space is due,
    the request hands the space to the server, then switches back into the work. Exactly
    one of the two runs at any moment; the work is resumed only by the hub (its upstream
    socket became readable) or by the request.
    """

    def __init__(self, interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self._clock = clock

    def run(
        self, work: Work, render: Callable[[Any, BaseException | None], bytes]
    ) -> tuple[Any, SlowAnswer | None]:
        """(work's result, None) when `work(tick)` ends within the interval — or what it
        raised, raised here; else (None, the SlowAnswer that goes on with it)."""
        request = greenlet.getcurrent()
        due = self._clock() + self.interval

        def tick() -> None:
            nonlocal due
            if greenlet.getcurrent() is request or self._clock() < due:
                return
            due = self._clock() + self.interval
            request.switch((_TICK, None))

        def body() -> tuple[str, Any]:
            return _DONE, work(tick)

        worker = greenlet.greenlet(body, parent=request)
        worker.gr_context = contextvars.copy_context()
        kind, value = worker.switch()
        if kind == _DONE:
            return value, None
        return None, SlowAnswer(worker, render)
