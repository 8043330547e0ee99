"""The recorder process's start-up: its garbage collector tuning."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from services.recorder.__main__ import GC_GEN0_THRESHOLD, tune_gc


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
    assert gc.get_threshold() == (GC_GEN0_THRESHOLD, 10, 10)
    assert gc.get_freeze_count() > 0


@pytest.mark.usefixtures("restored_gc")
def test_tune_gc_never_lowers_a_higher_threshold() -> None:
    gc.set_threshold(GC_GEN0_THRESHOLD * 2, 5, 5)
    tune_gc()
    assert gc.get_threshold() == (GC_GEN0_THRESHOLD * 2, 5, 5)
