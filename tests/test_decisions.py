"""How meta-learners decide: paired tests with power, the extrapolation of a gain to the full data,
and the cost gate that weighs a search's time against training."""

from __future__ import annotations

import math

import pytest
import torch

import visiondojo
from visiondojo.learning_curve import cost_gate, epoch_exponent, training_gain
from visiondojo.paired import detectable_effect, detection_power, images_needed, paired_test, sign_test_p
from visiondojo.regularize.extrapolate import extrapolate_gain

from conftest import TinyNet, make_problem


def scores(images: int, baseline_only: int, candidate_only: int, both: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Correctness vectors of two models: ``both`` images right for both, the given counts for one only."""
    a, b = torch.zeros(images, dtype=torch.bool), torch.zeros(images, dtype=torch.bool)
    a[:baseline_only] = True
    b[baseline_only:baseline_only + candidate_only] = True
    shared = slice(baseline_only + candidate_only, baseline_only + candidate_only + both)
    a[shared] = b[shared] = True
    return a, b


def test_a_two_point_gain_on_2000_images_is_accepted() -> None:
    test = paired_test(*scores(2000, baseline_only=80, candidate_only=120, both=1600))
    assert test.effect == pytest.approx(0.02)
    assert test.p_value < 0.01 and test.accepted
    assert "accepted: +2.00% on 2000 images" in test.describe()


def test_a_0_9_point_gain_on_1000_images_is_underpowered() -> None:
    test = paired_test(*scores(1000, baseline_only=45, candidate_only=54, both=800))
    assert test.effect == pytest.approx(0.009)
    assert test.verdict == "underpowered" and not test.accepted
    assert test.p_value > 0.05 and test.power < 0.8


def test_a_significant_gain_below_the_minimum_effect_is_not_adopted() -> None:
    test = paired_test(*scores(20000, baseline_only=800, candidate_only=890, both=16000))
    assert test.p_value < 0.05 and test.effect < test.min_effect
    assert test.verdict == "below the minimum effect"


def test_a_well_powered_null_is_not_significant() -> None:
    test = paired_test(*scores(20000, baseline_only=800, candidate_only=805, both=16000))
    assert test.power > 0.8 and test.verdict == "not significant"


def test_identical_models_are_not_a_gain() -> None:
    right = torch.arange(500) % 3 > 0
    test = paired_test(right, right.clone())
    assert test.effect == 0 and test.p_value == 1.0 and not test.accepted


def test_sign_test_is_the_exact_binomial_tail() -> None:
    for wins, losses in [(0, 0), (5, 0), (7, 3), (30, 20), (3, 9)]:
        n = wins + losses
        exact = sum(math.comb(n, k) for k in range(wins, n + 1)) / 2 ** n if n else 1.0
        assert sign_test_p(wins, losses) == pytest.approx(exact, rel=1e-9)


def test_sizing_and_power_agree() -> None:
    needed = images_needed(0.01, 0.08)
    assert 4000 < needed < 6000
    assert detection_power(needed, 0.08, 0.01) == pytest.approx(0.8, abs=0.05)
    assert detection_power(needed // 4, 0.08, 0.01) < 0.5
    assert detectable_effect(needed) == pytest.approx(0.01, rel=0.02)
    assert detectable_effect(500) > detectable_effect(5000)


def test_mismatched_vectors_are_refused() -> None:
    with pytest.raises(ValueError, match="same validation images"):
        paired_test(torch.ones(10, dtype=torch.bool), torch.ones(11, dtype=torch.bool))


def test_extrapolation_follows_a_shrinking_gain_to_the_full_size() -> None:
    def gain(n: float) -> float:  # a regularizer's gain on n images: 4 points at 1k, gone by ~55k
        return 0.04 - 0.01 * math.log(n / 1000)

    predicted = extrapolate_gain([1000, 2000], [gain(1000), gain(2000)], 54000)
    assert predicted == pytest.approx(gain(54000), abs=1e-9)
    assert predicted < 0.01  # below the minimum effect: the simpler policy would stay


def test_extrapolation_never_credits_a_gain_that_grows_with_data() -> None:
    assert extrapolate_gain([500, 1000], [0.01, 0.03], 60000) == pytest.approx(0.03)
    assert extrapolate_gain([1000], [0.02], 60000) == 0.02
    with pytest.raises(ValueError):
        extrapolate_gain([1000, 2000], [0.02], 60000)


def test_learning_curve_is_steep_early_and_flat_late() -> None:
    assert epoch_exponent(3) == 0.7 and epoch_exponent(40) == 0.15
    assert 0.15 < epoch_exponent(7) < 0.7
    assert training_gain(3, 0.6) > training_gain(20, 4) > 0
    assert training_gain(10, 0) == 0


def test_cost_gate_skips_on_a_short_run_and_runs_on_a_long_one() -> None:
    short = cost_gate("search", 0.05, epochs=3, spent_epochs=0.6, time_buys_accuracy=True, gain_basis="test")
    long = cost_gate("search", 0.05, epochs=20, spent_epochs=4, time_buys_accuracy=True, gain_basis="test")
    free = cost_gate("search", 0.0, epochs=3, spent_epochs=0.6, time_buys_accuracy=False, gain_basis="test")
    assert not short.runs and short.cost > 0.05 and "skipped" in short.why
    assert long.runs and long.cost < 0.05
    assert free.runs and free.cost == 0


def test_fit_skips_the_search_on_a_short_budget_and_says_why(tmp_path, monkeypatch) -> None:
    from visiondojo.regularize import choose

    def no_search(*args, **kwargs):
        raise AssertionError("the search must not run")

    monkeypatch.setattr(choose, "search_policy", no_search)
    monkeypatch.setattr(choose, "MAX_MIN_EFFECT", 1.0)  # past the power gate: the cost gate decides
    monkeypatch.setattr(choose, "EXPECTED_SEARCH_GAIN", 0.02)
    images, labels = make_problem(600, size=8, seed=3)
    run = visiondojo.fit(TinyNet(), (images, labels), out=tmp_path / "r", budget=6, progress=False)
    gate = run.plan.measurements["search_gate"]
    assert not gate["runs"] and gate["cost"] > gate["expected_gain"] == 0.02
    assert "policy search: expected to remove 2.0% of the error" in run.plan.evidence["regularization.augment"]
    assert "skipped" in run.plan.evidence["regularization.augment"]
    assert "augment_search" not in run.plan.measurements


def test_fit_without_enough_validation_images_keeps_the_prior(tmp_path, monkeypatch) -> None:
    from visiondojo.regularize import choose

    monkeypatch.setattr(choose, "search_policy", lambda *args, **kwargs: pytest.fail("the search must not run"))
    images, labels = make_problem(400, size=8, seed=4)
    run = visiondojo.fit(TinyNet(), (images, labels), out=tmp_path / "r", progress=False,
                         pin={"optimization.epochs": 2, "optimization.batch_size": 32, "optimization.lr": 0.01})
    assert "underpowered: 40 validation images" in run.plan.evidence["regularization.augment"]
    assert run.plan.regularization.augment == []


def test_default_lr_scales_momentum_methods_with_the_batch() -> None:
    from visiondojo.optimize.optimizers import default_lr

    assert default_lr("sgd", 256)[0] == 0.1 and default_lr("sgd", 512)[0] == 0.2
    assert default_lr("adamw", 64)[0] == default_lr("adamw", 1024)[0] == 1e-3


@pytest.mark.parametrize("gain", [0.0, 1.0])
def test_probes_pass_the_cost_gate_under_a_budget(tmp_path, monkeypatch, gain) -> None:
    """A probe expected to gain nothing is skipped under a budget and leaves its fallback; one
    expected to halve the error runs. Both sides of the comparison are in the plan."""
    from visiondojo import choose
    from visiondojo.optimize.optimizers import default_lr

    monkeypatch.setattr(choose, "PROBE_GAINS", {name: (gain, "test") for name in choose.PROBE_GAINS})
    monkeypatch.setattr(choose, "META_SHARE", 0.4)  # the range test fits, however slow the host
    images, labels = make_problem(600, size=8, seed=5)
    run = visiondojo.fit(TinyNet(), (images, labels), out=tmp_path / "r", budget=12, progress=False,
                         regularization=visiondojo.RegularizationParams())
    opt, gates = run.plan.optimization, run.plan.measurements["probe_gates"]
    assert gates["lr range test"]["runs"] is (gain > 0) and gates["lr range test"]["spent_epochs"] > 0
    if gain == 0:
        assert gates["lr range test"]["cost"] > 0 and "lr_finder" not in run.plan.measurements
        assert opt.lr == default_lr(opt.optimizer, opt.batch_size)[0]
        assert "range test skipped" in run.plan.evidence["optimization.lr"]
    else:
        assert "lr_finder" in run.plan.measurements and "range test (" in run.plan.evidence["optimization.lr"]


def test_probes_run_without_a_budget_whatever_their_expected_gain(tmp_path, monkeypatch) -> None:
    from visiondojo import choose

    monkeypatch.setattr(choose, "PROBE_GAINS", {name: (0.0, "test") for name in choose.PROBE_GAINS})
    images, labels = make_problem(400, size=8, seed=6)
    run = visiondojo.fit(TinyNet(), (images, labels), out=tmp_path / "r", progress=False,
                         regularization=visiondojo.RegularizationParams(), pin={"optimization.epochs": 2})
    gate = run.plan.measurements["probe_gates"]["lr range test"]
    assert gate["runs"] and gate["cost"] == 0 and "lr_finder" in run.plan.measurements


def test_a_range_test_cut_short_by_its_time_is_not_trusted(tmp_path, monkeypatch) -> None:
    """When the machine runs slower than the throughput scan measured, the range test's curve ends
    while the loss still falls; its minimum / 10 would be far too low a learning rate."""
    from visiondojo import choose
    from visiondojo.optimize.lr_finder import RangeTest
    from visiondojo.optimize.optimizers import default_lr

    def cut_short(*args, **kwargs):
        return RangeTest(1e-6, args[6], [1e-6, 2e-6, 4e-6], [2.3, 2.3, 2.29], [2.3, 2.3, 2.29], 9.0, "time")

    monkeypatch.setattr(choose, "lr_range_test", cut_short)
    images, labels = make_problem(400, size=8, seed=6)
    run = visiondojo.fit(TinyNet(), (images, labels), out=tmp_path / "r", progress=False,
                         regularization=visiondojo.RegularizationParams(), pin={"optimization.epochs": 1})
    opt = run.plan.optimization
    assert opt.lr == default_lr(opt.optimizer, opt.batch_size)[0]
    assert "cut short by its time after 3 of" in run.plan.evidence["optimization.lr"]
