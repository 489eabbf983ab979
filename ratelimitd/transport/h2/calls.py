"""gRPC over the HTTP/2 connection: requests' headers read, handlers run, statuses written.

Handlers are grpcio's own `RpcMethodHandler`s, registered the way a `grpc.aio.Server` takes
them, and run with a `CallContext` that does what ratelimitd's servicers, grpcio's health
servicer and grpcio's reflection servicer ask of a `grpc.aio.ServicerContext`: abort, read
metadata, write to a response stream, set a status code.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from collections.abc import AsyncIterator, Sequence
from typing import Any, NoReturn

import grpc

from ratelimitd.logs import get_logger
from ratelimitd.transport.h2.connection import CallStream, Connection
from ratelimitd.transport.h2.headers import (
    RESPONSE_HEADERS,
    TRAILERS_OK,
    Headers,
    Metadata,
    RequestHead,
    http_status,
    status_fields,
)

log = get_logger(__name__)

_TIMEOUT_UNITS = {b"H": 3600.0, b"M": 60.0, b"S": 1.0, b"m": 1e-3, b"u": 1e-6, b"n": 1e-9}
_NOT_METADATA = (b"content-type", b"te", b"user-agent")
# a streaming request's messages not yet taken by its handler (their bytes count against the
# connection's window until taken, and this bounds them per stream)
MAX_QUEUED_MESSAGES = 64


def grpc_timeout(value: bytes) -> float | None:
    """`grpc-timeout` (up to 8 digits and a unit) in seconds; None when it is malformed."""
    digits, unit = value[:-1], value[-1:]
    if not digits.isdigit() or len(digits) > 8 or unit not in _TIMEOUT_UNITS:
        return None
    return int(digits) * _TIMEOUT_UNITS[unit]


class Abort(Exception):
    """Raised by `CallContext.abort`: the call ends with this status."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


def _status(code: grpc.StatusCode, details: str) -> bytes:
    return status_fields(code.value[0], details)


def _trailers_only(code: grpc.StatusCode, details: str) -> bytes:
    return RESPONSE_HEADERS + _status(code, details)


class CallContext:
    """The `grpc.aio.ServicerContext` methods ratelimitd's handlers use."""

    __slots__ = ("_code", "_connection", "_details", "_serializer", "_stream")

    def __init__(self, connection: Connection, stream: CallStream, serializer: Any) -> None:
        self._connection = connection
        self._stream = stream
        self._serializer = serializer
        self._code = grpc.StatusCode.OK
        self._details = ""

    async def abort(
        self, code: grpc.StatusCode, details: str = "", trailing_metadata: Any = ()
    ) -> NoReturn:
        raise Abort(code, details)

    def set_code(self, code: grpc.StatusCode) -> None:
        self._code = code

    def set_details(self, details: str) -> None:
        self._details = details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def invocation_metadata(self) -> Metadata:
        return self._stream.head.metadata

    async def write(self, message: Any) -> None:
        data = self._serializer(message) if self._serializer is not None else message
        self._connection.send_message(self._stream, data)
        await self._connection.writable(self._stream)


class _Details:
    """What a generic handler is asked with (grpc.HandlerCallDetails)."""

    __slots__ = ("invocation_metadata", "method")

    def __init__(self, method: str) -> None:
        self.method = method
        self.invocation_metadata: Metadata = ()


def _one_message(body: bytes) -> bytes | Abort:
    """The message of a unary request's body (5-byte prefix, then the message)."""
    if len(body) < 5:
        return Abort(grpc.StatusCode.INTERNAL, "the request carried no message")
    if body[0]:
        return Abort(grpc.StatusCode.UNIMPLEMENTED, "compressed messages are not accepted")
    if int.from_bytes(body[1:5], "big") != len(body) - 5:
        return Abort(grpc.StatusCode.INTERNAL, "the request body is not exactly one message")
    return body[5:]


