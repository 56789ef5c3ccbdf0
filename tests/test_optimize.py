"""The optimization meta-learners: each on a problem whose answer is known."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from safetensors.torch import load_file

import visiondojo
from visiondojo.data.batches import Normalizer
from visiondojo.data.inspect import inspect_data
from visiondojo.data.sources import DataOptions, as_source
from visiondojo.engine.checkpoint import load_state
from visiondojo.engine.runtime import Runtime
from visiondojo.errors import ConfigError
from visiondojo.optimize.batchnorm import bn_momentum_for, restore_bn_momentum, set_bn_momentum
from visiondojo.optimize.lr_finder import scale_lr, suggest_lr
from visiondojo.optimize.memory import memory_ceiling, saved_activation_bytes
from visiondojo.optimize.noise_scale import NoiseScaleEMA, is_stable, micro_batch_gradients, unbiased_estimates
from visiondojo.optimize.optimizers import build_optimizer, choose_optimizer
from visiondojo.regularize.weight_decay import DecoupledWeightDecay
from visiondojo.optimize.schedules import MAX_WARMUP_SHARE, WarmupCosine, warmup_steps_for
from visiondojo.plan import OptimizationParams, RuntimeParams
from visiondojo.tasks import MultiClassTask

from conftest import FAST, TinyNet, state_dicts_equal


# --- gradient noise scale ------------------------------------------------------------------------

def linear_regression_noise_scale(d: int, sigma: float, delta: torch.Tensor) -> float:
    """B_simple = tr(Sigma) / |G|^2 for loss 0.5 (w.x - y)^2 with x ~ N(0, I), y = w*.x + N(0, sigma^2).

    At w = w* + delta the per-sample gradient is g = (delta.x - eps) x, so G = delta,
    E|g|^2 = (d + 2)|delta|^2 + d sigma^2, and tr(Sigma) = E|g|^2 - |G|^2.
    """
    g2 = float(delta.square().sum())
    return ((d + 1) * g2 + d * sigma ** 2) / g2


@pytest.mark.parametrize("sigma, offset", [(0.5, 0.3), (0.1, 1.0), (2.0, 0.5)])
def test_noise_scale_matches_linear_regression(sigma: float, offset: float) -> None:
    d = 20
    generator = torch.Generator().manual_seed(0)
    w_star = torch.randn(d, generator=generator)
    model = nn.Linear(d, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(w_star + offset * torch.randn(d, generator=generator))
    expected = linear_regression_noise_scale(d, sigma, model.weight.detach()[0] - w_star)

    def loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return 0.5 * (model(x)[:, 0] - y).square().mean()

    ema = NoiseScaleEMA(b_small=16, b_big=128, decay=0.95)
    for _ in range(300):
        x = torch.randn(128, d, generator=generator)
        y = x @ w_star + sigma * torch.randn(128, generator=generator)
        ema.update(*micro_batch_gradients(list(model.parameters()), loss, x, y, micro=8)[:2])
    assert ema.b_noise == pytest.approx(expected, rel=0.2)


def test_unbiased_estimates_invert_the_noise_model() -> None:
    # E|G_B|^2 = |G|^2 + tr(Sigma) / B exactly recovers |G|^2 = 3 and tr(Sigma) = 120.
    g2, s = unbiased_estimates(3 + 120 / 8, 3 + 120 / 64, 8, 64)
    assert (g2, s) == (pytest.approx(3.0), pytest.approx(120.0))


def test_micro_batch_gradients_mean_is_the_big_batch_gradient() -> None:
    torch.manual_seed(0)
    model = nn.Linear(5, 3)
    x, y = torch.randn(32, 5), torch.randint(0, 3, (32,))

    def loss(xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(model(xb), yb)

    _, big_sq, mean = micro_batch_gradients(list(model.parameters()), loss, x, y, micro=4)
    full = torch.autograd.grad(loss(x, y), list(model.parameters()))
    assert all(torch.allclose(m, f, atol=1e-6) for m, f in zip(mean, full))
    assert big_sq == pytest.approx(float(sum(f.square().sum() for f in full)), rel=1e-5)


def test_stability_needs_a_full_window_of_close_finite_estimates() -> None:
    assert not is_stable([100, 101], window=3, tolerance=0.1)
    assert is_stable([50, 100, 104, 98], window=3, tolerance=0.1)
    assert not is_stable([100, 130, 100], window=3, tolerance=0.1)
    assert not is_stable([100, float("inf"), 100], window=3, tolerance=0.1)


# --- learning rate -------------------------------------------------------------------------------

def range_curve(n: int = 100, best_lr: float = 1e-2) -> tuple[list[float], list[float]]:
    """A range test's shape: flat, falling, a minimum at ``best_lr``, then divergence."""
    lrs = [1e-6 * (1e7) ** (i / (n - 1)) for i in range(n)]
    losses = []
    for lr in lrs:
        x = math.log10(lr / best_lr)
        losses.append(2.3 - 1.5 / (1 + math.exp(-3 * (x + 1.5))) + (0.0 if x < 0 else 4 * x * x))
    return lrs, losses


