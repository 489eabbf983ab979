"""Deadlines that do not blame the other side for the event loop's own stall.

The other side here is a thread that echoes over a socket pair, so that the answer really
arrives while the loop is blocked, as Redis's does; the loop is blocked (time.sleep) right
after each write, for three times the timeout.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator, Sequence

import pytest

from ratelimitd.backends.batching import Batcher, BatchTimeout
from ratelimitd.backends.deadline import Deadline
from ratelimitd.loops import loop_factory

TIMEOUT_S = 0.1
STALL_S = 0.3
LOOPS = ["uvloop", "asyncio"]


@pytest.fixture
def echo() -> Iterator[socket.socket]:
    """Our end of a socket pair whose other end a thread echoes, byte for byte."""
    ours, theirs = socket.socketpair()

    def serve() -> None:
        while data := theirs.recv(4096):
            theirs.sendall(data)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield ours
    ours.close()
    thread.join(timeout=5)
    theirs.close()


class StallingEcho:
    """Sends each batch over the socket, blocks the loop right after, reads the echo."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def send(self, items: Sequence[int]) -> list[int]:
        if self.streams is None:
            self.streams = await asyncio.open_connection(sock=self.sock)
        reader, writer = self.streams
        writer.write(bytes(items))
        asyncio.get_running_loop().call_soon(time.sleep, STALL_S)
        return list(await reader.readexactly(len(items)))


@pytest.mark.parametrize("loop", LOOPS)
def test_a_batch_answered_during_a_stall_is_not_timed_out(echo: socket.socket, loop: str) -> None:
    async def run() -> list[int | str]:
        batcher: Batcher[int, int] = Batcher(
            StallingEcho(echo).send, delay_s=0, timeout_s=TIMEOUT_S
        )
        results: list[int | str] = []
        for item in range(1, 4):
            try:
                results.append(await batcher.submit(item))
            except BatchTimeout:
                results.append("timed out")
        await batcher.close()
        return results

    with asyncio.Runner(loop_factory=loop_factory(loop)) as runner:
        assert runner.run(run()) == [1, 2, 3]


@pytest.mark.parametrize("loop", LOOPS)
def test_work_with_no_answer_still_times_out(loop: str) -> None:
    async def run() -> None:
        batcher: Batcher[int, int] = Batcher(_never, delay_s=0, timeout_s=TIMEOUT_S)
        with pytest.raises(BatchTimeout):
            await batcher.submit(1)
        await batcher.close()

    with asyncio.Runner(loop_factory=loop_factory(loop)) as runner:
        runner.run(run())


async def _never(items: Sequence[int]) -> list[int]:
    await asyncio.Event().wait()
    return []


def test_a_cancelled_deadline_never_expires() -> None:
    async def run() -> list[str]:
        loop = asyncio.get_running_loop()
        expired: list[str] = []
        kept = Deadline(loop, loop.time() + 0.01, expired.append, "kept")
        cancelled = Deadline(loop, loop.time() + 0.01, expired.append, "cancelled")
        cancelled.cancel()
        await asyncio.sleep(0.05)
        kept.cancel()  # after it fired: nothing happens
        return expired

    assert asyncio.run(run()) == ["kept"]


def test_a_late_deadline_expires_one_turn_later() -> None:
    """A stalled loop gives the deadline one more turn, after which it does expire."""

    async def run() -> list[str]:
        loop = asyncio.get_running_loop()
        expired: list[str] = []
        Deadline(loop, loop.time() + 0.001, expired.append, "late")
        time.sleep(0.05)  # noqa: ASYNC251 - the loop held up past the deadline is the point
        await asyncio.sleep(0)  # the overdue timer runs: it waits one more turn
        seen_at_once = list(expired)
        await asyncio.sleep(0.05)
        return [*seen_at_once, "then", *expired]

    assert asyncio.run(run()) == ["then", "late"]