class Calls:
    """The registered methods, and how one call is run on a connection."""

    def __init__(self, max_message: int) -> None:
        self.max_message = max_message
        self._methods: dict[str, grpc.RpcMethodHandler] = {}
        self._generic: list[grpc.GenericRpcHandler] = []

    # -- registration (as grpc.aio.Server has it) ------------------------------------------

    def add_registered_method_handlers(
        self, service: str, handlers: dict[str, grpc.RpcMethodHandler]
    ) -> None:
        for name, handler in handlers.items():
            self._methods[f"/{service}/{name}"] = handler

    def add_generic_rpc_handlers(self, handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        self._generic.extend(handlers)

    def find(self, path: str) -> grpc.RpcMethodHandler | None:
        handler = self._methods.get(path)
        if handler is None:
            for generic in self._generic:
                handler = generic.service(_Details(path))
                if handler is not None:
                    self._methods[path] = handler
                    break
        return handler

    # -- headers ---------------------------------------------------------------------------

    def parse_head(self, headers: Headers) -> RequestHead:
        method = path = content_type = b""
        timeout: float | None = None
        metadata: list[tuple[str, str | bytes]] = []
        for name, value in headers:
            if name.startswith(b":"):
                if name == b":path":
                    path = value
                elif name == b":method":
                    method = value
            elif name == b"content-type":
                content_type = value
            elif name == b"grpc-timeout":
                timeout = grpc_timeout(value)
            elif not name.startswith(b"grpc-") and name not in _NOT_METADATA:
                metadata.append(_metadatum(name, value))
        text_path = path.decode("latin-1")
        handler = self.find(text_path)
        refusal = None
        if method != b"POST":
            refusal = http_status(405)
        elif not content_type.startswith(b"application/grpc"):
            refusal = http_status(415)
        elif handler is None:
            refusal = _trailers_only(grpc.StatusCode.UNIMPLEMENTED, f"unknown method {text_path}")
        streaming = handler is not None and handler.request_streaming
        return RequestHead(text_path, handler, timeout, tuple(metadata), refusal, streaming)

    # -- running calls ---------------------------------------------------------------------

    def start(self, connection: Connection, stream: CallStream, body: bytes | None) -> None:
        """Starts the call: with its whole body (unary requests), or None (streaming ones)."""
        handler = stream.head.handler
        assert handler is not None
        request: Any
        if body is None:
            request = _requests(connection, stream, handler.request_deserializer)
        else:
            message = _one_message(body)
            if isinstance(message, Abort):
                connection.finish(stream, _status(message.code, message.details))
                return
            request = message
        stream.task = connection.loop.create_task(self._run(connection, stream, handler, request))

    def feed(self, connection: Connection, stream: CallStream) -> None:
        """Hands a streaming request's complete messages to its handler."""
        body, queue = stream.body, stream.messages
        assert queue is not None
        while len(body) >= 5:
            size = int.from_bytes(body[1:5], "big")
            if len(body) < 5 + size:
                return
            if body[0]:
                self.refuse(
                    connection,
                    stream,
                    grpc.StatusCode.UNIMPLEMENTED,
                    "compressed messages are not accepted",
                )
                return
            if queue.qsize() >= MAX_QUEUED_MESSAGES:
                self.refuse(
                    connection,
                    stream,
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"the handler is {MAX_QUEUED_MESSAGES} request messages behind",
                )
                return
            queue.put_nowait(bytes(body[5 : 5 + size]))
            del body[: 5 + size]

    def too_large(self, connection: Connection, stream: CallStream) -> None:
        self.refuse(
            connection,
            stream,
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"the request is larger than max {self.max_message} bytes",
        )

    @staticmethod
    def refuse(
        connection: Connection, stream: CallStream, code: grpc.StatusCode, details: str
    ) -> None:
        connection.cancel(stream)
        connection.refuse(stream, _trailers_only(code, details))

    async def _run(
        self,
        connection: Connection,
        stream: CallStream,
        handler: grpc.RpcMethodHandler,
        request: Any,
    ) -> None:
        context = CallContext(connection, stream, handler.response_serializer)
        timeout = stream.head.timeout
        if handler.request_deserializer is not None and not handler.request_streaming:
            try:
                request = handler.request_deserializer(request)
            except Exception as exc:  # a garbled request is the caller's error, not ours
                connection.finish(
                    stream, _status(grpc.StatusCode.INVALID_ARGUMENT, _malformed(exc))
                )
                return
        try:
            if timeout is None:
                response = await _behaviour(handler, request, context)
            else:
                async with asyncio.timeout(timeout) as deadline:
                    response = await _behaviour(handler, request, context)
            serializer = handler.response_serializer
            if serializer is not None and not handler.response_streaming:
                response = serializer(response)
        except Abort as abort:
            connection.finish(stream, _status(abort.code, abort.details))
            return
        except TimeoutError:
            if timeout is not None and deadline.expired():
                connection.finish(
                    stream, _status(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
                )
                return
            self._unexpected(connection, stream)
            return
        except asyncio.CancelledError:
            # the client reset the stream (then nothing is sent), or the server is stopping
            connection.finish(
                stream, _status(grpc.StatusCode.UNAVAILABLE, "the server is shutting down")
            )
            raise
        except Exception:
            self._unexpected(connection, stream)
            return
        if context.code() is not grpc.StatusCode.OK:
            connection.finish(stream, _status(context.code(), context.details()))
        elif handler.response_streaming:
            connection.finish(stream, TRAILERS_OK)
        else:
            connection.answer(stream, response)

    @staticmethod
    def _unexpected(connection: Connection, stream: CallStream) -> None:
        log.exception("a gRPC handler failed", method=stream.head.path)
        connection.finish(stream, _status(grpc.StatusCode.UNKNOWN, "unexpected server error"))


def _behaviour(handler: grpc.RpcMethodHandler, request: Any, context: CallContext) -> Any:
    """What to await for the call: a unary handler's own coroutine (on every ShouldRateLimit,
    so no coroutine of ours in between), or one that writes a response stream."""
    if not handler.response_streaming:
        behaviour = handler.stream_unary if handler.request_streaming else handler.unary_unary
        return behaviour(request, context)
    return _write_stream(handler, request, context)


async def _write_stream(handler: grpc.RpcMethodHandler, request: Any, context: CallContext) -> None:
    behaviour = handler.stream_stream if handler.request_streaming else handler.unary_stream
    result = behaviour(request, context)
    if hasattr(result, "__aiter__"):
        async for item in result:
            await context.write(item)
    else:  # a coroutine that writes with context.write
        await result


async def _requests(
    connection: Connection, stream: CallStream, deserializer: Any
) -> AsyncIterator[Any]:
    queue = stream.messages
    assert queue is not None
    while (message := await queue.get()) is not None:
        connection.consumed(stream, len(message) + 5)  # credit for the client to send more
        yield deserializer(message) if deserializer is not None else message


def _malformed(exc: Exception) -> str:
    return f"malformed request: {str(exc) or type(exc).__name__}"


def _metadatum(name: bytes, value: bytes) -> tuple[str, str | bytes]:
    key = name.decode("latin-1")
    if key.endswith("-bin"):
        try:
            return key, base64.b64decode(value + b"=" * (-len(value) % 4))
        except binascii.Error:
            return key, value
    return key, value.decode("latin-1")
