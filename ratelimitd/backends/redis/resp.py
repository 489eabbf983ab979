"""A lean Redis connection for the hot path: pre-packed commands out, hiredis replies in.

redis-py costs about 300 µs of Python per command here; most of it is generic machinery this
service does not need. For a standalone server (`redis://`, `rediss://`, `unix://`) the
backend sends each batch as one write of packed RESP on one pipelined connection and parses
the replies with `hiredis.Reader` (C). Sentinel and Cluster keep redis-py, which knows their
topologies.

Errors are redis-py's exception types, so the backend handles both paths alike. A batch that
gets no reply within the timeout fails, but keeps its place in the reply stream, so that its
late replies are read and dropped and the batches behind it stay in step: a slow moment does
not cost the connection. Only when the oldest batch has waited `STALE_AFTER_TIMEOUTS`
timeouts (a server that has gone silent) is the connection dropped; the next batch connects
again.
"""

from __future__ import annotations

import asyncio
import os
import ssl
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import parse_qs, unquote, urlsplit

import hiredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ratelimitd.backends.deadline import Deadline

Command = Sequence[str | int | bytes]
STALE_AFTER_TIMEOUTS = 10


def pack(commands: Sequence[Command]) -> bytes:
    """RESP for several commands, in one buffer."""
    parts: list[bytes] = []
    for command in commands:
        parts.append(b"*%d\r\n" % len(command))
        for arg in command:
            data = arg if isinstance(arg, bytes) else str(arg).encode()
            parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


def translate(reply: Any) -> Any:
    """hiredis's error replies as redis-py's exceptions (returned, not raised)."""
    if isinstance(reply, hiredis.ReplyError):
        message = str(reply)
        return NoScriptError(message) if message.startswith("NOSCRIPT") else ResponseError(message)
    return reply


@dataclass(frozen=True)
class Endpoint:
    host: str = "127.0.0.1"
    port: int = 6379
    unix_path: str = ""
    username: str = ""
    password: str = ""
    db: int = 0
    tls: ssl.SSLContext | None = None


def endpoint_from_url(url: str, tls: ssl.SSLContext | None = None) -> Endpoint:
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    db_text = (query.get("db") or [parts.path.strip("/") if parts.scheme != "unix" else ""])[0]
    return Endpoint(
        host=parts.hostname or "127.0.0.1",
        port=parts.port or 6379,
        unix_path=parts.path if parts.scheme == "unix" else "",
        username=unquote(parts.username or ""),
        password=unquote(parts.password or ""),
        db=int(db_text) if db_text.isdigit() else 0,
        tls=tls if parts.scheme == "rediss" else None,
    )


class _Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.reader = hiredis.Reader()
        self.transport: asyncio.Transport | None = None
        # each waiter: (replies expected, replies so far, future, when sent)
        self.waiters: deque[tuple[int, list[Any], asyncio.Future[list[Any]], float]] = deque()
        self.lost: Exception | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        waiters = self.waiters
        while True:
            reply = self.reader.gets()
            if reply is False:
                return
            if not waiters:  # an answer nobody waits for: the stream is out of step
                self._fail(RedisConnectionError("unexpected reply from Redis"))
                return
            expected, replies, future, _ = waiters[0]
            replies.append(translate(reply))
            if len(replies) == expected:
                waiters.popleft()
                if not future.done():
                    future.set_result(replies)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = RedisConnectionError(f"connection to Redis lost: {exc or 'closed'}")
        self._fail(self.lost)

    def _fail(self, exc: Exception) -> None:
        while self.waiters:
            _, _, future, _ = self.waiters.popleft()
            if not future.done():
                future.set_exception(exc)
        if self.transport is not None:
            self.transport.abort()


def _time_out(future: asyncio.Future[list[Any]], timeout_s: float) -> None:
    """Fails the caller; its waiter stays queued, to absorb the late replies."""
    if not future.done():
        future.set_exception(
            RedisTimeoutError(f"no reply from Redis within {timeout_s * 1000:.0f} ms")
        )


class RespConnection:
    """One pipelined connection, opened on first use and again after any failure."""

    def __init__(self, endpoint: Endpoint, timeout_s: float) -> None:
        self.endpoint = endpoint
        self.timeout_s = timeout_s
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Lock | None = None

    async def execute(self, commands: Sequence[Command]) -> list[Any]:
        """Sends `commands` in one write; their replies, in order (errors as exceptions)."""
        return await self.execute_packed(pack(commands), len(commands))

    async def execute_packed(self, packed: bytes, count: int) -> list[Any]:
        """`execute` for `count` commands already packed (`pack`) into one buffer."""
        loop = asyncio.get_running_loop()
        protocol = await self._connected()
        if self._is_stale(protocol, loop.time()):
            self._drop(
                protocol, RedisTimeoutError("Redis has stopped answering on this connection")
            )
            protocol = await self._connected()
        future: asyncio.Future[list[Any]] = loop.create_future()
        protocol.waiters.append((count, [], future, loop.time()))
        assert protocol.transport is not None
        protocol.transport.write(packed)
        deadline = Deadline(loop, loop.time() + self.timeout_s, _time_out, future, self.timeout_s)
        try:
            return await future
        finally:
            deadline.cancel()

    def _is_stale(self, protocol: _Protocol, now: float) -> bool:
        oldest = protocol.waiters[0][3] if protocol.waiters else now
        return now - oldest > STALE_AFTER_TIMEOUTS * self.timeout_s

    def _drop(self, protocol: _Protocol, exc: Exception) -> None:
        if self._protocol is protocol:
            self._protocol = None
        protocol._fail(exc)

    async def _connected(self) -> _Protocol:
        protocol = self._protocol
        if protocol is not None and protocol.lost is None:
            return protocol
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self._protocol is not None and self._protocol.lost is None:
                return self._protocol
            self._protocol = await self._open()
            return self._protocol

    async def _open(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        endpoint = self.endpoint
        try:
            async with asyncio.timeout(self.timeout_s):
                if endpoint.unix_path:
                    _, protocol = await loop.create_unix_connection(_Protocol, endpoint.unix_path)
                else:
                    _, protocol = await loop.create_connection(
                        _Protocol, endpoint.host, endpoint.port, ssl=endpoint.tls
                    )
        except TimeoutError:
            raise RedisTimeoutError(
                f"connecting to Redis took over {self.timeout_s * 1000:.0f} ms"
            ) from None
        except OSError as exc:
            reason = os.strerror(exc.errno) if exc.errno else str(exc)
            raise RedisConnectionError(f"cannot connect: {reason.lower()}") from exc
        self._protocol = protocol
        setup: list[Command] = []
        if endpoint.password:
            setup.append(
                ("AUTH", endpoint.username, endpoint.password)
                if endpoint.username
                else ("AUTH", endpoint.password)
            )
        if endpoint.db:
            setup.append(("SELECT", endpoint.db))
        if setup:
            replies = await self.execute(setup)
            for reply in replies:
                if isinstance(reply, Exception):
                    self._drop(protocol, RedisConnectionError(str(reply)))
                    raise RedisConnectionError(f"Redis refused the connection: {reply}")
        return protocol

    async def close(self) -> None:
        if self._protocol is not None:
            self._drop(self._protocol, RedisConnectionError("closed"))
