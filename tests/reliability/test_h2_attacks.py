"""HTTP/2 attacks against a real `ratelimitd serve` process, on both gRPC servers.

Each attack of `h2_attacks.py` runs in its own process (niced, so that the attacker cannot
starve the server on a 2-core machine) against a service on the memory backend, while a
healthy client on its own connection calls ShouldRateLimit every few milliseconds. Checked
for every attack, on `RATELIMITD_GRPC_SERVER=native` and `grpcio`:

- the process is alive afterwards, answers a call, and logged no traceback;
- the healthy client saw no error, and its p99 stayed under `HEALTHY_P99_MAX_S`;
- the server's RSS grew by at most `RSS_GROWTH_MAX` (1 s after the attack) and at most
  `RSS_PEAK_MAX` at its peak (sampled during the attack);
- the server defended itself as `EXPECTED` says: closed the offending connections (GOAWAY
  and/or EOF), or turned down the offending streams (RST_STREAM, or an answer with an
  error status), or just kept its memory bounded.

The short cases (2 s per attack) run in every CI run; the same attacks for 8 s are `slow`.
Figures go to the `figures` fixture (see conftest.py): `RATELIMITD_RELIABILITY_FIGURES=f.jsonl`.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Self

import grpc
import pytest
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc

from tests.reliability.conftest import Record
from tests.reliability.h2_attacks import DESCRIPTOR_KEY, DOMAIN, AttackResult, error_name
from tests.reliability.harness import percentile, rl_request, rss_bytes
from tests.servers.service import ServiceProcess

ROOT = Path(__file__).resolve().parents[2]
MIB = 1024 * 1024

SERVERS = ("native", "grpcio")
SHORT_S = 2.0  # every CI run
LONG_S = 8.0  # -m slow
# How long a connection may take to send its preface or finish a header block before the
# server must close it: the long slowloris case runs this long plus a margin and expects it.
IDLE_CLOSE_WITHIN_S = 10.0
SLOWLORIS_LONG_S = IDLE_CLOSE_WITHIN_S + 2.0

# The healthy client: one call every HEALTHY_INTERVAL_S on its own connection.
HEALTHY_INTERVAL_S = 0.005
HEALTHY_TIMEOUT_S = 2.0
HEALTHY_P99_MAX_S = 0.050  # an attacker on another connection may not make it slow...
# ...and may not make it fail: no error at all is allowed.

# Memory: a server holding an attacker to its limits keeps, per connection, a few MiB at most
# (receive windows, one header list, one HPACK table, a bounded write buffer). 64 MiB of growth
# that stays (1 s after the attack) is far more than that, and far less than what an attack
# that works takes (the unended bodies alone are 512 MiB); the peak may be twice as high (a
# closed connection's buffers are freed after it).
RSS_GROWTH_MAX = 64 * MIB  # after - before
RSS_PEAK_MAX = 128 * MIB  # peak - before
RSS_SAMPLE_S = 0.02
AFTER_S = 1.0  # "after" is measured this long after the attacker stopped
RECOVERY_S = 10.0  # within this long after that, the server must answer a call again
RESTART_ABOVE = 512 * MIB  # a server left this large by an attack is restarted before the next

ATTACKER_NICE = 10  # the attacker's priority below the server's and the healthy client's
ATTACKER_GRACE_S = 30.0  # how long past its duration an attacker may take before it is killed
REJECTED_FRACTION = 0.9  # REJECT: at least this share of the offending streams turned down
# grpc.aio logs a traceback of its own whenever an answer cannot be sent because the client
# has gone (or reset the stream): noise of grpcio's, not a fault of the service.
GRPCIO_GONE_CLIENT = "grpc._cython.cygrpc.ExecuteBatchError:"

RULES = f"""
domain: {DOMAIN}
descriptors:
  - key: {DESCRIPTOR_KEY}
    rate_limit: {{unit: second, requests_per_unit: 1000000}}
