"""The operator HTTP port (ratelimitd/transport/http1.py) over real loopback sockets: keep-alive,
pipelining, the limits (431, 413, 408, write and idle timeouts, connection cap), errors, stop().

Timeouts are made short per server; a test only asserts that something happened within a
generous bound, never how fast.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from ratelimitd.transport.http1 import MAX_BODY_BYTES, MAX_HEADER_BYTES, HttpServer, Response, text
from tests.helpers import until
from tests.integration.conftest import StartServer

BOUND_S = 5.0  # "closed within a generous bound"
SHORT_S = 0.3  # the timeouts of servers whose timeouts are tested


async def livez(_: bytes) -> Response:
    return text(200, "ALIVE")


async def echo(body: bytes) -> Response:
    return 200, "application/octet-stream", body


async def boom(_: bytes) -> Response:
    raise RuntimeError("a handler bug")


ROUTES = {("GET", "/livez"): livez, ("POST", "/echo"): echo, ("GET", "/boom"): boom}

Serve = Callable[..., Awaitable[tuple[HttpServer, int]]]


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    """Starts an HttpServer on a free loopback port (keyword arguments: its limits)."""
    servers: list[HttpServer] = []

    async def start(**limits: Any) -> tuple[HttpServer, int]:
        server = HttpServer(ROUTES, **limits)
        servers.append(server)
        return server, await server.start("127.0.0.1", 0)

    yield start
    for server in servers:
        await server.stop()


class Client:
    """A raw HTTP/1.1 client on one connection: writes bytes, reads whole responses."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, port: int) -> Client:
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def response(self) -> tuple[int, dict[str, str], bytes]:
        """The next response: status, headers (lower-case names), body."""
        async with asyncio.timeout(BOUND_S):
            head = await self.reader.readuntil(b"\r\n\r\n")
            status_line, *lines = head.decode("latin-1").rstrip("\r\n").split("\r\n")
            headers = {}
            for line in lines:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            assert "content-length" in headers, head  # on every response
            body = await self.reader.readexactly(int(headers["content-length"]))
        return int(status_line.split(" ")[1]), headers, body

    async def closed(self) -> bool:
        """Whether the server closes the connection (within the bound) without sending more."""
        async with asyncio.timeout(BOUND_S):
            try:
                return await self.reader.read(1) == b""
            except ConnectionResetError:
                return True

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


@pytest.fixture
async def connect() -> AsyncIterator[Callable[[int], Awaitable[Client]]]:
    clients: list[Client] = []

    async def open_client(port: int) -> Client:
        client = await Client.connect(port)
        clients.append(client)
        return client

    yield open_client
    for client in clients:
        await client.close()


Connect = Callable[[int], Awaitable[Client]]


