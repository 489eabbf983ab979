"""Logging of the failure mode: the first failure at once, then at most one line per interval."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from ratelimitd_client._core import Failure

logger = logging.getLogger("ratelimitd_client")


class FailureLog:
    """Shared by both clients. When ratelimitd is down every check fails; one warning per
    `interval` seconds says how many checks the failure mode decided, and one info line says
    when ratelimitd answers again. Each failure is also logged at DEBUG."""

    def __init__(
        self,
        target: str,
        interval: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        log: logging.Logger = logger,
    ) -> None:
        self.target = target
        self.interval = interval
        self._clock = clock
        self._log = log
        self._lock = threading.Lock()
        self._failing = 0  # checks decided by the failure mode since ratelimitd last answered
        self._unreported = 0
        self._last_warning: float | None = None

    def failed(self, failure: Failure) -> None:
        with self._lock:
            self._failing += 1
            self._unreported += 1
            now = self._clock()
            due = self._last_warning is None or now - self._last_warning >= self.interval
            count = self._unreported
            if due:
                self._last_warning = now
                self._unreported = 0
        self._log.debug("ratelimitd check failed at %s: %s", self.target, failure.detail)
        if due:
            self._warn(failure, count)

    def _warn(self, failure: Failure, count: int) -> None:
        verdict = "allowed" if failure.mode == "allow" else "denied"
        self._log.warning(
            "ratelimitd at %s gave no decision (%s: %s); failure_mode=%s %s %d check(s)",
            self.target,
            failure.reason,
            failure.detail,
            failure.mode,
            verdict,
            count,
            extra={"ratelimitd_failure": failure, "ratelimitd_checks": count},
        )

    def answered(self) -> None:
        if not self._failing:  # the common case: no lock
            return
        with self._lock:
            failing, self._failing = self._failing, 0
            self._unreported = 0
            self._last_warning = None
        if failing:
            self._log.info(
                "ratelimitd at %s answers again after %d check(s) decided by the failure mode",
                self.target,
                failing,
            )
