"""NonStreamKeepalive: the request drives its work as a coroutine; spaces while it waits."""

from __future__ import annotations

import pytest

from qwenproxy.edge.slow_answer import NonStreamKeepalive
from qwenproxy.errors import ClientGoneError, UpstreamError


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def waiting_work(clock: Clock, seconds: int, outcome, log: list[str] | None = None):
    """Work that waits `seconds` (a tick each second, as the pipeline's hook), then ends
    with `outcome` (a value, or an exception to raise)."""

    def work(tick) -> str:
        try:
            for _ in range(seconds):
                clock.now += 1
                tick()
        except BaseException as exc:
            if log is not None:
                log.append(f"stopped by {type(exc).__name__}")
            raise
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    return work


def render(result, error) -> bytes:
    return f"error:{error.code}".encode() if error else f"body:{result}".encode()


def test_an_answer_within_the_interval_comes_back_as_it_is() -> None:
    clock = Clock()
    keepalive = NonStreamKeepalive(5, clock)
    result, slow = keepalive.run(waiting_work(clock, 4, "answer"), render)
    assert (result, slow) == ("answer", None)


def test_an_error_within_the_interval_is_raised_to_the_request() -> None:
    clock = Clock()
    keepalive = NonStreamKeepalive(5, clock)
    with pytest.raises(UpstreamError):
        keepalive.run(waiting_work(clock, 2, UpstreamError("down")), render)


def test_a_slow_answer_gets_a_space_each_interval_then_its_body() -> None:
    clock = Clock()
    keepalive = NonStreamKeepalive(5, clock)
    result, slow = keepalive.run(waiting_work(clock, 17, "answer"), render)
    assert result is None and slow is not None
    # the first space as the 200 goes out at 5 s, then at 10 and 15 s; the body at 17 s
    assert list(slow.chunks()) == [b" ", b" ", b" ", b"body:answer"]


def test_a_failure_after_the_first_space_becomes_the_rendered_error_body() -> None:
    clock = Clock()
    keepalive = NonStreamKeepalive(2, clock)
    _, slow = keepalive.run(waiting_work(clock, 3, UpstreamError("down")), render)
    assert b"".join(slow.chunks()) == b" error:upstream_error"


def test_a_server_that_stops_reading_ends_the_work_as_a_departed_client() -> None:
    clock = Clock()
    log: list[str] = []
    keepalive = NonStreamKeepalive(1, clock)
    _, slow = keepalive.run(waiting_work(clock, 60, "answer", log), render)
    chunks = slow.chunks()
    assert next(chunks) == b" " and next(chunks) == b" "
    chunks.close()  # as gunicorn does when a write to the client fails
    assert log == [f"stopped by {ClientGoneError.__name__}"]


def test_ticks_before_the_interval_cost_no_switch() -> None:
    clock = Clock()
    keepalive = NonStreamKeepalive(1000, clock)
    result, slow = keepalive.run(waiting_work(clock, 999, "answer"), render)
    assert (result, slow) == ("answer", None)
