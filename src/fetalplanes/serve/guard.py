"""Slow and greedy clients: a deadline for receiving a request and a cap on buffered request bytes.

:class:`RequestGuard` is a pure ASGI middleware around the app. For every HTTP request it

- gives the client ``receive_s`` seconds (``LIMITS.serve_receive_s``) to deliver the whole request
  body, counted from the moment the app starts reading it; a client that stalls past it gets
  ``408 Request Timeout`` and the connection is closed (a slow-loris upload cannot hold a worker
  and its buffered bytes for ever);
- counts the body bytes received and not yet answered, across all requests in flight; a chunk
  that would take the total past ``max_buffered`` (``LIMITS.serve_buffered_bytes``) first evicts
  the requests that have been receiving longest (the slow ones: a prompt upload never is) with
  ``503 Service Unavailable`` and ``Retry-After``; only when no other upload is in flight is the
  newcomer itself refused. Many concurrent uploads cannot exhaust memory, and slow clients holding
  the budget cannot lock out prompt ones.

Refused requests release their bytes at once (the parser's buffers are dropped with the request).
Requests without a body (``GET /health``, ``HEAD /``) are never delayed or refused, so the service
keeps answering its health check throughout. Uvicorn has no such limits of its own (its
``timeout_keep_alive`` only covers idle connections between requests).
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

__all__ = ["RequestGuard"]

logger = logging.getLogger(__name__)


class _Refused(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status, self.detail = status, detail


class RequestGuard:
    """ASGI middleware: ``receive_s`` deadline per request body, ``max_buffered`` bytes across requests."""

    def __init__(self, app: Any, receive_s: float, max_buffered: int) -> None:
        self.app, self.receive_s, self.max_buffered = app, float(receive_s), int(max_buffered)
        self.buffered = 0  # body bytes received by requests still in flight (one event loop: no lock needed)
        self.flights: list[_Flight] = []  # requests still receiving their body, oldest first

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        me = _Flight()

        async def guarded_receive() -> dict:
            if me.done:  # the body is in: later receives only wait for a disconnect
                return await receive()
            loop = asyncio.get_running_loop()
            if me.deadline is None:
                me.deadline = loop.time() + self.receive_s
                self.flights.append(me)
            message = await self._next(receive, me, me.deadline - loop.time())
            if message["type"] == "http.request":
                size = len(message.get("body", b""))
                self._make_room(me, size)
                self.buffered += size
                me.held += size
                me.done = not message.get("more_body", False)
                if me.done:
                    self._leave(me)
            return message

        async def tracking_send(message: dict) -> None:
            if message["type"] == "http.response.start":
                me.started = True
            await send(message)

        try:
            await self.app(scope, guarded_receive, tracking_send)
        except _Refused as err:
            logger.warning("%s %s refused: %s", scope.get("method"), scope.get("path"), err.detail)
            if not me.started:
                await _answer(send, err)
        finally:
            self._leave(me)
            self.buffered -= me.held
            me.held = 0

    async def _next(self, receive: Any, me: "_Flight", timeout: float) -> dict:
        """The next message, or _Refused on the deadline (408) or on eviction (503)."""
        got, evicted = asyncio.ensure_future(receive()), asyncio.ensure_future(me.evict.wait())
        done, _ = await asyncio.wait({got, evicted}, timeout=max(0.0, timeout), return_when=asyncio.FIRST_COMPLETED)
        if got in done:
            evicted.cancel()
            return got.result()
        got.cancel()
        evicted.cancel()
        if me.evict.is_set():
            raise _Refused(503, f"upload evicted: the service holds {self.max_buffered:,} bytes of uploads in flight "
                                "at most (serve_buffered_bytes) and this one was the slowest; retry shortly")
        raise _Refused(408, f"request body not received within {self.receive_s:g} s (serve_receive_s); "
                            "send the whole upload promptly")

    def _make_room(self, me: "_Flight", size: int) -> None:
        """Evict the longest-receiving other uploads until ``size`` more bytes fit; else refuse ``me``."""
        while self.buffered + size > self.max_buffered:
            victims = [f for f in self.flights if f is not me and f.held and not f.evict.is_set()]
            if not victims:
                raise _Refused(503, f"the service is holding {self.buffered:,} bytes of uploads in flight, at most "
                                    f"{self.max_buffered:,} (serve_buffered_bytes); retry shortly")
            victim = min(victims, key=lambda f: f.deadline)
            victim.evict.set()
            self.buffered -= victim.held  # counted as freed now: its request unwinds on its next receive
            victim.held = 0

    def _leave(self, me: "_Flight") -> None:
        if me in self.flights:
            self.flights.remove(me)


class _Flight:
    """One request's body in flight: deadline, bytes held, eviction flag."""

    def __init__(self) -> None:
        self.deadline: float | None = None
        self.held, self.done, self.started = 0, False, False
        self.evict = asyncio.Event()


async def _answer(send: Any, err: _Refused) -> None:
    body = json.dumps({"detail": err.detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               (b"connection", b"close")]
    if err.status == 503:
        headers.append((b"retry-after", b"5"))
    await send({"type": "http.response.start", "status": err.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