def test_lr_suggestion_is_a_decade_below_the_minimum() -> None:
    lrs, losses = range_curve(best_lr=1e-2)
    assert suggest_lr(lrs, losses).lr == pytest.approx(1e-3, rel=0.5)


def test_lr_suggestion_ignores_spikes_and_nans() -> None:
    lrs, losses = range_curve(best_lr=1e-2)
    clean = suggest_lr(lrs, losses).lr
    spiky = list(losses)
    spiky[2] = 50.0          # an early spike
    spiky[30] = 0.01         # a lucky batch far below the curve
    spiky[55] = 40.0         # a spike on the way down
    spiky[90:] = [float("nan")] * 10
    assert suggest_lr(lrs, spiky).lr == pytest.approx(clean, rel=0.3)


def test_lr_suggestion_stops_at_divergence() -> None:
    lrs, losses = range_curve(best_lr=1e-3)
    exploded = losses[:70] + [1e6] * 30  # a blow-up well after the minimum
    assert suggest_lr(lrs, exploded).lr == pytest.approx(suggest_lr(lrs, losses).lr, rel=0.3)
    with pytest.raises(ValueError, match="diverged in the first steps"):
        suggest_lr(lrs[:5], [1.0, float("nan"), 1.0, 1.0, 1.0])


def test_lr_scaling_follows_the_noise_scale_relation() -> None:
    assert scale_lr(0.01, 64, 64, b_noise=100) == pytest.approx(0.01)
    # eps(B) = eps_max / (1 + B_noise / B): eps_max = 0.01 * (1 + 100/50) = 0.03; at B=200: 0.03 / 1.5.
    assert scale_lr(0.01, 50, 200, b_noise=100) == pytest.approx(0.02)
    # far above B_noise, doubling the batch barely moves the learning rate
    assert scale_lr(0.01, 4000, 8000, b_noise=100) == pytest.approx(0.01, rel=0.02)


# --- optimizer, warmup, BatchNorm momentum --------------------------------------------------------

def bn_convnet() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(2))


def test_optimizer_by_regime() -> None:
    plain = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    assert choose_optimizer(plain, 256, 100)[0] == "adamw"
    assert choose_optimizer(bn_convnet(), 256, 10)[0] == "adamw"
    assert choose_optimizer(bn_convnet(), 256, 60)[0] == "sgd"
    assert choose_optimizer(plain, 4096, 10)[0] == "lamb"
    assert choose_optimizer(bn_convnet(), 4096, 60)[0] == "lars"


