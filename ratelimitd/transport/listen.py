"""Listening sockets: made here, or inherited from a `--workers` supervisor.

A supervisor binds each port once and its workers accept from that one socket, rather than
each binding its own with SO_REUSEPORT. The kernel keeps one accept queue per socket: with
SO_REUSEPORT a killed worker takes the connections queued on its own socket with it (their
clients see a reset), while a shared socket's queue outlives any one worker.
"""

from __future__ import annotations

import socket

BACKLOG = 1024


def bind_host(host: str) -> str | None:
    """grpc's address forms ("[::]", "0.0.0.0", "") as asyncio's."""
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host or None


def listening_socket(host: str, port: int) -> socket.socket:
    """A bound, listening TCP socket for `host` (every address when it is empty)."""
    address = bind_host(host)
    if address is None:
        if socket.has_dualstack_ipv6():
            return socket.create_server(
                ("", port), family=socket.AF_INET6, backlog=BACKLOG, dualstack_ipv6=True
            )
        return socket.create_server(("", port), backlog=BACKLOG)
    family, _, _, _, sockaddr = socket.getaddrinfo(
        address, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    return socket.create_server(sockaddr[:2], family=family, backlog=BACKLOG)


def inherited_socket(fd: int) -> socket.socket | None:
    """The listening socket passed down as file descriptor `fd`; None when `fd` is -1."""
    if fd < 0:
        return None
    return socket.socket(fileno=fd)
