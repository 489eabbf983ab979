"""The Redis counter store: one atomic Lua script per descriptor, pipelined across callers.

Every limit of a descriptor is checked and charged by one script call (all or nothing), on
one Cluster slot thanks to the shared hash tag in its keys. Time comes from Redis (`TIME`
inside the script), so replicas with skewed clocks agree; a test may pass a fake clock, whose
time is then sent as an argument instead.
"""

from __future__ import annotations

import asyncio
import importlib.resources
import math
import time
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import redis.exceptions
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ClusterDownError, NoScriptError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ratelimitd import calendar_windows, metrics
from ratelimitd.backends.base import CounterRequest, CounterResult, LeaseRequest, LeaseResult
from ratelimitd.backends.batching import Batcher, BatchTimeout
from ratelimitd.backends.redis.client import (
    RedisOptions,
    describe,
    is_standalone,
    make_client,
    tls_context,
)
from ratelimitd.backends.redis.leases import acquire_command, parse_acquire, release_command
from ratelimitd.backends.redis.resp import RespConnection, endpoint_from_url, pack
from ratelimitd.clock import Clock
from ratelimitd.errors import BackendError
from ratelimitd.model import Algorithm, Charge, Limit, LimitResult, Window

SCRIPT_PARTS = ("prelude", "fixed_window", "sliding_window", "token_bucket", "gcra", "hit")


def load_hit_script() -> str:
    """The algorithm scripts and the dispatcher, as one script."""
    folder = importlib.resources.files("ratelimitd.backends.redis") / "lua"
    return "\n".join((folder / f"{part}.lua").read_text(encoding="utf-8") for part in SCRIPT_PARTS)


HIT_SCRIPT = load_hit_script()
REFUND_SCRIPT = "\n".join(
    (importlib.resources.files("ratelimitd.backends.redis") / "lua" / f"{part}.lua").read_text(
        encoding="utf-8"
    )
    for part in ("prelude", "refund")
)


def script_step(limit: Limit) -> str:
    """The Lua function of hit.lua that counts `limit`."""
    if limit.algorithm is Algorithm.FIXED_WINDOW:
        if limit.window is Window.FIRST_HIT:
            return "fixed_window_first_hit"
        if limit.time_zone is not None:
            return "fixed_window_calendar"
    return limit.algorithm.value


def period_argument(limit: Limit, now: str) -> int | str:
    """The period the scripts get: seconds, or for a calendar window the span around the
    service's clock (`now`, or the wall clock when Redis's own is used)."""
    if limit.time_zone is None:
        return limit.period
    at = float(now) if now else time.time()
    return calendar_windows.span_at(at, limit.unit, limit.time_zone).as_argument()


def calendar_renewal(requests: Sequence[CounterRequest]) -> float | None:
    """When the calendar spans in these requests' arguments move on (the start of the next
    window by the wall clock), or None when there are none."""
    ends = [
        calendar_windows.span_at(time.time(), limit.unit, limit.time_zone).bounds[2]
        for request in requests
        for limit in request.limits
        if limit.time_zone is not None
    ]
    return min(ends, default=None)


def script_args(requests: Sequence[CounterRequest], now: str) -> list[Any]:
    """The hit script's ARGV for the descriptors of one call (see lua/hit.lua)."""
    args: list[Any] = [now, len(requests)]
    for request in requests:
        args += [request.cost, len(request.limits), 1 if request.binding else 0]
        for limit in request.limits:
            args += [
                script_step(limit),
                limit.requests_per_unit,
                period_argument(limit, now),
                limit.capacity,
                1 if limit.charge is Charge.ALWAYS else 0,
            ]
    return args


def parse_reply(reply: Sequence[int], requests: Sequence[CounterRequest]) -> list[CounterResult]:
    """The hit script's reply, one result per request."""
    results = []
    at = 0
    for request in requests:
        allowed = reply[at] == 1
        if len(request.limits) == 1:  # the common case, without a loop
            limits: tuple[LimitResult, ...] = (
                LimitResult(reply[at + 1] == 1, reply[at + 2], reply[at + 3] / 1000),
            )
            at += 4
        else:
            end = at + 1 + 3 * len(request.limits)
            limits = tuple(
                LimitResult(reply[i] == 1, reply[i + 1], reply[i + 2] / 1000)
                for i in range(at + 1, end, 3)
            )
            at = end
        results.append(CounterResult(allowed, limits))
    return results


