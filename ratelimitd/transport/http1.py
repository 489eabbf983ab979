"""The operator HTTP port: /healthcheck, /livez, /metrics, /rlconfig, POST /json.

HTTP/1.1 itself (parsing, framing, keep-alive, pipelining, HTTP/1.0) is h11's, python-hyper's
sans-I/O library; this module adds the socket loop and the limits a port that anything in the
cluster can reach needs. Connections are kept alive; pipelined requests are answered in order,
one at a time. Each limit is a constructor argument defaulting to the constant below:

- a request head (request line and headers) over `MAX_HEADER_BYTES`: 431, and closed;
- a body over `MAX_BODY_BYTES`: 413, and closed, from `Content-Length` before the body is read,
  or as soon as a chunked body grows past it;
- a request not whole `READ_TIMEOUT_S` after its first byte (after the accept, for the first
  request on a connection): 408, and closed, so that clients trickling their headers
  (slowloris) cannot hold connections; a connection whose first request never starts is
  closed too;
- a response the client has not taken (read enough of) `WRITE_TIMEOUT_S` after it was
  written: the connection is reset, what was not sent is dropped;
- no new request `IDLE_TIMEOUT_S` after the last response: the connection is closed quietly;
- `MAX_CONNECTIONS` open at once: a connection past them is answered 503 and closed.

A malformed request is answered 400 (or the status h11 suggests) and closed; a handler that
raises is answered 500 and logged, and the connection serves on. Routes are
`(method, path) -> handler`, each handler taking the body and returning
`(status, content_type, body)`; HEAD is not routed (405, as any other method a path lacks).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import Enum
from http import HTTPStatus

import h11

from ratelimitd.logs import get_logger
from ratelimitd.transport.listen import BACKLOG, bind_host

log = get_logger(__name__)

Response = tuple[int, str, bytes]
Handler = Callable[[bytes], Awaitable[Response]]
Headers = tuple[tuple[bytes, bytes], ...]

MAX_HEADER_BYTES = 16 * 1024  # request line and headers, as sent
MAX_BODY_BYTES = 1024 * 1024
READ_TIMEOUT_S = 10.0  # from a request's first byte to its last
WRITE_TIMEOUT_S = 10.0  # for the client to take a response
IDLE_TIMEOUT_S = 30.0  # between requests on a kept-alive connection
MAX_CONNECTIONS = 256  # open at once; more are answered 503 and closed
LINGER_S = 1.0  # reading what a client still sends after our last response (see _linger)
READ_CHUNK = 64 * 1024
REFUSALS_LOGGED_EVERY_S = 60.0
CLOSE: Headers = ((b"connection", b"close"),)


def text(status: int, body: str) -> Response:
    return status, "text/plain; charset=utf-8", body.encode()


@dataclass(frozen=True, slots=True)
class Request:
    method: bytes
    target: bytes
    body: bytes


class Phase(Enum):
    """What a connection waits for; each phase but HANDLE has a timeout."""

    IDLE = "idle"  # the next request's first byte
    READ = "read"  # the rest of the request
    HANDLE = "handle"  # a handler: its time is not the client's fault
    WRITE = "write"  # the client to read our response


class _Reject(Exception):
    """Ends a connection with an error response (if h11 still lets one be sent)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class HttpServer:
    def __init__(
        self,
        routes: dict[tuple[str, str], Handler],
        *,
        max_header_bytes: int = MAX_HEADER_BYTES,
        max_body_bytes: int = MAX_BODY_BYTES,
        read_timeout_s: float = READ_TIMEOUT_S,
        write_timeout_s: float = WRITE_TIMEOUT_S,
        idle_timeout_s: float = IDLE_TIMEOUT_S,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        self.routes = routes
        self.max_header_bytes = max_header_bytes
        self.max_body_bytes = max_body_bytes
        self.read_timeout_s = read_timeout_s
        self.write_timeout_s = write_timeout_s
        self.idle_timeout_s = idle_timeout_s
        self.max_connections = max_connections
        self._server: asyncio.Server | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()  # every connection's, refused ones too
        self._connections: set[_Connection] = set()  # those served (not refused)
        self._stopping = False
        self._refusal_logged_at = -REFUSALS_LOGGED_EVERY_S

    async def start(
        self, host: str, port: int, reuse_port: bool = False, sock: socket.socket | None = None
    ) -> int:
        """Listens on `sock`, or on `host`:`port`; returns the port."""
        if sock is not None:
            self._server = await asyncio.start_server(self._accept, sock=sock, backlog=BACKLOG)
        else:
            self._server = await asyncio.start_server(
                self._accept,
                bind_host(host),
                port,
                reuse_address=True,
                reuse_port=reuse_port or None,
                backlog=BACKLOG,
            )
        self._sweeper = asyncio.create_task(self._sweep())
        return int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        """Closes the listener and every connection at once, idle or not."""
        if self._server is None:
            return
        self._stopping = True
        self._server.close()
        tasks = [*self._tasks, *([self._sweeper] if self._sweeper else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._server.wait_closed()

    @property
    def open_connections(self) -> int:
        """Connections served now (those refused past the cap are not counted)."""
        return len(self._connections)

    async def dispatch(self, request: Request) -> tuple[Response, Headers]:
        """The route's response, or 404/405; extra headers with it (405's `Allow`)."""
        method = request.method.decode("ascii")
        path = request.target.split(b"?", 1)[0].decode("ascii")
        handler = self.routes.get((method, path))
        if handler is not None:
            return await handler(request.body), ()
        allowed = sorted(m for m, route_path in self.routes if route_path == path)
        if allowed:
            allow = ((b"allow", ", ".join(allowed).encode()),)
            return text(HTTPStatus.METHOD_NOT_ALLOWED, "method not allowed\n"), allow
        return text(HTTPStatus.NOT_FOUND, "not found\n"), ()

    async def _sweep(self) -> None:
        """Expires connections past their deadline, a tenth of the shortest timeout late at
        most: one timer for the server, as an `asyncio.timeout` per request and phase cost
        about a sixth of a request's time."""
        shortest = min(self.read_timeout_s, self.write_timeout_s, self.idle_timeout_s)
        tick = min(max(shortest / 10, 0.01), 1.0)
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(tick)
            now = loop.time()
            for connection in list(self._connections):
                if connection.deadline is not None and connection.deadline <= now:
                    connection.expire()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        connection = _Connection(self, task, reader, writer)
        try:
            if len(self._connections) >= self.max_connections:
                self._log_refusal()
                await connection.refuse()
                return
            self._connections.add(connection)
            try:
                await connection.serve()
            finally:
                self._connections.discard(connection)
        except asyncio.CancelledError:
            # by stop() or a deadline: the task ends normally, as asyncio's stream protocol
            # (3.11) reports a cancelled one as an error
            if not (self._stopping or connection.expired):
                raise
        except Exception:  # a bug here must cost one connection, not the server
            log.exception("http connection failed")
        finally:
            self._tasks.discard(task)
            if writer.transport.get_write_buffer_size():  # a client not reading, or stop()
                writer.transport.abort()  # close() would wait for it
            else:
                writer.close()

    def _log_refusal(self) -> None:
        now = time.monotonic()
        if now - self._refusal_logged_at >= REFUSALS_LOGGED_EVERY_S:
            self._refusal_logged_at = now
            log.warning("http connections refused", max_connections=self.max_connections)


class _Connection:
    """One client connection: reads requests through h11 and answers them in order."""

    def __init__(
        self,
        server: HttpServer,
        task: asyncio.Task[None],
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        self.server = server
        self.task = task
        self.reader = reader
        self.writer = writer
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=server.max_header_bytes)
        self.loop = asyncio.get_running_loop()
        self.phase = Phase.READ
        self.deadline: float | None = self.loop.time() + server.read_timeout_s
        self.expired = False  # the server's sweep cancelled the task
        self.method: bytes | None = None  # the current request's, once its head is read
        self.started = False  # whether any byte of the current request has arrived

    def expire(self) -> None:
        """The deadline passed: interrupts whatever the connection awaits (see serve)."""
        self.deadline = None
        self.expired = True
        self.task.cancel()

    async def serve(self) -> None:
        with contextlib.suppress(OSError):  # the client left
            try:
                await self._serve_requests()
            except _Reject as reject:
                await self._close_with(reject.status, reject.message)
            except asyncio.CancelledError:
                if not (self.expired and self.task.uncancel() == 0):  # stop() cancelled too
                    raise
                if self.phase is Phase.READ and self.started:
                    await self._close_with(HTTPStatus.REQUEST_TIMEOUT, "request timeout\n")

    async def refuse(self) -> None:
        """Answers a connection past the cap without reading its request."""
        with contextlib.suppress(OSError):
            await self._close_with(HTTPStatus.SERVICE_UNAVAILABLE, "too many connections\n")

    def _expect(self, phase: Phase, timeout_s: float | None) -> None:
        self.phase = phase
        self.deadline = None if timeout_s is None else self.loop.time() + timeout_s

    async def _serve_requests(self) -> None:
        first = True
        while (request := await self._next_request(first)) is not None:
            first = False
            self._expect(Phase.HANDLE, None)
            await self._send(*await self._handle(request))
            if self.h11.our_state is h11.MUST_CLOSE:  # Connection: close, or HTTP/1.0
                await self._linger()
                return
            self.h11.start_next_cycle()
        await self._flush()  # the client closed its side; it may still read

    async def _next_request(self, first: bool) -> Request | None:
        """The next whole request; None when the client closed."""
        self.method = None
        self.started = bool(self.h11.trailing_data[0])  # pipelined: already here
        if not first:  # the first request's time counts from the accept
            if not self.started:
                self._expect(Phase.IDLE, self.server.idle_timeout_s)
                await self._receive()  # an EOF counts: h11 then reports ConnectionClosed
            self._expect(Phase.READ, self.server.read_timeout_s)
        return await self._read_request()

    async def _read_request(self) -> Request | None:
        head: h11.Request | None = None
        body = bytearray()
        while True:
            event = self._next_event()
            if event is h11.NEED_DATA:
                await self._receive()
            elif isinstance(event, h11.Request):
                self._check_head(event)
                head, self.method = event, event.method
                if self.h11.they_are_waiting_for_100_continue:  # curl's, for larger bodies
                    self.writer.write(self.h11.send(_CONTINUE))
            elif isinstance(event, h11.Data):
                body += event.data
                if len(body) > self.server.max_body_bytes:
                    raise _Reject(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "body too large\n")
            elif isinstance(event, h11.EndOfMessage) and head is not None:
                return Request(head.method, head.target, bytes(body))
            else:  # ConnectionClosed: the client is done
                return None

    def _next_event(self) -> h11.Event | type[h11.NEED_DATA] | type[h11.PAUSED]:
        try:
            return self.h11.next_event()
        except h11.RemoteProtocolError as exc:
            log.debug("bad http request", error=str(exc))
            status = exc.error_status_hint  # 400, or 431 for a head past h11's limit
            too_large = status == HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE
            raise _Reject(status, "headers too large\n" if too_large else "bad request\n") from None

    async def _receive(self) -> None:
        data = await self.reader.read(READ_CHUNK)
        self.started = self.started or bool(data)
        self.h11.receive_data(data)

    def _check_head(self, request: h11.Request) -> None:
        """Headers are limited as sent: h11's own limit only applies to a head not yet whole,
        and a large head can arrive whole in one read."""
        size = len(request.method) + len(request.target) + 12  # "GET / HTTP/1.1\r\n"
        size += sum(len(name) + len(value) + 4 for name, value in request.headers)
        if size > self.server.max_header_bytes:
            raise _Reject(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "headers too large\n")
        for name, value in request.headers:  # h11 checked it is one integer
            if name == b"content-length" and int(value) > self.server.max_body_bytes:
                raise _Reject(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "body too large\n")

    async def _handle(self, request: Request) -> tuple[Response, Headers]:
        try:
            return await self.server.dispatch(request)
        except Exception:  # a handler bug must not take the server down
            log.exception("http handler failed", target=request.target.decode("ascii"))
            return text(HTTPStatus.INTERNAL_SERVER_ERROR, "internal error\n"), ()

    async def _send(self, response: Response, headers: Headers = ()) -> None:
        status, content_type, body = response
        data = self.h11.send(_response_head(status, content_type, len(body), headers))
        if self.method != b"HEAD":  # h11 refuses a body for HEAD; the length stays
            data += self.h11.send(h11.Data(data=body))
        data += self.h11.send(_END)
        self.writer.write(data)
        self._expect(Phase.WRITE, self.server.write_timeout_s)
        await self.writer.drain()

    async def _close_with(self, status: int, message: str) -> None:
        """Sends an error response, unless h11 says one can no longer be sent, then closes."""
        if self.h11.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            await self._send(text(status, message), CLOSE)
            await self._linger()

    async def _flush(self) -> None:
        """Waits, within the write timeout, until all that was written is sent (`drain()` only
        waits until little is left)."""
        if self.writer.transport.get_write_buffer_size():
            self.writer.transport.set_write_buffer_limits(high=0)
            self._expect(Phase.WRITE, self.server.write_timeout_s)
            await self.writer.drain()

    async def _linger(self) -> None:
        """Half-closes, then reads and drops what the client still sends for a moment, unless
        its request was whole and nothing followed it.

        Closing a socket with unread bytes in it sends a reset, which can make the client
        lose the response it has not read yet (a 413 after part of a large body, say).
        """
        await self._flush()
        if self.h11.their_state in _REQUEST_WHOLE and not self.h11.trailing_data[0]:
            return  # the client sent all it meant to: nothing left unread
        self._expect(Phase.HANDLE, None)  # no deadline but this one
        if self.writer.can_write_eof():
            self.writer.write_eof()
        with contextlib.suppress(OSError):  # TimeoutError included
            async with asyncio.timeout(LINGER_S):
                while await self.reader.read(READ_CHUNK):
                    pass


_END = h11.EndOfMessage()
_CONTINUE = h11.InformationalResponse(status_code=100, headers=[], reason=b"Continue")
_REQUEST_WHOLE = (h11.DONE, h11.MUST_CLOSE, h11.CLOSED)  # the client's, its request read


@functools.lru_cache(maxsize=256)
def _response_head(status: int, content_type: str, length: int, headers: Headers) -> h11.Response:
    """h11 checks every header of an event it is given; most responses repeat, so their
    events are made once (they are immutable)."""
    return h11.Response(
        status_code=status,
        reason=_reason(status),
        headers=[
            (b"content-type", content_type.encode()),
            (b"content-length", str(length).encode()),
            *headers,
        ],
    )


def _reason(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b""
