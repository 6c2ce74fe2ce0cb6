"""Part 13 aggregate maths on injected samples (uplink.opcua.history.compute), no server."""

from __future__ import annotations

import pytest
from asyncua.ua.status_codes import StatusCodes

from edged.model import Sample, Status
from uplink.opcua.history import (
    AVERAGE,
    CALCULATED,
    COUNT,
    MAXIMUM,
    MINIMUM,
    PARTIAL,
    Acc,
    AggConfig,
    compute,
    intervals,
)

S = 1_000_000_000


def acc(*values: tuple[int, object, int], partial: bool = False) -> Acc:
    a = Acc(0, 10 * S, partial)
    for t, v, st in values:
        a.add(Sample("t", t * S, v, st))  # type: ignore[arg-type]
    return a


def test_all_good() -> None:
    a = acc((0, 3.0, Status.GOOD), (2, 1.0, Status.GOOD), (5, 8.0, Status.GOOD))
    assert compute(AVERAGE, a) == (pytest.approx(4.0), StatusCodes.Good | CALCULATED)
    assert compute(MINIMUM, a) == (1.0, StatusCodes.Good | CALCULATED)  # not at StartTime
    assert compute(MAXIMUM, a) == (8.0, StatusCodes.Good | CALCULATED)
    assert compute(COUNT, a) == (3.0, StatusCodes.Good | CALCULATED)
    first = acc((0, 1.0, Status.GOOD), (4, 2.0, Status.GOOD))
    assert compute(MINIMUM, first) == (1.0, StatusCodes.Good)  # at StartTime: a raw value


def test_bad_samples_are_left_out_and_make_the_interval_uncertain() -> None:
    a = acc((0, 3.0, Status.GOOD), (1, 99.0, Status.BAD_COMMUNICATION_ERROR), (2, 5.0, Status.GOOD))
    assert compute(AVERAGE, a) == (4.0, StatusCodes.UncertainDataSubNormal | CALCULATED)
    assert compute(MAXIMUM, a) == (5.0, StatusCodes.UncertainDataSubNormal | CALCULATED)
    assert compute(COUNT, a) == (2.0, StatusCodes.UncertainDataSubNormal | CALCULATED)
    # with PercentDataGood 50 two Good of three are enough for Good
    assert compute(AVERAGE, a, AggConfig(True, 100, 50))[1] == StatusCodes.Good | CALCULATED
    only_bad = acc((1, None, Status.BAD))
    assert compute(AVERAGE, only_bad) == (None, StatusCodes.BadNoData)
    assert compute(COUNT, only_bad) == (None, StatusCodes.Bad | CALCULATED)


def test_uncertain_beyond_the_good_extreme() -> None:
    a = acc((0, 3.0, Status.GOOD), (1, 9.0, Status.UNCERTAIN), (2, 5.0, Status.GOOD))
    assert compute(MAXIMUM, a)[1] == StatusCodes.UncertainDataSubNormal | CALCULATED
    assert compute(MINIMUM, a)[1] == StatusCodes.Good  # 3.0 at StartTime; 9.0 is not below it
    assert compute(AVERAGE, a) == (4.0, StatusCodes.UncertainDataSubNormal | CALCULATED)
    # Uncertain counted with Good (TreatUncertainAsBad false): the ratio is all good
    assert compute(AVERAGE, a, AggConfig(False, 100, 100)) == (4.0, StatusCodes.Good | CALCULATED)


def test_empty_partial_and_strings() -> None:
    assert compute(AVERAGE, acc()) == (None, StatusCodes.BadNoData)
    assert compute(MINIMUM, acc()) == (None, StatusCodes.BadNoData)
    assert compute(COUNT, acc()) == (0.0, StatusCodes.Good | CALCULATED)
    assert compute(AVERAGE, acc((1, 2.0, Status.GOOD), partial=True)) == (2.0, StatusCodes.Good | CALCULATED | PARTIAL)
    assert compute(AVERAGE, acc((1, "on", Status.GOOD)))[1] == StatusCodes.BadAggregateInvalidInputs


def test_intervals() -> None:
    assert intervals(0, 10, 0) == [(0, 10, False)]
    assert intervals(0, 10, 5) == [(0, 5, False), (5, 10, False)]
    assert intervals(0, 11, 5) == [(0, 5, False), (5, 10, False), (10, 11, True)]