"""
REQUEST = rl_request(DOMAIN, [(DESCRIPTOR_KEY, "198.51.100.7")])


class Defense(Enum):
    """What the server must do about the offending connection(s)."""

    CLOSE = "the server closes every attacking connection (GOAWAY and/or EOF)"
    REJECT = (
        "the server turns down the offending streams (RST_STREAM, or an error status): "
        f"{REJECTED_FRACTION:.0%} of them, or closes the connection"
    )
    SHED = "past a budget, the server turns down new streams (or closes the connection)"
    BOUNDED = "nothing asked of the connection: memory bounded, healthy client unharmed"


@dataclass(frozen=True)
class Expected:
    defense: Defense
    why: str
    long_defense: Defense | None = None  # in the slow (8 s) run, when it differs
    long_s: float = LONG_S
    rss_growth_max: int = RSS_GROWTH_MAX
    rss_peak_max: int = RSS_PEAK_MAX


# The expected defense per attack (the attacks are described in h2_attacks.py).
EXPECTED: dict[str, Expected] = {
    "rapid_reset": Expected(
        Defense.CLOSE, "CVE-2023-44487: GOAWAY (ENHANCE_YOUR_CALM) after too many resets"
    ),
    "empty_continuation": Expected(
        Defense.CLOSE, "a header block that never ends: GOAWAY when the empty frames pile up"
    ),
    "empty_data": Expected(Defense.CLOSE, "CVE-2019-9518: GOAWAY after too many empty frames"),
    "settings_flood": Expected(
        Defense.CLOSE, "CVE-2019-9515: GOAWAY when the SETTINGS (or their ACKs) pile up"
    ),
    "ping_flood": Expected(
        Defense.CLOSE, "CVE-2019-9512: GOAWAY when the PINGs (or their ACKs) pile up"
    ),
    "empty_header_names": Expected(
        Defense.REJECT, "CVE-2019-9516: an empty field name is malformed; or a flood"
    ),
    "window_pingpong": Expected(
        Defense.CLOSE, "each SETTINGS costs O(open streams): GOAWAY when they pile up"
    ),
    "large_decoded_headers": Expected(
        Defense.SHED, "decoded headers held by open streams count against a budget"
    ),
    "idle_cached_blocks": Expected(
        Defense.BOUNDED, "what a connection remembers of its header blocks is bounded"
    ),
    "unended_bodies": Expected(
        Defense.BOUNDED, "request bodies buffered are bounded by the windows given out"
    ),
    "reflection_zero_window": Expected(
        Defense.BOUNDED, "answers waiting for window are bounded (then the stream is refused)"
    ),
    "slowloris": Expected(
        Defense.BOUNDED,
        f"closed after the handshake/idle timeout (checked in the long run: within {IDLE_CLOSE_WITHIN_S:g} s)",
        long_defense=Defense.CLOSE,
        long_s=SLOWLORIS_LONG_S,
    ),
    "slow_reads_window_1": Expected(
        Defense.BOUNDED, "answers stuck behind a 1-byte window are bounded per connection"
    ),
    "hpack_bomb": Expected(
        Defense.REJECT, "decoding stops at the header list limit: the block is turned down"
    ),
    "huge_header_block": Expected(
        Defense.REJECT, "a header block past the limit: the stream or connection is ended"
    ),
}


# Where grpcio's own defenses fall short (measured; docs/reliability.md has the table). On
# grpcio these attacks are held to survival only: the process lives, answers a call afterwards
# and logs no traceback. The rest is grpcio's to fix, and recorded in the figures; the native
# server, the default, is held to everything.
GRPCIO_SHORTFALLS: dict[str, str] = {
    "rapid_reset": "the healthy client's calls are CANCELLED, p99 in the hundreds of ms",
    "settings_flood": "the connection stays open",
    "ping_flood": "the connection stays open",
    "window_pingpong": "the connection stays open",
    "large_decoded_headers": "the healthy client sees CANCELLED now and then",
    "idle_cached_blocks": "the healthy client's p99 reaches 50 ms",
    "unended_bodies": "512 MiB of bodies are buffered; p99 near 1 s",
    "slow_reads_window_1": "the healthy client sees CANCELLED now and then; RSS +72 MiB in 8 s",
    "slowloris": "no connection dripping its preface or a frame is closed within 12 s",
    "hpack_bomb": "RSS grows 90 MiB in 8 s",
}


# -- the service ------------------------------------------------------------------------------


def call_once(target: str, timeout: float = 5.0) -> str | None:
    """One ShouldRateLimit on a new channel: None when answered, else what went wrong."""
    with grpc.insecure_channel(target) as channel:
        stub = rls_pb2_grpc.RateLimitServiceStub(channel)
        try:
            reply = stub.ShouldRateLimit(REQUEST, timeout=timeout)
        except grpc.RpcError as exc:
            return f"{exc.code()}: {exc.details()}"
    return None if reply.overall_code == rls_pb2.RateLimitResponse.OK else str(reply)


def answered_again(target: str) -> str | None:
    """Whether the server answers a call soon after the attack (grpcio can take a few seconds
    to work through a rapid reset's backlog): None when it did, else what went wrong last."""
    deadline = time.monotonic() + RECOVERY_S
    while (failure := call_once(target)) is not None and time.monotonic() < deadline:
        time.sleep(0.2)
    return failure


class Server:
    """One `ratelimitd serve` of a kind, started again whenever it is found dead, not
    answering, or left bloated by an earlier attack."""

    def __init__(self, kind: str, rules: Path) -> None:
        self.kind = kind
        self.rules = rules
        self.service: ServiceProcess | None = None
        self.restarts = 0

    def ready(self) -> ServiceProcess:
        service = self.service
        if service is None or not self._fit(service):
            if service is not None:
                self.restarts += 1
            self.stop()
            service = ServiceProcess(
                self.rules,
                {
                    "RATELIMITD_GRPC_SERVER": self.kind,
                    "RATELIMITD_LOG_LEVEL": "warning",
                    "RATELIMITD_REDIS_URL": None,  # the memory backend
                },
            ).start()
            self.service = service
        return service

    @staticmethod
    def _fit(service: ServiceProcess) -> bool:
        process = service.process
        if process is None or process.poll() is not None:
            return False
        try:
            if rss_bytes(process.pid) > RESTART_ABOVE:
                return False
        except (OSError, RuntimeError):
            return False
        return call_once(service.target, timeout=2.0) is None

    def stop(self) -> None:
        if self.service is not None:
            self.service.__exit__(None, None, None)
            self.service = None


@pytest.fixture(scope="module", params=SERVERS)
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    rules = tmp_path_factory.mktemp("h2-attacks") / "rules.yaml"
    rules.write_text(RULES, encoding="utf-8")
    running = Server(request.param, rules)
    try:
        yield running
    finally:
        running.stop()


# -- what runs beside the attack --------------------------------------------------------------


class Background:
    """`step()` in a thread every `interval_s`, from `with` to `stop()` (or the end of `with`)."""

    interval_s = 0.0

    def __init__(self, name: str) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def step(self) -> None:
        raise NotImplementedError

    def _run(self) -> None:
        while not self._stop.is_set():
            self.step()
            self._stop.wait(self.interval_s)


class HealthyClient(Background):
    """A sync grpc channel of its own, calling ShouldRateLimit every `HEALTHY_INTERVAL_S`."""

    interval_s = HEALTHY_INTERVAL_S

    def __init__(self, target: str) -> None:
        super().__init__("healthy-client")
        self.channel = grpc.insecure_channel(target)
        self.stub = rls_pb2_grpc.RateLimitServiceStub(self.channel)
        self.latencies: list[float] = []
        self.errors: Counter[str] = Counter()

    def __enter__(self) -> Self:
        self.stub.ShouldRateLimit(REQUEST, timeout=5.0)  # connected before the attack starts
        return super().__enter__()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
        self.channel.close()

    def step(self) -> None:
        started = time.perf_counter()
        try:
            self.stub.ShouldRateLimit(REQUEST, timeout=HEALTHY_TIMEOUT_S)
        except grpc.RpcError as exc:
            code = exc.code()
            self.errors[code.name if code is not None else "UNKNOWN"] += 1
        self.latencies.append(time.perf_counter() - started)


class RssSampler(Background):
    """The largest RSS of `pid` seen, sampled every `RSS_SAMPLE_S`."""

    interval_s = RSS_SAMPLE_S

    def __init__(self, pid: int) -> None:
        super().__init__("rss-sampler")
        self.pid = pid
        self.peak = 0

    def step(self) -> None:
        with contextlib.suppress(OSError, RuntimeError):  # the process may be gone
            self.peak = max(self.peak, rss_bytes(self.pid))


def run_attacker(attack: str, port: int, duration: float) -> AttackResult:
    """The attack in a niced child process (killed if it overstays); its result."""
    command = [
        sys.executable, "-m", "tests.reliability.h2_attacks", attack, "127.0.0.1", str(port),
        "--duration", str(duration), "--nice", str(ATTACKER_NICE),
    ]  # fmt: skip
    try:
        done = subprocess.run(
            command,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=duration + ATTACKER_GRACE_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return AttackResult(attack=attack, error=f"the attacker ran past {duration} s + grace")
    lines = done.stdout.strip().splitlines()
    if not lines:
        return AttackResult(attack=attack, error=f"no result: {done.stderr[-2000:]}")
    return AttackResult.from_json(lines[-1])


# -- the test ---------------------------------------------------------------------------------


@dataclass
class Outcome:
    """What was measured around one attack."""

    server: str
    attack: AttackResult
    latencies: list[float]
    errors: dict[str, int]
    rss_before: int
    rss_peak: int
    rss_after: int
    alive: bool
    final_call: str | None  # None: answered
    tracebacks: int
    restarts: int
    notes: list[str] = field(default_factory=list)

    def figures(self, expected: Defense) -> dict[str, object]:
        ms = [latency * 1000 for latency in self.latencies]
        return {
            "attack": self.attack.attack,
            "server": self.server,
            "expected": expected.name,
            "duration_s": self.attack.duration_s,
            "healthy_calls": len(ms),
            "healthy_p50_ms": round(percentile(ms, 0.5), 1),
            "healthy_p99_ms": round(percentile(ms, 0.99), 1),
            "healthy_max_ms": round(max(ms, default=0.0), 1),
            "healthy_errors": self.errors,
            "rss_before_mib": round(self.rss_before / MIB, 1),
            "rss_peak_mib": round(self.rss_peak / MIB, 1),
            "rss_after_mib": round(self.rss_after / MIB, 1),
            "closed": self.attack.closed,
            "closed_connections": f"{self.attack.closed_connections}/{self.attack.connections}",
            "goaway_code": error_name(self.attack.goaway_code),
            "goaway_codes": self.attack.goaway_codes,
            "first_close_s": self.attack.first_close_s,
            "rst_codes": self.attack.rst_codes,
            "statuses": self.attack.statuses,
            "refused": self.attack.refused,
            "streams_opened": self.attack.streams_opened,
            "frames_sent": self.attack.frames_sent,
            "bytes_sent": self.attack.bytes_sent,
            "alive": self.alive,
            "final_call": self.final_call or "answered",
            "tracebacks": self.tracebacks,
            "server_restarts": self.restarts,
            "attacker_error": self.attack.error,
        }


def defended(result: AttackResult, defense: Defense) -> str | None:
    """Why the server's answer to the attack falls short of `defense`; None when it does not."""
    refused, opened = result.refused, result.streams_opened
    if defense is Defense.CLOSE and not result.closed:
        return (
            f"{result.connections - result.closed_connections} of {result.connections} "
            "attacking connections were still open"
        )
    if defense is Defense.REJECT and not result.closed and refused < REJECTED_FRACTION * opened:
        return f"only {refused} of {opened} offending streams turned down, connection open"
    if defense is Defense.SHED and not result.closed and not refused:
        return f"all {opened} streams were taken, none turned down"
    return None


def survival_failures(outcome: Outcome) -> list[str]:
    """What the outcome misses of the least asked of any server: to live on unharmed."""
    found = []
    if outcome.attack.error:
        found.append(f"the attack failed: {outcome.attack.error}")
    if not outcome.alive:
        found.append("the server process died")
    elif outcome.final_call is not None:
        found.append(f"the server did not answer a call afterwards: {outcome.final_call}")
    if outcome.tracebacks:
        found.append(f"{outcome.tracebacks} traceback(s) in the server's log")
    return found


def failures(outcome: Outcome, expected: Expected, defense: Defense) -> list[str]:
    """Every expectation the outcome misses."""
    found = survival_failures(outcome)
    if outcome.errors:
        found.append(f"the healthy client saw errors: {outcome.errors}")
    p99 = percentile(outcome.latencies, 0.99)
    if p99 >= HEALTHY_P99_MAX_S:
        found.append(f"healthy p99 {p99 * 1000:.1f} ms >= {HEALTHY_P99_MAX_S * 1000:g} ms")
    growth = outcome.rss_after - outcome.rss_before
    if growth > expected.rss_growth_max:
        found.append(f"RSS grew {growth / MIB:.0f} MiB > {expected.rss_growth_max / MIB:g} MiB")
    peak = outcome.rss_peak - outcome.rss_before
    if peak > expected.rss_peak_max:
        found.append(f"RSS peaked {peak / MIB:.0f} MiB up > {expected.rss_peak_max / MIB:g} MiB")
    shortfall = defended(outcome.attack, defense)
    if shortfall:
        found.append(f"expected: {defense.value}; but {shortfall}")
    return found


def tracebacks(log: str) -> int:
    """Tracebacks in a service log, but for grpc.aio's about clients that have gone."""
    return log.count("Traceback") - log.count(GRPCIO_GONE_CLIENT)


def measure(server: Server, attack: str, duration: float) -> Outcome:
    """Runs the attack beside a healthy client and the RSS sampler; what came of it."""
    service = server.ready()
    assert service.process is not None
    pid = service.process.pid
    log_before = tracebacks(Path(service._log.name).read_text(errors="replace"))
    rss_before = rss_bytes(pid)
    with RssSampler(pid) as sampler:
        with HealthyClient(service.target) as healthy:
            result = run_attacker(attack, service.grpc_port, duration)
            stopped = time.monotonic()
            healthy.stop()
        time.sleep(max(0.0, stopped + AFTER_S - time.monotonic()))
        alive = service.process.poll() is None
        rss_after = rss_bytes(pid) if alive else 0
    log = Path(service._log.name).read_text(errors="replace")
    return Outcome(
        server=server.kind,
        attack=result,
        latencies=healthy.latencies,
        errors=dict(healthy.errors),
        rss_before=rss_before,
        rss_peak=max(sampler.peak, rss_before, rss_after),
        rss_after=rss_after,
        alive=alive,
        final_call=answered_again(service.target) if alive else "the process is gone",
        tracebacks=tracebacks(log) - log_before,
        restarts=server.restarts,
    )


@pytest.mark.parametrize(
    "long", [pytest.param(False, id="short"), pytest.param(True, id="long", marks=pytest.mark.slow)]
)
@pytest.mark.parametrize("attack", list(EXPECTED))
def test_h2_attack(server: Server, attack: str, long: bool, figures: Record) -> None:
    """The server survives the attack, the healthy client does not notice, memory stays
    bounded, and the server defends itself as `EXPECTED` says."""
    expected = EXPECTED[attack]
    duration = expected.long_s if long else SHORT_S
    defense = (expected.long_defense or expected.defense) if long else expected.defense
    outcome = measure(server, attack, duration)
    missed = failures(outcome, expected, defense)
    figures(**outcome.figures(defense), failures=missed)
    if server.kind == "grpcio" and attack in GRPCIO_SHORTFALLS:
        missed = survival_failures(outcome)
    assert not missed, f"{attack} on {server.kind}:\n- " + "\n- ".join(missed)
