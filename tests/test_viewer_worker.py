"""viewer/worker.py: a burst of requests renders the first and the newest only, clients are served in turn, and an
error reaches the request that caused it."""

from __future__ import annotations

import threading
from concurrent.futures import CancelledError

import pytest

from viewer.worker import RenderQueue

TIMEOUT_SEC = 30


class GatedRender:
    """A render function that records its requests and waits for `gate` before each (set it to let them through)."""

    def __init__(self):
        self.gate = threading.Event()
        self.started = threading.Event()
        self.seen: list = []

    def __call__(self, request):
        self.seen.append(request)
        self.started.set()
        assert self.gate.wait(TIMEOUT_SEC)
        if isinstance(request, Exception):
            raise request
        return f"image of {request}"


def test_a_burst_renders_the_request_in_progress_and_then_only_the_newest():
    render = GatedRender()
    queue = RenderQueue(render)
    try:
        first = queue.submit("tab", 0)
        assert render.started.wait(TIMEOUT_SEC)  # Request 0 is being rendered; 1..50 arrive meanwhile.
        burst = [queue.submit("tab", i) for i in range(1, 51)]
        render.gate.set()
        assert first.result(TIMEOUT_SEC) == "image of 0"
        assert burst[-1].result(TIMEOUT_SEC) == "image of 50"
        assert all(f.cancelled() for f in burst[:-1])
        assert render.seen == [0, 50] and queue.replaced == 49 and queue.rendered == 2
    finally:
        queue.close(TIMEOUT_SEC)


def test_clients_are_served_in_the_order_they_last_asked():
    render = GatedRender()
    queue = RenderQueue(render)
    try:
        queue.submit("a", "a0")
        assert render.started.wait(TIMEOUT_SEC)
        b = queue.submit("b", "b0")
        queue.submit("a", "a1")
        a = queue.submit("a", "a2")  # Replaces a1 and goes behind b: "a" asking often cannot starve "b".
        render.gate.set()
        assert b.result(TIMEOUT_SEC) == "image of b0" and a.result(TIMEOUT_SEC) == "image of a2"
        assert render.seen == ["a0", "b0", "a2"]
    finally:
        queue.close(TIMEOUT_SEC)


def test_an_error_reaches_its_request_and_the_queue_goes_on():
    render = GatedRender()
    render.gate.set()
    queue = RenderQueue(render)
    try:
        with pytest.raises(ValueError, match="bad view"):
            queue.submit("tab", ValueError("bad view")).result(TIMEOUT_SEC)
        assert queue.submit("tab", 7).result(TIMEOUT_SEC) == "image of 7"
    finally:
        queue.close(TIMEOUT_SEC)


def test_closing_cancels_what_waits_and_a_closed_tab_is_forgotten():
    render = GatedRender()
    queue = RenderQueue(render)
    queue.submit("a", 0)
    assert render.started.wait(TIMEOUT_SEC)
    gone, waiting = queue.submit("b", 1), queue.submit("c", 2)
    queue.forget("b")
    assert gone.cancelled()
    closer = threading.Thread(target=queue.close, args=(TIMEOUT_SEC,))
    closer.start()  # Cancels request 2 at once, then waits for request 0 to finish.
    with pytest.raises(CancelledError):
        waiting.result(TIMEOUT_SEC)
    render.gate.set()
    closer.join(TIMEOUT_SEC)
    assert not closer.is_alive() and render.seen == [0]
    with pytest.raises(RuntimeError, match="closed"):
        queue.submit("a", 3)
