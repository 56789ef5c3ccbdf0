"""Pins through ``fit``: every combination of the pinnable run shape finishes and is honoured.

A pin is a promise that the meta-learners leave a field alone, and each meta-learner has to keep
it while it makes its other choices: the run length (budget or not), early stopping, which weights
come back, the policy search's proxies (which train with their own schedule). Bugs live where two
of them meet (a pinned constant schedule once crashed the search's proxies, which validate once and
need keep 'last'), so the test walks the pin space in a covering design: every pair of factor
values occurs in at least one run (checked below), in 9 runs instead of the 96 of the full product.
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import visiondojo
from visiondojo.regularize import choose as regularize_choose
from visiondojo.regularize import search

from conftest import TinyNet, make_problem

FACTORS: dict[str, tuple[Any, ...]] = {
    "schedule": ("cosine", "constant", "plateau"),
    "keep": ("last", "best"),
    "patience": (None, 2),
    "epochs": (None, 3),
    "budget": (None, 8),
    "search": (False, True),
}
"""None: not pinned (the meta-learners choose). A budget of 8 s leaves a second or two for training
after the 6 s the loop keeps for the final evaluation and report. ``search`` False skips the policy
search, by a saved policy (``regularization=RegularizationParams()``) or by pinning the augmentation."""

DESIGN: list[tuple[Any, ...]] = [
    # schedule,  keep,    patience, epochs, budget, search
    ("cosine",   "last",  2,        None,   8,      False),
    ("cosine",   "best",  None,     None,   None,   True),
    ("cosine",   "best",  2,        3,      8,      True),
    ("constant", "last",  2,        None,   None,   False),
    ("constant", "best",  None,     3,      None,   True),
    ("constant", "best",  None,     3,      8,      False),
    ("plateau",  "last",  None,     3,      8,      True),
    ("plateau",  "best",  2,        None,   None,   False),
    ("cosine",   "best",  None,     None,   8,      True),   # the budget alone ends this one
]


@dataclass(frozen=True)
class Case:
    schedule: str
    keep: str
    patience: int | None
    epochs: int | None
    budget: float | None
    search: bool
    policy_form: int
    """Which way a skipped search is skipped: 0 a saved policy, 1 a pinned augmentation."""

    @property
    def pins(self) -> dict[str, Any]:
        pins: dict[str, Any] = {"optimization.schedule": self.schedule, "optimization.keep": self.keep}
        if self.patience is not None:
            pins["optimization.early_stopping_patience"] = self.patience
        if self.epochs is not None:
            pins["optimization.epochs"] = self.epochs
        if not self.search and self.policy_form == 1:
            pins["regularization.augment"] = []
        return pins

    @property
    def policy(self) -> visiondojo.RegularizationParams | None:
        return visiondojo.RegularizationParams() if not self.search and self.policy_form == 0 else None

    def __str__(self) -> str:
        policy = "search" if self.search else ("saved-policy", "augment-pinned")[self.policy_form]
        return (f"{self.schedule}-keep_{self.keep}-patience_{self.patience}-epochs_{self.epochs}-"
                f"budget_{self.budget}-{policy}")


CASES = [Case(*row, policy_form=i % 2) for i, row in enumerate(DESIGN)]


def test_the_design_covers_every_pair_of_factor_values() -> None:
    names = list(FACTORS)
    assert all(len(row) == len(names) for row in DESIGN)
    for (i, a), (j, b) in itertools.combinations(enumerate(names), 2):
        seen = {(row[i], row[j]) for row in DESIGN}
        missing = set(itertools.product(FACTORS[a], FACTORS[b])) - seen
        assert not missing, f"no run pins {a} and {b} to {sorted(missing, key=str)}"
    skipped = {case.policy_form for case in CASES if not case.search}
    assert skipped == {0, 1}  # both ways of skipping the search occur


@pytest.fixture
def searchable(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let the policy search train its proxies on these few images, so the pins reach them too.

    It refuses subsets under 256 images and, without a budget, spends the time of 10 epochs, too
    little here for one proxy; a power gate on the validation set (where there is one) would refuse
    a dozen validation images. None of that is what this test is about.
    """
    monkeypatch.setattr(search, "MIN_SUBSET", 8)
    monkeypatch.setattr(regularize_choose, "NO_BUDGET_SEARCH_EPOCHS", 200)
    if hasattr(regularize_choose, "MAX_MIN_EFFECT"):
        monkeypatch.setattr(regularize_choose, "MAX_MIN_EFFECT", math.inf)