@pytest.mark.parametrize("name", ["adamw", "lamb", "sgd", "lars"])
def test_decay_is_decoupled_and_skips_norms(name: str) -> None:
    model = nn.Sequential(nn.Linear(3, 3), nn.LayerNorm(3))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = build_optimizer(model, OptimizationParams(optimizer=name, lr=0.1, momentum=0.0))
    DecoupledWeightDecay(optimizer, 0.5)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    after = model.state_dict()
    assert torch.allclose(after["0.weight"], before["0.weight"] * (1 - 0.1 * 0.5))  # lr * wd shrink
    for key in ("0.bias", "1.weight", "1.bias"):
        assert torch.equal(after[key], before[key])


def test_warmup_rule() -> None:
    assert warmup_steps_for("adamw", 0.999, 256, 100)[0] == 2000
    assert warmup_steps_for("sgd", 0.999, 1024, 100)[0] == 500   # 5 epochs at batch 1024
    assert warmup_steps_for("sgd", 0.999, 256, 100)[0] == 125    # shrinks with the batch
    schedule = WarmupCosine(warmup_steps=10, total_steps=100)
    assert schedule(0) < schedule(5) < schedule(9) < schedule(10) == pytest.approx(1.0)
    assert schedule(99) < 0.01
    assert MAX_WARMUP_SHARE <= 0.1


def test_bn_momentum_rule_and_restore() -> None:
    assert bn_momentum_for(400) == 0.1
    assert bn_momentum_for(10) == 0.2
    assert bn_momentum_for(2) == 0.5
    model = bn_convnet()
    previous = set_bn_momentum(model, 0.3)
    assert model[1].momentum == 0.3
    restore_bn_momentum(model, previous)
    assert model[1].momentum == 0.1


# --- memory ceiling -------------------------------------------------------------------------------

def test_memory_ceiling_bounds_the_batch_by_measured_activations(problem) -> None:
    options = DataOptions()
    source = as_source(problem(300), options)
    data = inspect_data(source, options)
    runtime = Runtime(RuntimeParams())
    model = visiondojo.FMNISTResNet(num_classes=4, width=4)
    normalizer = Normalizer(data, runtime.device)
    task = MultiClassTask(4)
    result = memory_ceiling(model, task, source, runtime, normalizer, OptimizationParams(), max_batch=200)
    assert result.batch_size == 200  # a tiny net on 8x8 images: RAM is no limit, the cap is
    assert result.bytes_per_sample is not None and result.bytes_per_sample > 0
    images, targets = source.images[:16], source.targets.gather(slice(0, 16))
    sixteen = saved_activation_bytes(model, task, runtime, normalizer, images, targets)
    thirty_two = saved_activation_bytes(model, task, runtime, normalizer, source.images[:32], source.targets.gather(slice(0, 32)))
    assert thirty_two == pytest.approx(2 * sixteen, rel=0.1)  # activations grow linearly with the batch
    assert all(p.grad is None for p in model.parameters())


# --- find_params end to end ------------------------------------------------------------------------

def test_find_params_records_evidence_for_every_choice(problem, monkeypatch) -> None:
    from visiondojo import choose

    monkeypatch.setattr(choose, "META_SHARE", 0.4)  # every probe fits, however slow the host
    plan = visiondojo.find_params(visiondojo.FMNISTResNet(num_classes=4, width=4), problem(1200), budget=60)
    opt = plan.optimization
    for field in ("batch_size", "lr", "optimizer", "epochs", "warmup_epochs", "bn_momentum", "keep"):
        assert f"optimization.{field}" in plan.evidence, field
    assert opt.keep == "last"  # a budget plans a cosine schedule
    for field in ("weight_decay", "class_balance"):
        assert f"regularization.{field}" in plan.evidence, field
    measured = plan.measurements
    if "noise_scale" in measured:
        assert measured["noise_scale"]["steps"] == len(measured["noise_scale"]["trajectory"]) > 0
    else:  # under a budget the noise scale passes a cost gate first (no gain credited to it: skipped)
        why = plan.evidence["optimization.batch_size"]
        assert "no noise scale" in why or ("noise scale skipped" in why
                                           and not measured["probe_gates"]["noise scale"]["runs"])
    assert str(opt.batch_size) in measured["throughput"]  # the chosen batch is one the scan ran
    assert opt.batch_size <= measured["memory"]["batch_size"]
    assert measured["memory"]["tested"] == sorted(int(b) for b in measured["throughput"])
    assert len(measured["lr_finder"]["lrs"]) == len(measured["lr_finder"]["losses"]) >= 25
    assert 1e-5 < opt.lr < max(measured["lr_finder"]["lrs"])  # a decade below the loss minimum
    assert measured["meta_seconds"]["total"] > 0
    assert "of the budget" in plan.evidence["meta_learning"]


