"""The gRPC listener ratelimitd serves with by default: its own HTTP/2, on the event loop.

grpc.aio hands every call between grpcio's C core, a poller thread and the event loop,
several times per call; on this kind of machine that costs 150-200 µs of Python per call
before any handler runs, more than a whole rate-limit decision. Reading the frames on the
event loop itself costs a small fraction of that (bench/README.md), and answers given
together leave in one write. Handlers, their registration and their context are grpcio's
(calls.py), so the same servicers serve on either server (`RATELIMITD_GRPC_SERVER`).

Stopping sends every connection a GOAWAY: calls already started finish within the grace
period, new ones are refused (REFUSED_STREAM, which clients retry elsewhere). Calls still
running after it end with UNAVAILABLE.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import Sequence

import grpc

from ratelimitd.transport.h2.calls import Calls
from ratelimitd.transport.h2.connection import Connection
from ratelimitd.transport.h2.limits import DEFAULT_LIMITS, Limits
from ratelimitd.transport.listen import BACKLOG, bind_host


class Http2Server:
    def __init__(self, max_message: int, limits: Limits = DEFAULT_LIMITS) -> None:
        self.calls = Calls(max_message)
        self.limits = limits
        self.connections: set[Connection] = set()
        self._server: asyncio.Server | None = None

    def add_registered_method_handlers(
        self, service: str, handlers: dict[str, grpc.RpcMethodHandler]
    ) -> None:
        self.calls.add_registered_method_handlers(service, handlers)

    def add_generic_rpc_handlers(self, handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        self.calls.add_generic_rpc_handlers(handlers)

    async def start(
        self,
        host: str,
        port: int,
        *,
        reuse_port: bool = False,
        ssl_context: ssl.SSLContext | None = None,
        sock: socket.socket | None = None,
    ) -> int:
        """Listens on `sock`, or on `host`:`port`; returns the port (the one chosen when `port`
        is 0)."""
        loop = asyncio.get_running_loop()
        if sock is not None:
            self._server = await loop.create_server(
                self._new_connection, sock=sock, ssl=ssl_context, backlog=BACKLOG
            )
        else:
            self._server = await loop.create_server(
                self._new_connection,
                host=bind_host(host),
                port=port,
                reuse_port=reuse_port or None,
                ssl=ssl_context,
                backlog=BACKLOG,
            )
        return int(self._server.sockets[0].getsockname()[1])

    def _new_connection(self) -> Connection:
        refuse = len(self.connections) >= self.limits.max_connections
        connection = Connection(self.calls, self.connections.discard, self.limits, refuse)
        self.connections.add(connection)
        return connection

    async def stop(self, grace: float | None) -> None:
        if self._server is None:
            return
        self._server.close()
        connections = list(self.connections)
        for connection in connections:
            connection.drain()
        if grace:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(grace):
                    for connection in connections:
                        await connection.idle.wait()
        tasks = [
            stream.task
            for connection in connections
            for stream in connection.streams.values()
            if stream.task is not None and not stream.task.done()
        ]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for connection in connections:
            connection.close()
        await self._server.wait_closed()
        self._server = None