def _redis_py_exceptions() -> tuple[type[Exception], ...]:
    """Every exception class redis-py declares: the `RedisError` family, the Cluster family
    (`RedisClusterException`, not a `RedisError`: `SlotNotCoveredError` whenever the slot cache
    is empty), and the few that stand alone (`ChildDeadlockedError`, ...)."""
    return tuple(
        value
        for value in vars(redis.exceptions).values()
        if isinstance(value, type) and issubclass(value, Exception)
    )


# Everything a failed round trip raises: redis-py's exceptions, and sockets' own errors
# (`TimeoutError` among them) from the lean connection and from `asyncio.timeout`.
REDIS_FAILURES: tuple[type[Exception], ...] = (*_redis_py_exceptions(), OSError)
NODE_LOOKUP_FAILURES: tuple[type[Exception], ...] = (*REDIS_FAILURES, IndexError, KeyError)


def backend_error(error: BaseException) -> BackendError:
    """The `BackendError` for a Redis failure, raised or returned in place of a reply; its
    `kind` labels the metrics (timeout, script, connection)."""
    if isinstance(error, RedisTimeoutError | TimeoutError):
        return BackendError(f"Redis timed out: {error}", kind="timeout")
    if isinstance(error, ResponseError) and not isinstance(error, ClusterDownError):
        return BackendError(f"Redis failed: {error}", kind="script")
    if isinstance(error, RedisConnectionError):
        return BackendError(f"Redis unreachable: {error}", kind="connection")
    return BackendError(f"Redis failed: {type(error).__name__}: {error}", kind="connection")


@contextmanager
def redis_failures_as_backend_errors() -> Iterator[None]:
    """The one boundary where Redis clients' exceptions become `BackendError`: every round
    trip the backend makes runs inside it, so failure policy sees every backend failure."""
    try:
        yield
    except REDIS_FAILURES as exc:
        raise backend_error(exc) from exc


class OverLimitCache:
    """Remembers denials until they lapse, so a hammered key costs no round trip.

    A cached denial answers only requests for the same limits with at least the same cost.
    Entries are bounded; the oldest go first.
    """

    def __init__(self, max_entries: int = 100_000) -> None:
        self.max_entries = max_entries
        # (base, limits) -> (until, cost, result)
        self._entries: OrderedDict[tuple[str, int], tuple[float, int, CounterResult]] = (
            OrderedDict()
        )
        self.hits = 0

    def get(self, request: CounterRequest, now: float) -> CounterResult | None:
        key = (request.base, hash(request.limits))
        entry = self._entries.get(key)
        if entry is None:
            return None
        until, cost, result = entry
        if until <= now:
            del self._entries[key]
            return None
        if request.cost < cost:
            return None
        self.hits += 1
        left = until - now
        return CounterResult(
            False,
            tuple(
                LimitResult(
                    r.allowed, r.remaining, r.reset_after if r.allowed else min(r.reset_after, left)
                )
                for r in result.results
            ),
        )

    def put(self, request: CounterRequest, result: CounterResult, now: float) -> None:
        if result.allowed or request.cost == 0:
            return
        until = now + max(r.reset_after for r in result.results if not r.allowed)
        key = (request.base, hash(request.limits))
        self._entries[key] = (until, request.cost, result)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)


STALL_S = 0.002
MAX_PACKED = 20_000


