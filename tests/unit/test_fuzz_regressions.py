"""Every crash input bench/fuzz.py ever found (tests/data/fuzz_crashes/<target>/), replayed through
its target: each must now be refused with the target's accepted errors or handled. The seeds of
every target run too, so a target that no longer imports or runs fails here, not in a fuzzing run."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CRASHES = ROOT / "tests" / "data" / "fuzz_crashes"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.fuzz_targets import TARGETS, load, run_one, seeds  # noqa: E402

# Crashes found but not fixed yet (each with why); a fixed one is removed from here, so that it fails
# again if it comes back. Empty: every crash found so far is fixed.
OPEN: dict[str, str] = {}


def _cases() -> list[object]:
    cases: list[object] = []
    for target in TARGETS:
        for f in sorted((CRASHES / target).glob("crash-*")):
            key = f"{target}/{f.name}"
            marks = [pytest.mark.xfail(reason=OPEN[key], strict=False)] if key in OPEN else []
            cases.append(pytest.param(target, f, id=key, marks=marks))
    return cases


def test_every_crash_is_filed_under_a_known_target() -> None:
    assert {d.name for d in CRASHES.iterdir() if d.is_dir()} <= set(TARGETS)


@pytest.mark.parametrize(("target", "path"), _cases())
def test_crash_input_no_longer_crashes(target: str, path: Path) -> None:
    run_one(load(target), path.read_bytes())


@pytest.mark.parametrize("target", TARGETS)
def test_seeds_pass_their_target(target: str) -> None:
    module = load(target)
    inputs = seeds(module)
    assert inputs, f"{target} has no seeds"
    for data in inputs:
        run_one(module, data)