def test_pinned_batch_and_lr_skip_their_meta_learners(problem) -> None:
    plan = visiondojo.find_params(visiondojo.FMNISTResNet(num_classes=4, width=4), problem(600), budget=60,
                                  pin={"optimization.batch_size": 48, "optimization.lr": 0.003,
                                       "optimization.optimizer": "sgd"})
    opt = plan.optimization
    assert (opt.batch_size, opt.lr, opt.optimizer) == (48, 0.003, "sgd")
    assert "noise_scale" not in plan.measurements and "lr_finder" not in plan.measurements
    assert plan.evidence["optimization.optimizer"] == "pinned by the user"


def test_without_a_budget_the_plateau_schedule_and_early_stopping_decide(problem, tmp_path) -> None:
    run = visiondojo.fit(visiondojo.FMNISTResNet(num_classes=4, width=4), problem(400), out=tmp_path / "run",
                         pin={"optimization.early_stopping_patience": 1}, progress=False)
    opt = run.plan.optimization
    assert opt.schedule == "plateau" and opt.epochs >= 100 and opt.keep == "best"
    assert len(run.history) < opt.epochs  # early stopping ended it
    lrs = [row["lr"] for row in run.history]
    assert min(lrs) < max(lrs) / 4  # the learning rate was cut on a plateau
    assert run.metrics["val"]["acc"] > 0.9


def test_the_run_returns_the_weights_keep_names(problem, tmp_path) -> None:
    """``last``: the final epoch's weights (the schedule's end), not the best-read epoch's; ``best``:
    the best validated epoch's. Here validation peaks at epoch 2 of 6, so the two differ."""
    data = problem(300, seed=5)
    last = visiondojo.fit(TinyNet(), data, out=tmp_path / "last", **FAST)
    saved = json.loads((last.dir / "metrics.json").read_text())
    assert last.plan.optimization.keep == "last" and saved["kept_epoch"] == FAST["epochs"]
    final_state = load_state(last.dir / "checkpoints" / "last.safetensors")["model"]
    assert state_dicts_equal(last.model, final_state)
    assert not state_dicts_equal(last.model, load_file(last.dir / "checkpoints" / "best.safetensors"))
    best = visiondojo.fit(TinyNet(), data, out=tmp_path / "best", pin={"optimization.keep": "best"}, **FAST)
    saved = json.loads((best.dir / "metrics.json").read_text())
    assert saved["kept_epoch"] == saved["best_epoch"] < FAST["epochs"]
    vals = [row["val_acc"] for row in best.history]
    assert best.history[saved["best_epoch"] - 1]["val_acc"] == max(vals)
    best_state = load_file(best.dir / "checkpoints" / "best.safetensors")
    assert state_dicts_equal(best.model, best_state)
    with pytest.raises(ConfigError, match="optimization.keep = 'final'; choose one of last, best"):
        visiondojo.fit(TinyNet(), data, out=tmp_path / "bad", pin={"optimization.keep": "final"}, **FAST)


