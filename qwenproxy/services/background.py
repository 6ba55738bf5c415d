"""One background loop of a service: a daemon thread (a greenlet under gevent's patched
threading) that runs until asked to stop, and the event it waits on between passes."""

from __future__ import annotations

import threading
from collections.abc import Callable


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
