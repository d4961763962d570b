"""Slow and greedy clients: a deadline for receiving a request and a cap on buffered request bytes.

:class:`RequestGuard` is a pure ASGI middleware around the app. For every HTTP request it

- gives the client ``receive_s`` seconds (``LIMITS.serve_receive_s``) to deliver the whole request
  body, counted from the moment the app starts reading it; a client that stalls past it gets
  ``408 Request Timeout`` and the connection is closed (a slow-loris upload cannot hold a worker
  and its buffered bytes for ever);
- counts the body bytes received and not yet answered, across all requests in flight; a chunk
  that would take the total past ``max_buffered`` (``LIMITS.serve_buffered_bytes``) gets
  ``503 Service Unavailable`` with ``Retry-After``, so many concurrent uploads cannot exhaust memory.

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

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = {"held": 0, "done": False, "started": False, "deadline": None}

        async def guarded_receive() -> dict:
            if state["done"]:  # the body is in: later receives only wait for a disconnect
                return await receive()
            loop = asyncio.get_running_loop()
            if state["deadline"] is None:
                state["deadline"] = loop.time() + self.receive_s
            try:
                message = await asyncio.wait_for(receive(), max(0.0, state["deadline"] - loop.time()))
            except asyncio.TimeoutError:
                raise _Refused(408, f"request body not received within {self.receive_s:g} s (serve_receive_s); "
                                    "send the whole upload promptly") from None
            if message["type"] == "http.request":
                size = len(message.get("body", b""))
                if self.buffered + size > self.max_buffered:
                    raise _Refused(503, f"the service is holding {self.buffered:,} bytes of uploads in flight, at most "
                                        f"{self.max_buffered:,} (serve_buffered_bytes); retry shortly")
                self.buffered += size
                state["held"] += size
                state["done"] = not message.get("more_body", False)
            return message

        async def tracking_send(message: dict) -> None:
            if message["type"] == "http.response.start":
                state["started"] = True
            await send(message)

        try:
            await self.app(scope, guarded_receive, tracking_send)
        except _Refused as err:
            logger.warning("%s %s refused: %s", scope.get("method"), scope.get("path"), err.detail)
            if not state["started"]:
                await _answer(send, err)
        finally:
            self.buffered -= state["held"]


async def _answer(send: Any, err: _Refused) -> None:
    body = json.dumps({"detail": err.detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               (b"connection", b"close")]
    if err.status == 503:
        headers.append((b"retry-after", b"5"))
    await send({"type": "http.response.start", "status": err.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
