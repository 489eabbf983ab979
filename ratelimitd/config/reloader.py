"""Hot reload: watches the config files and swaps in a new config when they change.

The watch polls the files' contents (a hash), which also catches Kubernetes ConfigMap
updates, where the files stay put and a `..data` symlink is swapped underneath them. A new
config is validated whole before it replaces the old one; a bad one is logged with every
`FILE: message` error and counted, and the old one keeps serving.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path

from ratelimitd import metrics
from ratelimitd.config.index import RateLimitConfig
from ratelimitd.config.loader import config_files, load_config
from ratelimitd.errors import ConfigError
from ratelimitd.logs import get_logger

log = get_logger(__name__)


def fingerprint(paths: Sequence[str | Path]) -> str:
    """A digest of the names and contents of the config files, unreadable ones included."""
    digest = hashlib.sha256()
    for file in config_files(paths):
        digest.update(str(file).encode() + b"\0")
        try:
            digest.update(file.read_bytes())
        except OSError as exc:
            digest.update(f"unreadable: {exc}".encode())
        digest.update(b"\0")
    return digest.hexdigest()


class ConfigReloader:
    def __init__(
        self,
        paths: Sequence[str | Path],
        apply: Callable[[RateLimitConfig], None],
        interval_s: float = 1.0,
    ) -> None:
        self.paths = list(paths)
        self.apply = apply
        self.interval_s = interval_s
        self._seen = fingerprint(self.paths)

    def reload(self, reason: str) -> bool:
        """Loads the files now; returns whether a new config was applied."""
        self._seen = fingerprint(self.paths)
        try:
            config = load_config(self.paths)
        except ConfigError as exc:
            metrics.CONFIG_LOADS.labels("error").inc()
            log.error(
                "config reload failed, keeping the old config", reason=reason, errors=exc.errors
            )
            return False
        metrics.CONFIG_LOADS.labels("success").inc()
        self.apply(config)
        log.info(
            "config reloaded",
            reason=reason,
            content_hash=config.content_hash,
            domains=sorted(config.domains),
            rules=sum(len(index.rules) for index in config.domains.values()),
        )
        return True

    def check(self) -> bool:
        """Reloads if the files changed since the last look."""
        if fingerprint(self.paths) == self._seen:
            return False
        return self.reload("files changed")

    async def watch(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await asyncio.to_thread(self.check)
            except Exception:  # the watch must outlive any one bad look
                log.exception("config watch failed")