@pytest.fixture(scope="module")
def data() -> tuple[Any, Any]:
    """120 training images of 8x8 (3 classes; 12 held out for validation) and 60 test images."""
    return make_problem(120, classes=3, seed=3), make_problem(60, classes=3, seed=4)


def fit(case_pins: dict[str, Any], data: tuple[Any, Any], out: Path, *, budget: float | None = None,
        regularization: visiondojo.RegularizationParams | None = None) -> visiondojo.Run:
    train, test = data
    return visiondojo.fit(TinyNet(outputs=3), train, test_data=test, pin=case_pins, budget=budget,
                          regularization=regularization, out=out, progress=False)


def assert_pins_honoured(run: visiondojo.Run, pins: dict[str, Any], budget: float | None = None) -> None:
    """The plan holds every pinned value, as pinned, and the run followed it."""
    plan = run.plan
    for dotted, value in pins.items():
        section, _, name = dotted.partition(".")
        assert getattr(getattr(plan, section), name) == value, dotted
        assert plan.is_pinned(dotted) and plan.evidence[dotted] == "pinned by the user", dotted
    for split in ("val", "test"):
        assert math.isfinite(run.metrics[split]["acc"]) and math.isfinite(run.metrics[split]["loss"]), split
    saved = json.loads((run.dir / "metrics.json").read_text())
    stop, epochs = saved["stop_reason"], len(run.history)
    if "optimization.epochs" in pins:
        # A ceiling: under a budget the guard may cut it; early stopping may end the run sooner.
        assert epochs <= pins["optimization.epochs"]
        if budget is None and not stop.startswith("early stopping"):
            assert epochs == pins["optimization.epochs"]
    if epochs and not stop.endswith("mid-epoch"):
        if plan.optimization.keep == "best" or stop.startswith("early stopping"):
            assert saved["kept_epoch"] == saved["best_epoch"]
        else:
            assert saved["kept_epoch"] == epochs
    if plan.optimization.schedule == "constant":
        rates = [row["lr"] for row in run.history]
        assert rates == sorted(rates)  # a warmup at most, never a decay


@pytest.mark.parametrize("case", CASES, ids=str)
def test_pinned_runs_finish_and_honour_every_pin(case: Case, data, tmp_path, searchable) -> None:
    run = fit(case.pins, data, tmp_path / "run", budget=case.budget, regularization=case.policy)
    assert_pins_honoured(run, case.pins, case.budget)
    plan = run.plan
    if not case.search:
        assert plan.regularization.augment == [] and plan.is_pinned("regularization.augment")
        assert "augment_search" not in plan.measurements
        if case.policy is not None:
            assert plan.regularization == case.policy  # every field of a saved policy is used as given
    else:
        assert not plan.is_pinned("regularization.augment") and "regularization.augment" in plan.evidence


def test_a_pinned_constant_schedule_reaches_the_search_proxies(data, tmp_path, searchable) -> None:
    """The case that crashed: proxies validate once after their last epoch, which needs keep 'last',
    while a constant schedule makes the run keep its best epoch; the proxies must train their own way."""
    pins = {"optimization.schedule": "constant", "optimization.epochs": 3}
    run = fit(pins, data, tmp_path / "run")
    assert_pins_honoured(run, pins)
    trials = run.plan.measurements["augment_search"]["trials"]
    assert len(trials) >= 1  # the search trained its proxies (one per trial) under these pins
    assert run.plan.optimization.keep == "best"  # chosen for the run's constant schedule, untouched by the search
    assert len(run.history) == 3
