"""The batcher: shares round trips, never delays a lone call, drops cancelled work."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from ratelimitd.backends.batching import Batcher, BatchTimeout


class Recorder:
    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.release = asyncio.Event()

    async def send(self, items: Sequence[int]) -> list[int]:
        self.batches.append(list(items))
        await self.release.wait()
        return [item * 10 for item in items]


async def test_work_waiting_behind_a_batch_leaves_together() -> None:
    recorder = Recorder()
    batcher: Batcher[int, int] = Batcher(recorder.send, delay_s=0)
    first = batcher.submit(1)
    await asyncio.sleep(0)  # the first batch leaves alone
    rest = [batcher.submit(n) for n in (2, 3, 4)]
    await asyncio.sleep(0)
    recorder.release.set()
    assert await asyncio.gather(first, *rest) == [10, 20, 30, 40]
    assert recorder.batches == [[1], [2, 3, 4]]


async def test_a_lone_call_is_not_delayed() -> None:
    recorder = Recorder()
    recorder.release.set()
    batcher: Batcher[int, int] = Batcher(recorder.send, delay_s=60)  # a delay nobody could wait out
    for n in range(3):
        assert await asyncio.wait_for(batcher.submit(n), 5) == n * 10
    assert recorder.batches == [[0], [1], [2]]


async def test_a_caller_answered_may_submit_again_at_once() -> None:
    """Its batch counts as back as soon as the answers are handed over.

    Awaiting the future itself, as the backend does, the caller runs again before any done
    callback of the batch's task: it used to find the batch still out and wait out the delay.
    """
    recorder = Recorder()
    recorder.release.set()
    batcher: Batcher[int, int] = Batcher(recorder.send, delay_s=60)

    async def caller() -> list[int]:
        return [await batcher.submit(n) for n in range(3)]

    assert await asyncio.wait_for(caller(), 5) == [0, 10, 20]
    assert recorder.batches == [[0], [1], [2]]


async def test_cancelled_work_is_never_sent() -> None:
    recorder = Recorder()
    batcher: Batcher[int, int] = Batcher(recorder.send, delay_s=0)
    first = batcher.submit(1)
    await asyncio.sleep(0)
    dropped = batcher.submit(2)
    kept = batcher.submit(3)
    dropped.cancel()
    recorder.release.set()
    assert await first == 10 and await kept == 30
    assert recorder.batches == [[1], [3]]


async def test_a_failed_send_fails_its_batch_only() -> None:
    calls = 0

    async def send(items: Sequence[int]) -> list[int]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("boom")
        return list(items)

    batcher: Batcher[int, int] = Batcher(send, delay_s=0)
    failed = batcher.submit(1)
    try:
        await failed
    except RuntimeError as exc:
        assert str(exc) == "boom"
    else:
        raise AssertionError("the failure was not passed on")
    assert await batcher.submit(2) == 2


async def test_one_batch_is_out_at_a_time_until_it_stalls() -> None:
    recorder = Recorder()
    batcher: Batcher[int, int] = Batcher(recorder.send, delay_s=0, stall_s=0.05)
    first = batcher.submit(1)
    await asyncio.sleep(0)
    second = batcher.submit(2)
    await asyncio.sleep(0.01)  # well before the first batch counts as stalled
    assert recorder.batches == [[1]]
    third = batcher.submit(3)
    await asyncio.sleep(0.2)  # the first batch is stalled: what waited goes out beside it
    assert recorder.batches == [[1], [2, 3]]
    recorder.release.set()
    assert await asyncio.gather(first, second, third) == [10, 20, 30]


async def test_work_waiting_for_a_stall_leaves_when_the_batch_returns() -> None:
    sent: list[list[int]] = []
    gate = asyncio.Event()

    async def send(items: Sequence[int]) -> list[int]:
        sent.append(list(items))
        if len(sent) == 1:
            await gate.wait()
        return list(items)

    batcher: Batcher[int, int] = Batcher(send, delay_s=0, stall_s=60)  # never stalls here
    first = batcher.submit(1)
    await asyncio.sleep(0)
    second = batcher.submit(2)
    await asyncio.sleep(0)
    gate.set()
    assert await asyncio.wait_for(asyncio.gather(first, second), 5) == [1, 2]
    assert sent == [[1], [2]]


async def test_a_batch_out_past_its_timeout_fails_and_the_next_work_still_goes() -> None:
    recorder = Recorder()  # never released: the store has gone silent
    batcher: Batcher[int, int] = Batcher(recorder.send, delay_s=0, timeout_s=0.05)
    stuck = batcher.submit(1)
    try:
        await asyncio.wait_for(stuck, 5)
    except BatchTimeout as exc:
        assert "50 ms" in str(exc)
    else:
        raise AssertionError("no timeout")
    recorder.release.set()
    assert await asyncio.wait_for(batcher.submit(2), 5) == 20
    await batcher.close()


async def test_work_waiting_for_a_free_slot_times_out_in_the_queue() -> None:
    recorder = Recorder()
    batcher: Batcher[int, int] = Batcher(
        recorder.send, delay_s=0, stall_s=0, max_in_flight=1, timeout_s=0.05
    )
    out = batcher.submit(1)
    await asyncio.sleep(0)
    waiting = [batcher.submit(n) for n in (2, 3)]  # the only slot is taken
    for future in [out, *waiting]:
        try:
            await asyncio.wait_for(future, 5)
        except BatchTimeout:
            pass
        else:
            raise AssertionError("no timeout")
    assert recorder.batches == [[1]]  # what timed out waiting was never sent
    recorder.release.set()
    assert await asyncio.wait_for(batcher.submit(4), 5) == 40
    await batcher.close()


async def test_answers_in_time_leave_no_timer_behind() -> None:
    recorder = Recorder()
    recorder.release.set()
    batcher: Batcher[int, int] = Batcher(recorder.send, delay_s=0, timeout_s=0.05)
    assert await asyncio.gather(*(batcher.submit(n) for n in range(5))) == [0, 10, 20, 30, 40]
    for _ in range(3):  # the batch tasks' done callbacks run
        await asyncio.sleep(0)
    loop = asyncio.get_running_loop()  # no deadline timer is left to fire 50 ms on
    assert not [h for h in loop._scheduled if not h.cancelled()]  # type: ignore[attr-defined]


async def test_a_batch_waiting_for_company_leaves_once_it_has_as_many_as_lately() -> None:
    recorder = Recorder()
    recorder.release.set()
    batcher: Batcher[int, int] = Batcher(recorder.send, delay_s=60)  # a delay nobody could wait out
    first = [batcher.submit(n) for n in (1, 2, 3)]  # three callers in one event-loop step
    assert await asyncio.wait_for(asyncio.gather(*first), 5) == [10, 20, 30]
    # the same three come back: the third completes the company, no one waits out the delay
    second = [batcher.submit(n) for n in (4, 5, 6)]
    assert await asyncio.wait_for(asyncio.gather(*second), 5) == [40, 50, 60]
    assert recorder.batches == [[1, 2, 3], [4, 5, 6]]


async def test_a_batch_short_of_company_still_waits_out_the_delay() -> None:
    recorder = Recorder()
    recorder.release.set()
    batcher: Batcher[int, int] = Batcher(recorder.send, delay_s=0.05)
    assert await asyncio.gather(*(batcher.submit(n) for n in (1, 2, 3))) == [10, 20, 30]
    late = batcher.submit(4)  # one of three: company may still come
    for _ in range(3):
        await asyncio.sleep(0)
    assert recorder.batches == [[1, 2, 3]]
    assert await asyncio.wait_for(late, 5) == 40  # sent when the delay ran out
    assert recorder.batches == [[1, 2, 3], [4]]
