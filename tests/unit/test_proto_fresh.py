"""The committed generated code matches proto/ratelimitd/v1/ratelimitd.proto."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def load_generator():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("gen_proto", ROOT / "scripts" / "gen_proto.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["gen_proto"] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("package", ["ratelimitd._proto", "ratelimitd_client._proto"])
def test_generated_code_is_fresh(tmp_path: Path, package: str) -> None:
    generator = load_generator()
    committed = generator.TARGETS[package]
    fresh = tmp_path / "out"
    generator.generate(package, fresh)
    files = sorted(p.relative_to(fresh) for p in fresh.rglob("*") if p.is_file())
    assert files == sorted(
        p.relative_to(committed)
        for p in committed.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    )
    for name in files:
        assert (committed / name).read_text() == (fresh / name).read_text(), (
            f"{committed / name} is stale: run python scripts/gen_proto.py"
        )