class RedisBackend:
    name = "redis"

    def __init__(
        self,
        options: RedisOptions,
        clock: Clock | None = None,
        local_cache: bool = False,
        client: Any = None,
    ) -> None:
        self.options = options
        # the lean connection for a standalone server; redis-py for Sentinel and Cluster
        self.fast: RespConnection | None = None
        if client is None and is_standalone(options.url):
            tls = tls_context(options) if options.url.lower().startswith("rediss") else None
            self.fast = RespConnection(endpoint_from_url(options.url, tls), options.timeout_s)
        self.client = client if client is not None or self.fast else make_client(options)
        self._clock = clock
        self._sha = ""
        # one batcher per Cluster node (just one otherwise), so each node's pipeline fills
        # while that node's previous one is out
        self._batchers: dict[str, Batcher[tuple[CounterRequest, ...], list[CounterResult]]] = {}
        self.cache = OverLimitCache() if local_cache else None
        self.cluster = isinstance(self.client, RedisCluster)
        self.description = describe(options.url)
        self._round_trips = metrics.BACKEND_ROUND_TRIPS.labels(self.name)
        self._latency = metrics.BACKEND_LATENCY.labels(self.name)
        self._batch_sizes = metrics.BACKEND_BATCH_SIZE.labels(self.name)
        self._commands = metrics.BACKEND_COMMANDS.labels(self.name)
        self.round_trips = 0
        self.commands = 0
        # id(script) -> (script, SHA, RESP bytes, when calendar spans in them move on)
        self._packs: dict[int, tuple[tuple[CounterRequest, ...], str, bytes, float | None]] = {}

    async def hit(self, requests: Sequence[CounterRequest]) -> list[CounterResult]:
        if self.cache is None and not self.cluster:  # the common case: one node, no cache
            try:  # a caller that gives up cancels the future: its unsent work is dropped
                return await self._batcher("").submit(tuple(requests))
            except BatchTimeout:
                raise self._timed_out() from None
        now = time.monotonic()
        results: list[CounterResult | None] = [
            self.cache.get(request, now) if self.cache is not None else None for request in requests
        ]
        # one batch item per call (and per Cluster node): the batcher counts callers, not
        # descriptors, when it decides whether there is company to wait for
        groups: dict[str, list[int]] = {}
        for index, request in enumerate(requests):
            if results[index] is None:
                groups.setdefault(self._node_of(request), []).append(index)
        if groups:
            futures = [
                self._batcher(node).submit(tuple(requests[i] for i in indexes))
                for node, indexes in groups.items()
            ]
            for indexes, answers in zip(groups.values(), await self._wait(futures), strict=True):
                for index, answer in zip(indexes, answers, strict=True):
                    results[index] = answer
        done = [result for result in results if result is not None]
        if self.cache is not None:
            metrics.LOCAL_CACHE_HITS.inc(len(requests) - sum(map(len, groups.values())))
            for request, result in zip(requests, done, strict=True):
                self.cache.put(request, result, now)
        await self._give_back_if_denied(requests, done)
        return done

    async def _give_back_if_denied(
        self, requests: Sequence[CounterRequest], results: Sequence[CounterResult]
    ) -> None:
        """When the call's descriptors went apart (Cluster slots, the local cache) and one was
        denied, what the others were charged is given back (their `if_fits` limits): the call
        charges nothing, as the one script does on a single node. Meanwhile a concurrent call
        may see those counts: it can be denied for them, never admitted past a limit."""
        pairs = list(zip(requests, results, strict=True))
        if all(result.allowed for request, result in pairs if request.binding):
            return
        back = []
        for request, result in pairs:
            if_fits = tuple(limit for limit in request.limits if limit.charge is Charge.IF_FITS)
            if result.allowed and request.cost > 0 and if_fits:
                back.append(CounterRequest(request.base, if_fits, request.cost))
        if back:
            await self.refund(back, self.now())

    async def _wait(
        self, futures: list[asyncio.Future[list[CounterResult]]]
    ) -> list[list[CounterResult]]:
        """The answers of one call's batches (one per Cluster node); each batch times out."""
        try:
            return [await future for future in futures]
        except BatchTimeout:
            raise self._timed_out() from None
        finally:
            for future in futures:  # a caller that gave up: its unsent work is dropped
                future.cancel()

    def _timed_out(self) -> BackendError:
        return BackendError(
            f"Redis did not answer within {self.options.timeout_s * 1000:.0f} ms", kind="timeout"
        )

    async def _send(
        self, groups: Sequence[tuple[CounterRequest, ...]]
    ) -> list[list[CounterResult]]:
        """One pipeline for the batch; the results, call by call.

        A call's descriptors go in one script call, except on a Cluster, where the keys of
        one script call must share a slot: there each descriptor gets its own."""
        with redis_failures_as_backend_errors():
            if not self.cluster:
                return await self._run_scripts(groups)
            scripts = [(request,) for group in groups for request in group]
            results = iter(
                answer for answers in await self._run_scripts(scripts) for answer in answers
            )
        return [[next(results) for _ in group] for group in groups]

    async def _run_scripts(
        self, scripts: Sequence[tuple[CounterRequest, ...]]
    ) -> list[list[CounterResult]]:
        now = self._script_now()
        if not self._sha:
            self._sha = await self._script_load()
        replies = await self._pipeline(scripts, now)
        missing = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        if missing:  # after a failover or SCRIPT FLUSH: load again and resend those
            self._sha = await self._script_load()
            again = await self._pipeline([scripts[i] for i in missing], now)
            for i, reply in zip(missing, again, strict=True):
                replies[i] = reply
        results = []
        for script, reply in zip(scripts, replies, strict=True):
            if isinstance(reply, Exception):  # an error reply, returned in place of an answer
                raise reply
            results.append(parse_reply(reply, script))
        return results

    async def _script_load(self) -> str:
        if self.fast is None:
            return str(await self.client.script_load(HIT_SCRIPT))
        (reply,) = await self.fast.execute([("SCRIPT", "LOAD", HIT_SCRIPT)])
        if isinstance(reply, Exception):
            raise reply
        return str(reply.decode() if isinstance(reply, bytes) else reply)

    def _command(self, script: tuple[CounterRequest, ...], now: str) -> tuple[Any, ...]:
        keys = [request.key(limit) for request in script for limit in request.limits]
        return ("EVALSHA", self._sha, len(keys), *keys, *script_args(script, now))

    def _packed(self, script: tuple[CounterRequest, ...], now: str) -> bytes:
        """The script call in RESP, remembered while the script's SHA stays the same.

        A call's counters come again and again, as one tuple, from the prepared-request memo,
        and packing is most of a round trip's Python cost. Keyed by identity, holding the
        tuple so that its id cannot be reused while the entry lives; a fake clock's `now` is
        never remembered, and a calendar window's span only until the next window starts.
        """
        if now:
            return pack([self._command(script, now)])
        entry = self._packs.get(id(script))
        if (
            entry is not None
            and entry[0] is script
            and entry[1] == self._sha
            and (entry[3] is None or time.time() < entry[3])
        ):
            return entry[2]
        packed = pack([self._command(script, now)])
        if len(self._packs) >= MAX_PACKED:
            self._packs.clear()
        self._packs[id(script)] = (script, self._sha, packed, calendar_renewal(script))
        return packed

    async def _pipeline(self, scripts: Sequence[tuple[CounterRequest, ...]], now: str) -> list[Any]:
        self.round_trips += 1
        self.commands += len(scripts)
        self._round_trips.inc()
        self._commands.inc(len(scripts))
        self._batch_sizes.observe(sum(map(len, scripts)))
        started = time.perf_counter()
        try:
            if self.fast is not None:
                packed = b"".join([self._packed(script, now) for script in scripts])
                return await self.fast.execute_packed(packed, len(scripts))
            pipe = self.client.pipeline(transaction=False)
            for script in scripts:
                pipe.execute_command(*self._command(script, now))
            try:
                return list(await pipe.execute(raise_on_error=False))
            except (AttributeError, TypeError) as exc:
                # redis-py 8.1 lets a write to a connection its peer closed (a failover) fail
                # this way instead of with ConnectionError: redis/redis-py#4287
                raise RedisConnectionError(f"Redis connection closed under a write: {exc}") from exc
        finally:
            self._latency.observe(time.perf_counter() - started)

    def _node_of(self, request: CounterRequest) -> str:
        """The Cluster node a request's slot lives on ("" when not a Cluster)."""
        if not self.cluster:
            return ""
        try:
            slot = self.client.keyslot(request.base)
            return str(self.client.nodes_manager.get_node_from_slot(slot).name)
        except NODE_LOOKUP_FAILURES:
            # slot cache empty (first call, topology reset) or mid-failover: any batch will
            # do; its pipeline finds the node (or fails as a BackendError)
            return ""

    def _batcher(self, node: str) -> Batcher[tuple[CounterRequest, ...], list[CounterResult]]:
        batcher = self._batchers.get(node)
        if batcher is None:
            # the lean connection pipelines any number of batches on one socket; redis-py
            # takes a pooled connection per batch, so fewer go out at once there
            in_flight = self.options.max_in_flight or (16 if self.fast is not None else 4)
            batcher = self._batchers[node] = Batcher(
                self._send,
                max_in_flight=in_flight,
                delay_s=self.options.batch_delay_s,
                # a batch out longer than this lets the next one go: well within the timeout
                stall_s=min(STALL_S, self.options.timeout_s / 4),
                timeout_s=self.options.timeout_s,
            )
        return batcher

    async def reset(self, requests: Sequence[CounterRequest]) -> int:
        keys = [request.key(limit) for request in requests for limit in request.limits]
        if not keys:
            return 0
        with redis_failures_as_backend_errors():
            # one DEL per key: keys of different descriptors may be on other slots
            if self.fast is not None:
                replies = await self.fast.execute([("DEL", key) for key in keys])
                for reply in replies:
                    if isinstance(reply, Exception):
                        raise reply
                return sum(int(n) for n in replies)
            pipe = self.client.pipeline(transaction=False)
            for key in keys:
                pipe.delete(key)
            return sum(int(n) for n in await pipe.execute())

    async def refund(self, requests: Sequence[CounterRequest], charged_at: float) -> None:
        """Gives each request's `cost` back to its counters (lua/refund.lua), one script call
        per descriptor (its keys share a slot)."""
        now = self._script_now()
        commands = []
        for request in requests:
            keys = [request.key(limit) for limit in request.limits]
            args: list[Any] = [now, request.cost, repr(charged_at)]
            for limit in request.limits:
                args += [
                    script_step(limit),
                    limit.requests_per_unit,
                    period_argument(limit, now),
                    limit.capacity,
                ]
            commands.append(("EVAL", REFUND_SCRIPT, len(keys), *keys, *args))
        if commands:
            await self._execute(commands)

    async def acquire(self, leases: Sequence[LeaseRequest], lease: str) -> list[LeaseResult]:
        """One script for every key; on a Cluster, whose keys live in different slots, one
        script per key, and what was taken is given back when any key had no room."""
        now = self._script_now()
        if not self.cluster or len(leases) <= 1:
            (reply,) = await self._execute([acquire_command(leases, lease, now)])
            return parse_acquire(reply)
        replies = await self._execute([acquire_command((one,), lease, now) for one in leases])
        results = [parse_acquire(reply)[0] for reply in replies]
        if not all(result.allowed for result in results):
            taken = [one.key for one, result in zip(leases, results, strict=True) if result.allowed]
            await self._execute([release_command((key,), lease, now) for key in taken])
        return results

    async def release(self, keys: Sequence[str], lease: str) -> int:
        now = self._script_now()
        groups = [keys] if not self.cluster else [(key,) for key in keys]
        replies = await self._execute([release_command(group, lease, now) for group in groups])
        return sum(int(reply) for reply in replies)

    def now(self) -> float:
        return self._clock.now() if self._clock is not None else time.time()

    def _script_now(self) -> str:
        """The scripts' `now` argument: a test clock's time, or '' for Redis's own clock."""
        return repr(self._clock.now()) if self._clock is not None else ""

    async def kv_get(self, key: str) -> str | None:
        (value,) = await self._execute([("GET", key)])
        return value.decode() if isinstance(value, bytes) else value

    async def kv_set(self, key: str, value: str, ttl_s: float, only_new: bool = False) -> bool:
        command: tuple[Any, ...] = ("SET", key, value, "PX", max(math.ceil(ttl_s * 1000), 1))
        (reply,) = await self._execute([(*command, "NX") if only_new else command])
        return reply is not None and reply is not False

    async def _execute(self, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
        """Plain commands (each on its key's node, on a Cluster); errors as BackendError."""
        with redis_failures_as_backend_errors():
            if self.fast is not None:
                replies = await self.fast.execute(commands)
                for reply in replies:
                    if isinstance(reply, Exception):
                        raise reply
                return replies
            return [await self.client.execute_command(*command) for command in commands]

    async def ping(self) -> None:
        with redis_failures_as_backend_errors():
            async with asyncio.timeout(max(self.options.timeout_s, 0.5)):
                if self.fast is not None:
                    (reply,) = await self.fast.execute([("PING",)])
                    if isinstance(reply, Exception):
                        raise reply
                else:
                    await self.client.ping()

    async def close(self) -> None:
        for batcher in self._batchers.values():
            await batcher.close()
        if self.fast is not None:
            await self.fast.close()
        else:
            await self.client.aclose()
