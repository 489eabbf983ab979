"""The service's garbage-collection policy (ratelimitd.app.tune_gc)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from ratelimitd.app import FULL_COLLECTION_EVERY, tune_gc


@pytest.fixture
def restored_gc() -> Iterator[None]:
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


@pytest.mark.usefixtures("restored_gc")
def test_startup_objects_are_frozen_and_full_collections_are_rare() -> None:
    young, middle, _ = gc.get_threshold()
    gc.unfreeze()
    tune_gc()
    assert gc.get_freeze_count() > 1000  # the modules, at least
    assert gc.get_threshold() == (young, middle, FULL_COLLECTION_EVERY)
