"""A very small HTTP/1.1 server for health checks and operator endpoints.

It answers one request per connection and needs nothing beyond asyncio. Routes are
`(method, path) -> handler`, each handler returning `(status, content_type, body)`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from http import HTTPStatus

from ratelimitd.logs import get_logger

log = get_logger(__name__)

Response = tuple[int, str, bytes]
Handler = Callable[[bytes], Awaitable[Response]]

MAX_HEADER_BYTES = 16 * 1024
MAX_BODY_BYTES = 1024 * 1024
READ_TIMEOUT_S = 10.0


def text(status: int, body: str) -> Response:
    return status, "text/plain; charset=utf-8", body.encode()


class HttpServer:
    def __init__(self, routes: dict[tuple[str, str], Handler]) -> None:
        self.routes = routes
        self._server: asyncio.Server | None = None

    async def start(self, host: str, port: int, reuse_port: bool = False) -> int:
        self._server = await asyncio.start_server(
            self._serve, host, port, reuse_address=True, reuse_port=reuse_port or None
        )
        return int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            response = await asyncio.wait_for(self._respond(reader), READ_TIMEOUT_S)
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            response = text(HTTPStatus.BAD_REQUEST, "bad request\n")
        except Exception:  # a handler bug must not take the server down
            log.exception("http handler failed")
            response = text(HTTPStatus.INTERNAL_SERVER_ERROR, "internal error\n")
        status, content_type, body = response
        head = (
            f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n"
            f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n"
        )
        with contextlib.suppress(ConnectionError):
            writer.write(head.encode() + body)
            await writer.drain()
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()

    async def _respond(self, reader: asyncio.StreamReader) -> Response:
        head = await reader.readuntil(b"\r\n\r\n")
        if len(head) > MAX_HEADER_BYTES:
            return text(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "headers too large\n")
        request_line, *header_lines = head.decode("latin-1").split("\r\n")
        method, target, _ = request_line.split(" ", 2)
        length = 0
        for line in header_lines:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value.strip())
        if length > MAX_BODY_BYTES:
            return text(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "body too large\n")
        body = await reader.readexactly(length) if length else b""
        path = target.split("?", 1)[0]
        handler = self.routes.get((method, path))
        if handler is None:
            if any(route_path == path for _, route_path in self.routes):
                return text(HTTPStatus.METHOD_NOT_ALLOWED, "method not allowed\n")
            return text(HTTPStatus.NOT_FOUND, "not found\n")
        return await handler(body)
