"""Work beside the requests: one background loop of a service (a daemon thread, a
greenlet under gevent's patched threading, that runs until asked to stop), and work that
must not hold the gevent hub, run in gevent's pool of native threads."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def gevent_patched() -> bool:
    """Whether gevent has patched threading (gunicorn's gevent worker)."""
    try:
        from gevent import monkey
    except ImportError:  # pragma: no cover - gevent is a requirement
        return False
    return bool(monkey.is_module_patched("threading"))


def run_off_hub(fn: Callable[..., T], *args: Any) -> T:
    """`fn(*args)` in gevent's native thread pool when gevent has patched threading (the
    hub keeps serving meanwhile), else directly."""
    if not gevent_patched():
        return fn(*args)
    import gevent

    return gevent.get_hub().threadpool.apply(fn, args)


def start_in_background(target: Callable[[], None], name: str) -> None:
    """Run `target` in a real OS thread: gevent's thread pool in a patched process (the
    hub keeps running), a daemon thread otherwise."""
    if gevent_patched():
        import gevent

        gevent.get_hub().threadpool.spawn(target)
    else:
        threading.Thread(target=target, name=name, daemon=True).start()


class BackgroundLoop:
    def __init__(self, name: str) -> None:
        self.name = name
        self.stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, target: Callable[[], None]) -> None:
        """Run `target` in the background, unless it already runs."""
        if self._thread is not None and self._thread.is_alive():
            return
        self.stopping.clear()
        self._thread = threading.Thread(target=target, name=self.name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float, wake: Callable[[], None] = lambda: None) -> None:
        """Ask the loop to stop, `wake` it if it waits on something else, and wait for it."""
        self.stopping.set()
        wake()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
