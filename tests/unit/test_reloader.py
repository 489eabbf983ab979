"""The config watch sees a Kubernetes ConfigMap update: a `..data` symlink swapped underneath."""

from __future__ import annotations

import os
from pathlib import Path

from ratelimitd.config import RateLimitConfig, load_config
from ratelimitd.config.reloader import ConfigReloader

RULES = "domain: cm\ndescriptors:\n  - key: ip\n    rate_limit: {{unit: minute, requests_per_unit: {n}}}\n"


def configmap_volume(root: Path, n: int) -> Path:
    """The layout kubelet writes: rules.yaml -> ..data/rules.yaml, ..data -> ..<timestamp>."""
    root.mkdir(exist_ok=True)
    version = root / f"..v{n}"
    version.mkdir()
    (version / "rules.yaml").write_text(RULES.format(n=n))
    swap = root / "..data_tmp"
    swap.symlink_to(version.name)
    os.replace(swap, root / "..data")  # the atomic swap
    if not (root / "rules.yaml").is_symlink():
        (root / "rules.yaml").symlink_to("..data/rules.yaml")
    return root


def limit_of(config: RateLimitConfig) -> int:
    (rule,) = config.domains["cm"].rules
    return rule.limits[0].requests_per_unit


def test_a_configmap_symlink_swap_is_reloaded(tmp_path: Path) -> None:
    volume = configmap_volume(tmp_path / "config", 10)
    applied: list[RateLimitConfig] = []
    reloader = ConfigReloader([volume], applied.append)
    assert limit_of(load_config([volume])) == 10
    assert not reloader.check()  # nothing changed
    configmap_volume(volume, 20)
    assert reloader.check()
    assert [limit_of(config) for config in applied] == [20]
    assert not reloader.check()


def test_a_bad_update_is_refused_and_the_next_good_one_applied(tmp_path: Path) -> None:
    volume = configmap_volume(tmp_path / "config", 10)
    applied: list[RateLimitConfig] = []
    reloader = ConfigReloader([volume], applied.append)
    version = volume / "..bad"
    version.mkdir()
    (version / "rules.yaml").write_text("domain: cm\ndescriptors: [oops\n")
    (volume / "..data_tmp").symlink_to(version.name)
    os.replace(volume / "..data_tmp", volume / "..data")
    assert not reloader.check()
    assert applied == []
    configmap_volume(volume, 30)
    assert reloader.check()
    assert [limit_of(config) for config in applied] == [30]
