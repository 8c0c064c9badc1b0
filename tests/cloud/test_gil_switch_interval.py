"""The coordinator sets its process's GIL switch interval when it starts (setting ``gil_switch_interval_s``)."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest
from coordinator_harness import make_coordinator
from pydantic import ValidationError

from cloud.settings import CloudSettings


@pytest.fixture
def restored_interval() -> Iterator[float]:
    before = sys.getswitchinterval()
    yield before
    sys.setswitchinterval(before)


def test_start_sets_the_configured_interval(mosquitto, tmp_path, restored_interval) -> None:
    sys.setswitchinterval(0.005)
    coordinator = make_coordinator(mosquitto.url, tmp_path / "a", gil_switch_interval_s=0.002)
    try:
        assert sys.getswitchinterval() == pytest.approx(0.002)
    finally:
        coordinator.close()


def test_none_leaves_the_interval_alone(mosquitto, tmp_path, restored_interval) -> None:
    sys.setswitchinterval(0.004)
    coordinator = make_coordinator(mosquitto.url, tmp_path / "b", gil_switch_interval_s=None)
    try:
        assert sys.getswitchinterval() == pytest.approx(0.004)
    finally:
        coordinator.close()


def test_the_default_leaves_pythons_and_bad_values_are_refused() -> None:
    assert CloudSettings().gil_switch_interval_s is None
    for bad in (0, -1, 2.0):
        with pytest.raises(ValidationError, match="gil_switch_interval_s"):
            CloudSettings(gil_switch_interval_s=bad)
