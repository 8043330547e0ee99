"""A service process's start-up tunes its garbage collector: rarer collections, start-up objects frozen."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from swarm.service import GC_THRESHOLDS, tune_gc


@pytest.fixture
def restored_gc() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


@pytest.mark.usefixtures("restored_gc")
def test_tune_gc_collects_less_often_and_leaves_start_up_objects_alone() -> None:
    gc.set_threshold(700, 10, 10)
    tune_gc()
    assert gc.get_threshold() == GC_THRESHOLDS and GC_THRESHOLDS[0] > 700
    assert gc.get_freeze_count() > 0  # what was loaded before is out of every later collection
