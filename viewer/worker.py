"""Rendering off the request path, always the newest request: the visualizer's answer to a burst of slider or drag
events. Each client (a browser tab) has at most one request waiting; a newer one replaces it, so the image
follows the newest state and never replays a queue of stale frames. One thread renders (one network, one GPU),
serving the clients in the order they last asked."""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from typing import Any


class RenderQueue:
    """Runs `render(request)` on a thread of its own for the newest request of each client.

    `submit` returns a Future: it gets the result (or the exception `render` raised), or is cancelled when a
    newer request of the same client replaced it before it started, or when the queue closed.
    """

    def __init__(self, render: Callable[[Any], Any], name: str = "viewer-render"):
        self._render = render
        self._changed = threading.Condition()
        self._waiting: dict[Hashable, tuple[Any, Future]] = {}  # Insertion order: the order the clients last asked.
        self._closed = False
        self.replaced = 0  # Requests replaced by a newer one before they started.
        self.rendered = 0
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    def submit(self, client: Hashable, request: Any) -> Future:
        """Queue `request` for `client`, replacing (cancelling) the client's request still waiting, if any."""
        future: Future = Future()
        with self._changed:
            if self._closed:
                raise RuntimeError("the render queue is closed")
            previous = self._waiting.pop(client, None)
            if previous is not None:
                previous[1].cancel()
                self.replaced += 1
            self._waiting[client] = (request, future)  # At the end: a client that asks often cannot starve others.
            self._changed.notify()
        return future

    def forget(self, client: Hashable) -> None:
        """Drop the request `client` has waiting (a closed tab)."""
        with self._changed:
            previous = self._waiting.pop(client, None)
        if previous is not None:
            previous[1].cancel()

    def close(self, timeout_sec: float | None = None) -> None:
        """Cancel every waiting request and stop the thread once the rendering in progress, if any, has finished."""
        with self._changed:
            self._closed = True
            waiting, self._waiting = list(self._waiting.values()), {}
            self._changed.notify()
        for _request, future in waiting:
            future.cancel()
        self._thread.join(timeout_sec)

    def _serve(self) -> None:
        while True:
            with self._changed:
                while not self._waiting and not self._closed:
                    self._changed.wait()
                if self._closed:
                    return
                client = next(iter(self._waiting))
                request, future = self._waiting.pop(client)
            if not future.set_running_or_notify_cancel():
                continue
            try:
                result = self._render(request)
            except Exception as error:  # noqa: BLE001 - the caller's to handle: it reaches the future.
                future.set_exception(error)
            else:
                future.set_result(result)
            self.rendered += 1