def get(path: str, *headers: str, version: str = "1.1") -> bytes:
    lines = [f"GET {path} HTTP/{version}", "Host: test", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def post(path: str, body: bytes) -> bytes:
    head = f"POST {path} HTTP/1.1\r\nHost: test\r\nContent-Length: {len(body)}\r\n\r\n"
    return head.encode() + body


async def test_keep_alive_serves_two_requests_on_one_connection(
    serve: Serve, connect: Connect
) -> None:
    _, port = await serve()
    client = await connect(port)
    for _ in range(2):
        await client.send(get("/livez"))
        status, headers, body = await client.response()
        assert (status, body) == (200, b"ALIVE")
        assert headers["content-type"] == "text/plain; charset=utf-8"
        assert "connection" not in headers


async def test_pipelined_requests_are_answered_in_order(serve: Serve, connect: Connect) -> None:
    _, port = await serve()
    client = await connect(port)
    await client.send(post("/echo", b"first") + get("/livez") + post("/echo", b"third"))
    assert [(await client.response())[2] for _ in range(3)] == [b"first", b"ALIVE", b"third"]


@pytest.mark.parametrize(
    "request_bytes",
    [get("/livez", "Connection: close"), get("/livez", version="1.0")],
    ids=["connection-close", "http-1.0"],
)
async def test_connection_close_and_http_1_0_close_after_the_response(
    serve: Serve, connect: Connect, request_bytes: bytes
) -> None:
    _, port = await serve()
    client = await connect(port)
    await client.send(request_bytes)
    status, headers, body = await client.response()
    assert (status, body) == (200, b"ALIVE")
    assert headers["connection"].lower() == "close"
    assert await client.closed()


async def test_unknown_path_is_404_and_wrong_method_405_and_the_connection_serves_on(
    serve: Serve, connect: Connect
) -> None:
    _, port = await serve()
    client = await connect(port)
    await client.send(get("/nope"))
    assert (await client.response())[0] == 404
    await client.send(post("/livez", b""))
    status, headers, _ = await client.response()
    assert (status, headers["allow"]) == (405, "GET")
    await client.send(get("/livez"))
    assert (await client.response())[0] == 200


@pytest.mark.parametrize("size", [MAX_HEADER_BYTES + 100, 8 * MAX_HEADER_BYTES])
async def test_headers_over_the_limit_are_431_and_closed(
    serve: Serve, connect: Connect, size: int
) -> None:
    """Both a head that arrives whole in one read and one past h11's buffer limit."""
    _, port = await serve()
    client = await connect(port)
    await client.send(get("/livez", "X-Big: " + "a" * size))
    status, headers, _ = await client.response()
    assert (status, headers["connection"]) == (431, "close")
    assert await client.closed()


async def test_headers_under_the_limit_are_served(serve: Serve, connect: Connect) -> None:
    _, port = await serve()
    client = await connect(port)
    await client.send(get("/livez", "X-Big: " + "a" * (MAX_HEADER_BYTES - 200)))
    assert (await client.response())[0] == 200


async def test_a_content_length_over_the_limit_is_413_before_the_body(
    serve: Serve, connect: Connect
) -> None:
    _, port = await serve()
    client = await connect(port)
    head = f"POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: {MAX_BODY_BYTES + 1}\r\n\r\n"
    await client.send(head.encode())  # and no body: the answer must not wait for it
    status, headers, _ = await client.response()
    assert (status, headers["connection"]) == (413, "close")
    assert await client.closed()


async def test_a_chunked_body_growing_over_the_limit_is_413(serve: Serve, connect: Connect) -> None:
    _, port = await serve()
    client = await connect(port)
    chunk = b"x" * 65536
    await client.send(b"POST /echo HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n")
    for _ in range(MAX_BODY_BYTES // len(chunk) + 1):
        await client.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
    status, headers, _ = await client.response()
    assert (status, headers["connection"]) == (413, "close")
    assert await client.closed()


async def test_a_chunked_body_under_the_limit_is_served(serve: Serve, connect: Connect) -> None:
    _, port = await serve()
    client = await connect(port)
    await client.send(
        b"POST /echo HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    )
    assert await client.response() == (
        200,
        {"content-type": "application/octet-stream", "content-length": "5"},
        b"abcde",
    )


async def test_a_client_expecting_100_continue_is_told_to_send_its_body(
    serve: Serve, connect: Connect
) -> None:
    _, port = await serve()
    client = await connect(port)
    head = "POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n"
    await client.send(head.encode())
    async with asyncio.timeout(BOUND_S):
        assert await client.reader.readuntil(b"\r\n\r\n") == b"HTTP/1.1 100 Continue\r\n\r\n"
    await client.send(b"abc")
    assert (await client.response())[::2] == (200, b"abc")


async def test_a_malformed_request_is_400_and_closed_and_the_server_serves_on(
    serve: Serve, connect: Connect
) -> None:
    _, port = await serve()
    client = await connect(port)
    await client.send(b"NOT A REQUEST LINE\r\n\r\n")
    status, headers, _ = await client.response()
    assert (status, headers["connection"]) == (400, "close")
    assert await client.closed()
    client = await connect(port)
    await client.send(get("/livez"))
    assert (await client.response())[0] == 200


async def test_a_slowloris_client_is_answered_408_and_disconnected(
    serve: Serve, connect: Connect
) -> None:
    """Headers trickling in, each in time for a per-read timeout, never the whole request."""
    _, port = await serve(read_timeout_s=SHORT_S)
    client = await connect(port)

    async def trickle() -> None:
        await client.send(b"GET /livez HTTP/1.1\r\nHost: test\r\n")
        with contextlib.suppress(OSError):
            for n in range(1000):
                await client.send(b"X-%d: y\r\n" % n)
                await asyncio.sleep(SHORT_S / 5)

    trickling = asyncio.create_task(trickle())
    try:
        status, headers, _ = await client.response()
        assert (status, headers["connection"]) == (408, "close")
        assert await client.closed()
    finally:
        trickling.cancel()


async def test_a_connection_that_never_sends_is_closed_after_the_read_timeout(
    serve: Serve, connect: Connect
) -> None:
    _, port = await serve(read_timeout_s=SHORT_S)
    client = await connect(port)
    assert await client.closed()


async def test_an_idle_keep_alive_connection_is_closed_after_the_idle_timeout(
    serve: Serve, connect: Connect
) -> None:
    _, port = await serve(idle_timeout_s=SHORT_S)
    client = await connect(port)
    await client.send(get("/livez"))
    assert (await client.response())[0] == 200
    assert await client.closed()


async def test_a_client_that_stops_reading_is_disconnected(serve: Serve, connect: Connect) -> None:
    """Pipelined requests whose responses fill the socket buffers, never read: the server
    stops waiting to write after the timeout, drops what it could not send, and resets."""
    server, port = await serve(write_timeout_s=SHORT_S)
    client = await connect(port)
    body = b"x" * (MAX_BODY_BYTES - 1024)
    count = 64  # 64 MiB of responses: more than loopback's buffers hold
    client.writer.write(post("/echo", body) * count)  # not drained: the server stops reading
    await until(lambda: server.open_connections == 0)
    # reset, not waiting to send the rest (as close() would, for ever): the client's own
    # writes fail, without its reading anything
    await until(client.writer.is_closing)


async def test_connections_past_the_cap_are_503_and_closed(serve: Serve, connect: Connect) -> None:
    _, port = await serve(max_connections=2)
    held = [await connect(port) for _ in range(2)]
    for client in held:  # each answered once: both are counted by now
        await client.send(get("/livez"))
        assert (await client.response())[0] == 200
    refused = await connect(port)
    status, headers, body = await refused.response()
    assert (status, headers["connection"], body) == (503, "close", b"too many connections\n")
    assert await refused.closed()
    await held[0].close()
    async with asyncio.timeout(BOUND_S):  # until the server has seen that one go
        while True:
            client = await connect(port)
            await client.send(get("/livez"))
            if (await client.response())[0] == 200:
                break
            await asyncio.sleep(0.05)


async def test_a_handler_exception_is_500_and_the_server_serves_on(
    serve: Serve, connect: Connect, caplog: pytest.LogCaptureFixture
) -> None:
    _, port = await serve()
    client = await connect(port)
    await client.send(get("/boom"))
    assert await client.response() == (
        500,
        {"content-type": "text/plain; charset=utf-8", "content-length": "15"},
        b"internal error\n",
    )
    assert "http handler failed" in caplog.text
    await client.send(get("/livez"))  # the same connection
    assert (await client.response())[0] == 200
    other = await connect(port)
    await other.send(get("/livez"))
    assert (await other.response())[0] == 200


async def test_stop_closes_idle_keep_alive_connections_at_once(
    serve: Serve, connect: Connect
) -> None:
    server, port = await serve()  # the default idle timeout: 30 s
    client = await connect(port)
    await client.send(get("/livez"))
    assert (await client.response())[0] == 200
    await asyncio.wait_for(server.stop(), BOUND_S)
    assert await client.closed()
    with pytest.raises(OSError):
        await Client.connect(port)


RULES = """
domain: http
descriptors:
  - key: ip
    rate_limit: {unit: minute, requests_per_unit: 1}
"""


async def test_the_app_serves_its_endpoints_on_one_kept_alive_connection(
    start_server: StartServer, connect: Connect
) -> None:
    app = await start_server(RULES)
    client = await connect(app.http_port)
    body = b'{"domain": "http", "descriptors": [{"entries": [{"key": "ip", "value": "a"}]}]}'
    await client.send(get("/healthcheck") + get("/livez") + post("/json", body))
    assert (await client.response())[::2] == (200, b"OK")
    assert (await client.response())[::2] == (200, b"ALIVE")
    assert (await client.response())[0] == 200
    await client.send(post("/json", body) + get("/metrics"))
    assert (await client.response())[0] == 429
    status, headers, metrics = await client.response()
    assert status == 200 and headers["content-type"].startswith("text/plain; version=0.0.4")
    assert b"ratelimitd_" in metrics