def _guarded(steps: int, planned: int, epoch_s: float = 10.0, overhead_s: float = 2.0):
    from visiondojo.engine.loop import LoopState
    from visiondojo.optimize.schedules import build_scheduler

    model = nn.Linear(2, 2)
    params = OptimizationParams(epochs=planned // 100, warmup_epochs=0.0)
    scheduler = build_scheduler(build_optimizer(model, params), params, steps_per_epoch=100)
    state = LoopState(epoch=steps // 100, step=steps, planned_epochs=math.ceil(planned / 100), planned_steps=planned,
                      cycle_s=[epoch_s] * 3, overhead_s=[overhead_s] * 3)
    return state, scheduler


@pytest.mark.parametrize("remaining_s, ceiling, expected", [
    (50.0, None, 300 + 400 + 68),  # ahead: 4 whole epochs and 68 steps of a fifth fill 95 % of 50 s
    (15.0, None, 300 + 100 + 28),  # behind: one epoch and 28 steps (2.24 s of training for a 2 s validation)
    (44.0, None, 300 + 400),       # 1.8 s left after 4 epochs: less training than its validation, no partial epoch
    (50.0, 600, 600),              # pinned epochs are a ceiling
])
def test_the_budget_guard_plans_steps_and_a_partial_last_epoch(remaining_s, ceiling, expected) -> None:
    """Epochs of 10 s, 2 of them validation: 100 steps of 0.08 s. The plan fills 95 % of the time
    left in steps, so the budget is not rounded down to whole epochs."""
    from visiondojo.engine.loop import _budget_guard
    from visiondojo.optimize.schedules import schedule_factor

    state, scheduler = _guarded(steps=300, planned=500)
    _budget_guard(state, scheduler, 100, remaining_s, ceiling=ceiling)
    assert state.planned_steps == expected and state.planned_epochs == math.ceil(expected / 100)
    assert schedule_factor(scheduler).total_steps == expected and state.replans == 1


def test_a_plan_extended_after_a_partial_epoch_trains_its_steps() -> None:
    """After a partial epoch the step count is mid-epoch: the steps added still get an epoch of their own."""
    from visiondojo.engine.loop import _budget_guard

    state, scheduler = _guarded(steps=850, planned=850)  # 8 whole epochs and a half one done
    state.epoch = 9
    _budget_guard(state, scheduler, 100, 6.0, ceiling=None)  # 95 % of 6 s: 2 s of validation and 46 steps of 0.08 s
    assert state.planned_steps == 850 + 46 and state.planned_epochs == 10


def test_a_plan_that_fits_is_left_alone() -> None:
    from visiondojo.engine.loop import _budget_guard

    state, scheduler = _guarded(steps=300, planned=500)  # 20 s needed
    _budget_guard(state, scheduler, 100, 22.0, ceiling=None)
    assert state.planned_steps == 500 and state.replans == 0


def test_the_loop_ends_a_partial_last_epoch_where_the_plan_does(problem, tmp_path, monkeypatch) -> None:
    """A plan of 2.5 epochs trains 3 epoch rows, the last one half long, and its schedule ends there."""
    from visiondojo.engine import loop

    def guard(state, scheduler, steps_per_epoch, remaining_s, *, ceiling):
        if state.planned_steps != 5 * steps_per_epoch // 2:
            state.planned_steps, state.planned_epochs = 5 * steps_per_epoch // 2, 3
            loop.schedule_factor(scheduler).resize(state.planned_steps)

    monkeypatch.setattr(loop, "_budget_guard", guard)
    run = visiondojo.fit(TinyNet(), problem(300, seed=5), out=tmp_path / "r", budget=600, progress=False,
                         pin={"optimization.epochs": 6, "optimization.batch_size": 32, "optimization.lr": 0.01})
    steps_per_epoch = run.plan.data.train_size // 32  # whole batches
    saved = load_state(run.dir / "checkpoints" / "last.safetensors")["loop"]
    assert len(run.history) == 3 and saved["step"] == 5 * steps_per_epoch // 2
    assert run.history[-1]["lr"] == pytest.approx(0.0, abs=1e-9)
