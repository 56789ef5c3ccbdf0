"""Regularization: class-weighted and soft-target losses, the batch plug-in, decoupled (and
adaptive) weight decay, and policies end to end through ``fit``, ``train``, plan.yaml and the CLI."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import TinyNet, state_dicts_equal, stripe_images
from torch import nn

import visiondojo
from visiondojo.cli import main
from visiondojo.data.batches import Normalizer
from visiondojo.errors import ConfigError
from visiondojo.optimize.optimizers import param_groups
from visiondojo.plan import AugmentOp, DataParams, Plan, RegularizationParams
from visiondojo.regularize.batch import BatchRegularizer
from visiondojo.regularize.weight_decay import MAX_SCALE, DecoupledWeightDecay
from visiondojo.tasks import Task
from visiondojo.tasks.classification import BinaryTask, MultiClassTask, MultiLabelTask

CPU = torch.device("cpu")
POLICY = RegularizationParams(augment=[AugmentOp("translate", 0.3), AugmentOp("brightness", 0.5)],
                              label_smoothing=0.1, mixup=0.2)
"""The policy of the end-to-end runs: geometry, color, smoothing and mixup at once."""


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------- 1-2. losses

def test_multiclass_class_weights_are_torchs_weighted_cross_entropy() -> None:
    """Index targets: sum_i w_{y_i} * nll_i / sum_i w_{y_i}, computed here from log-softmax."""
    gen = seeded(0)
    logits = torch.randn(12, 4, generator=gen)
    labels = torch.randint(0, 4, (12,), generator=gen)
    weights = torch.tensor([0.5, 1.0, 2.0, 0.25])
    nll = -logits.log_softmax(dim=1).gather(1, labels[:, None])[:, 0]
    by_hand = (weights[labels] * nll).sum() / weights[labels].sum()
    loss = MultiClassTask(4).loss(logits, labels, weights)
    assert torch.allclose(loss, by_hand, atol=1e-6)
    assert not torch.allclose(loss, nll.mean())  # the weights do something


def test_binary_class_weights_weigh_each_sample_by_its_class() -> None:
    """Class 1 weighs w1, class 0 w0, a soft target t blends them (1 - t) w0 + t w1; a weighted mean
    over samples, as torch's weighted cross entropy. By hand: logits (0, 2), targets (1, 0),
    weights (0.5, 2): (2 log 2 + 0.5 log(1 + e^2)) / (2 + 0.5)."""
    weights = torch.tensor([0.5, 2.0])
    loss = BinaryTask().loss(torch.tensor([[0.0], [2.0]]), torch.tensor([1, 0]), weights)
    assert float(loss) == pytest.approx((2 * math.log(2) + 0.5 * math.log(1 + math.e**2)) / 2.5, rel=1e-6)
    soft = BinaryTask().loss(torch.tensor([[0.0]]), torch.tensor([0.25]), weights)
    assert float(soft) == pytest.approx(math.log(2), rel=1e-6)  # one sample: its weight cancels
    # Uniform weights change nothing: the weights set the balance, not the loss scale.
    logits, targets = torch.tensor([[0.3], [-1.0], [2.0]]), torch.tensor([1, 0, 1])
    assert torch.allclose(BinaryTask().loss(logits, targets, torch.tensor([3.0, 3.0])), BinaryTask().loss(logits, targets))


def test_multilabel_class_weights_scale_positives_only() -> None:
    """Label k's positive term weighs w_k, negatives keep 1, as a weighted mean. By hand, logits
    (1, 0, 0) for both rows, targets [[1,0,1],[0,0,1]], weights (2, 3, 4) -> element weights
    [[2,1,4],[1,1,4]]: (2 log(1+e^-1) + 1 log 2 + 4 log 2 + 1 log(1+e) + 1 log 2 + 4 log 2) / 13."""
    targets = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    logits = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    loss = MultiLabelTask(3).loss(logits, targets, torch.tensor([2.0, 3.0, 4.0]))
    by_hand = (2 * math.log(1 + math.exp(-1)) + 10 * math.log(2) + math.log(1 + math.e)) / 13
    assert float(loss) == pytest.approx(by_hand, rel=1e-6)


@pytest.mark.parametrize("weights", [None, [0.5, 1.0, 2.0, 0.25]],
                         ids=["unweighted", "class-weighted"])
def test_one_hot_targets_give_the_index_target_loss(weights: list[float] | None) -> None:
    """Soft targets are a generalization: the one-hot float target of class y must cost exactly
    what the index target y costs, so switching soft labels on changes nothing by itself."""
    gen = seeded(1)
    logits = torch.randn(16, 4, generator=gen)
    labels = torch.randint(0, 4, (16,), generator=gen)
    task = MultiClassTask(4)
    class_weights = None if weights is None else torch.tensor(weights)
    soft = task.loss(logits, task.soft_targets(labels), class_weights)
    assert torch.allclose(soft, task.loss(logits, labels, class_weights), atol=1e-6)


# ---------------------------------------------------------------- 3. the batch plug-in

def regularizer(params: RegularizationParams, task: Task | None = None, seed: int = 0
                ) -> tuple[BatchRegularizer, Normalizer]:
    """A BatchRegularizer on CPU for 1-channel uint8 images (scale 1/255, mean 0.3, std 0.2)."""
    normalizer = Normalizer(DataParams(channels=1, mean=[0.3], std=[0.2], pixel_scale=1 / 255), CPU)
    return BatchRegularizer(params, task or MultiClassTask(4), normalizer, CPU, seed=seed), normalizer


def uint8_batch(n: int = 8, seed: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, 1, 8, 8) uint8 images and (n,) class indices of 4 classes."""
    gen = seeded(seed)
    images = torch.randint(0, 256, (n, 1, 8, 8), generator=gen, dtype=torch.uint8)
    return images, torch.randint(0, 4, (n,), generator=gen)


def test_nothing_to_do_is_the_plain_normalization() -> None:
    """Without batch regularization the plug-in is exactly the fused normalization and hands the
    targets through untouched: a run without a policy computes what it always did."""
    reg, normalizer = regularizer(RegularizationParams())
    images, targets = uint8_batch()
    inputs, out_targets = reg(images, targets)
    assert not reg.active
    assert torch.equal(inputs, normalizer(images))
    assert out_targets is targets


@pytest.mark.parametrize("task, targets, expected", [
    (MultiClassTask(4), [2, 0], [[0.025, 0.025, 0.925, 0.025], [0.925, 0.025, 0.025, 0.025]]),
    (BinaryTask(), [1, 0], [0.95, 0.05]),
    (MultiLabelTask(3), [[1.0, 0.0, 1.0]], [[0.95, 0.05, 0.95]]),
], ids=["multiclass", "binary", "multilabel"])
def test_label_smoothing_gives_smoothed_soft_targets(task: Task, targets: list, expected: list) -> None:
    """Smoothing 0.1 spreads over K classes for softmax tasks and over (yes, no) for sigmoid outputs;
    the images are only normalized (no augmentation in this policy)."""
    reg, normalizer = regularizer(RegularizationParams(label_smoothing=0.1), task)
    images = uint8_batch(len(targets))[0]
    inputs, soft = reg(images, torch.tensor(targets))
    assert torch.allclose(soft, torch.tensor(expected), atol=1e-6)
    assert torch.allclose(inputs, normalizer(images), atol=1e-5)


def test_epochs_replay_their_draws_and_differ_from_each_other() -> None:
    """set_epoch(e) reseeds from (seed, e): a resumed epoch replays its augmentation and mixing
    bit for bit, another epoch (or another run seed) draws anew."""
    params = RegularizationParams(augment=[AugmentOp("rotate", 1.0), AugmentOp("noise", 0.5)], mixup=0.5)
    reg, _ = regularizer(params)
    images, targets = uint8_batch(16)

    def draw(epoch: int, reg: BatchRegularizer = reg) -> tuple[torch.Tensor, torch.Tensor]:
        reg.set_epoch(epoch)
        return reg(images, targets)

    first_images, first_targets = draw(3)
    draw(5)  # other draws in between change nothing
    again_images, again_targets = draw(3)
    assert torch.equal(first_images, again_images) and torch.equal(first_targets, again_targets)
    assert not torch.equal(first_images, draw(4)[0])
    assert not torch.equal(first_images, draw(3, regularizer(params, seed=1)[0])[0])


@pytest.mark.parametrize("field, value", [("label_smoothing", 1.0), ("mixup", 1.5), ("cutmix", -0.1),
                                          ("weight_decay", -0.01), ("class_balance", "both")])
def test_out_of_range_params_are_config_errors(field: str, value: Any) -> None:
    with pytest.raises(ConfigError, match=rf"regularization\.{field}"):
        regularizer(dataclasses.replace(RegularizationParams(), **{field: value}))


# ---------------------------------------------------------------- 4. decoupled weight decay

def small_net() -> nn.Sequential:
    """Decayed: two Linear weights. Not decayed: their biases and the LayerNorm."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.LayerNorm(8), nn.ReLU(), nn.Linear(8, 3))


DECAYED = {"0.weight", "3.weight"}
"""The parameters of ``small_net`` that ``param_groups`` puts in the decayed group."""


def test_decay_shrinks_weights_by_exactly_one_minus_lr_rate() -> None:
    """With no gradient the step is the decay alone: decayed weights times (1 - lr * rate), bit for
    bit; norm layers and biases untouched."""
    model = small_net()
    lr, rate = 0.1, 0.05
    optimizer = torch.optim.SGD(param_groups(model), lr=lr)
    DecoupledWeightDecay(optimizer, rate)
    before = copy.deepcopy(model.state_dict())
    optimizer.step()  # no .grad anywhere: SGD itself changes nothing
    for name, value in model.state_dict().items():
        expected = before[name] * (1 - lr * rate) if name in DECAYED else before[name]
        assert torch.equal(value, expected), name


OPTIMIZERS: dict[str, Callable[[list[dict]], torch.optim.Optimizer]] = {
    "sgd-momentum": lambda groups: torch.optim.SGD(groups, lr=0.05, momentum=0.9, nesterov=True),
    "adamw": lambda groups: torch.optim.AdamW(groups, lr=0.01, weight_decay=0.0),
}


@pytest.mark.parametrize("make_optimizer", OPTIMIZERS.values(), ids=OPTIMIZERS.keys())
def test_decay_is_its_own_step_before_an_unchanged_optimizer_step(
        make_optimizer: Callable[[list[dict]], torch.optim.Optimizer]) -> None:
    """Decoupled means: scale the decayed weights, then the optimizer's own step on the gradient,
    whose momentum and second moments never see the decay. A hand-made reference that does exactly
    that must match the hooked optimizer bit for bit over several steps."""
    rate = 0.1
    hooked, reference = small_net(), small_net()
    hooked_opt, reference_opt = make_optimizer(param_groups(hooked)), make_optimizer(param_groups(reference))
    DecoupledWeightDecay(hooked_opt, rate)
    gen = seeded(3)
    for _ in range(3):
        x, y = torch.randn(16, 6, generator=gen), torch.randint(0, 3, (16,), generator=gen)
        for model, optimizer in ((hooked, hooked_opt), (reference, reference_opt)):
            optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()
        with torch.no_grad():
            for name, param in reference.named_parameters():
                if name in DECAYED:
                    param.mul_(1 - reference_opt.param_groups[0]["lr"] * rate)
        hooked_opt.step()
        reference_opt.step()
    assert state_dicts_equal(hooked, reference)
    for a, b in zip(hooked_opt.state.values(), reference_opt.state.values()):
        assert all(torch.equal(a[key], b[key]) for key in a)


class TwoBranches(nn.Module):
    """Two identical Linear layers, each followed by a norm layer (so each is scale invariant);
    the second one's weights are ``blow_up`` times larger."""

    def __init__(self, norm: type[nn.Module], blow_up: float = 10.0):
        super().__init__()
        torch.manual_seed(0)
        self.normal = nn.Linear(16, 16, bias=False)
        self.large = copy.deepcopy(self.normal)
        with torch.no_grad():
            self.large.weight.mul_(blow_up)
        self.norm_normal, self.norm_large = norm(16), norm(16)
        self.head = nn.Linear(32, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cat([self.norm_normal(self.normal(x)), self.norm_large(self.large(x))], dim=1))


def train_steps(model: nn.Module, optimizer: torch.optim.Optimizer, steps: range, seed: int = 4) -> None:
    """Steps of cross-entropy on fixed random data; batch ``i`` is the same whichever range it is in."""
    gen = seeded(seed)
    x, y = torch.randn(256, 16, generator=gen), torch.randint(0, 3, (256,), generator=gen)
    for step in steps:
        batch = torch.randint(0, 256, (32,), generator=seeded(seed * 1000 + step))
        optimizer.zero_grad()
        F.cross_entropy(model(x[batch]), y[batch]).backward()
        optimizer.step()


def adaptive_setup(norm: type[nn.Module]) -> tuple[TwoBranches, torch.optim.Optimizer, DecoupledWeightDecay]:
    model = TwoBranches(norm)
    optimizer = torch.optim.AdamW(param_groups(model), lr=0.01, weight_decay=0.0)
    return model, optimizer, DecoupledWeightDecay(optimizer, 0.05, adaptive=True)


@pytest.mark.parametrize("norm", [nn.LayerNorm, nn.BatchNorm1d])
def test_adaptive_decay_decays_too_large_weights_harder(norm: type[nn.Module]) -> None:
    """The rule's point: a scale-invariant weight 10x too large moves too little in angle per step,
    so it gets more decay than its normal-scale twin; every multiplier stays within
    [1 / MAX_SCALE, MAX_SCALE] and, after a few measurements, is no longer 1."""
    model, optimizer, decay = adaptive_setup(norm)
    train_steps(model, optimizer, range(60))
    scales = dict(zip([id(p) for p in decay.decayed], decay.scales))
    assert len(scales) == 3  # normal, large, head weights; norms and biases are not decayed
    assert all(1 / MAX_SCALE <= s <= MAX_SCALE and s != 1.0 for s in scales.values())
    assert scales[id(model.large.weight)] > scales[id(model.normal.weight)]


def test_adaptive_state_round_trips_for_an_exact_resume() -> None:
    """Resuming from (model, optimizer, decay) state dicts mid-run ends bit-identical to the
    uninterrupted run; without the decay state it would not (the multipliers are state)."""
    model, optimizer, decay = adaptive_setup(nn.LayerNorm)
    train_steps(model, optimizer, range(25))
    saved = (copy.deepcopy(model.state_dict()), copy.deepcopy(optimizer.state_dict()), decay.state_dict())
    train_steps(model, optimizer, range(25, 50))

    def resumed(load_decay: bool) -> tuple[nn.Module, DecoupledWeightDecay]:
        clone, clone_opt, clone_decay = adaptive_setup(nn.LayerNorm)
        clone.load_state_dict(saved[0])
        clone_opt.load_state_dict(saved[1])
        if load_decay:
            clone_decay.load_state_dict(saved[2])
        train_steps(clone, clone_opt, range(25, 50))
        return clone, clone_decay

    clone, clone_decay = resumed(load_decay=True)
    assert clone_decay.state_dict() == decay.state_dict()
    assert state_dicts_equal(clone, model)
    assert not state_dicts_equal(resumed(load_decay=False)[0], model)


# ---------------------------------------------------------------- 5. policies end to end

def test_policy_trains_is_pinned_and_replays_bit_for_bit(quick_fit: Callable[..., visiondojo.Run], problem: Callable,
                                                         tmp_path: Path) -> None:
    """A policy given to fit is used as given (every field pinned), the easy problem is still
    learned, the policy changes training, and replaying plan.yaml reproduces the weights exactly."""
    data, test = problem(240), problem(200, seed=50)
    run = quick_fit(TinyNet(), data, test_data=test, regularization=POLICY)
    plan = run.plan
    assert plan.regularization == POLICY
    assert {f"regularization.{f.name}" for f in dataclasses.fields(RegularizationParams)} <= set(plan.pinned)
    assert run.metrics["test"]["acc"] >= 0.9  # measured 0.995-1.0 over seeds 0-4
    assert not state_dicts_equal(run.model, quick_fit(TinyNet(), data).model)
    replay = visiondojo.train(TinyNet(), data, plan=run.dir / "plan.yaml", out=tmp_path / "replay", progress=False)
    assert state_dicts_equal(run.model, replay.model)


def test_saved_policy_and_plan_section_load_and_fit(quick_fit: Callable[..., visiondojo.Run], problem: Callable,
                                                    tmp_path: Path) -> None:
    """A policy saved to YAML feeds fit; the run's plan.yaml then reads back as the same policy
    (its regularization section) and feeds fit again."""
    path = tmp_path / "policy.yaml"
    POLICY.save(path)
    assert RegularizationParams.load(path) == POLICY
    run = quick_fit(TinyNet(), problem(160), regularization=path)
    assert run.plan.regularization == POLICY
    plan_path = run.dir / "plan.yaml"
    assert RegularizationParams.load(plan_path) == POLICY
    assert quick_fit(TinyNet(), problem(160), regularization=plan_path).plan.regularization == POLICY


@pytest.fixture
def cli_project(image_folder: Callable[..., Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A class-folder dataset and a 2-epoch config, with the working directory set to them."""
    image_folder(60, classes=3, size=9, name="images")
    (tmp_path / "config.yaml").write_text(
        "data:\n  train: images\n"
        "model:\n  spec: fmnist-resnet\n  kwargs: {width: 4}\n"
        "training:\n  epochs: 2\n  lr: 0.01\n  batch_size: 16\n"
    )
    monkeypatch.chdir(tmp_path)
    return tmp_path


CLI_POLICY = RegularizationParams(augment=[AugmentOp("hflip", 1.0), AugmentOp("noise", 0.4, p=0.5)],
                                  label_smoothing=0.05)
BAD_POLICY = "augment:\n- name: wobble\n  magnitude: 0.5\n"


def train_cli(policy: Path, out: str) -> int:
    return main(["train", "config.yaml", "--quiet", "--out", out, "--regularization-params", str(policy)])


def test_cli_trains_with_a_policy_file(cli_project: Path) -> None:
    CLI_POLICY.save("policy.yaml")
    assert train_cli(Path("policy.yaml"), "run") == 0
    assert Plan.load(cli_project / "run" / "plan.yaml").regularization == CLI_POLICY


def test_cli_bad_policy_is_exit_code_2_naming_the_op(cli_project: Path, capsys: pytest.CaptureFixture) -> None:
    Path("bad.yaml").write_text(BAD_POLICY)
    assert train_cli(Path("bad.yaml"), "run") == 2
    err = capsys.readouterr().err
    assert "unknown op 'wobble'" in err and "rotate" in err  # names it and lists the choices


def test_cli_bad_policy_leaves_nothing_behind(cli_project: Path) -> None:
    """A refused policy must not leave a run folder: fixing the file and rerunning must work."""
    Path("bad.yaml").write_text(BAD_POLICY)
    assert train_cli(Path("bad.yaml"), "run") == 2
    CLI_POLICY.save("bad.yaml")
    assert train_cli(Path("bad.yaml"), "run") == 0


# ---------------------------------------------------------------- 6. class balance

def imbalanced(counts: tuple[int, ...] = (200, 100, 20)) -> tuple[np.ndarray, np.ndarray]:
    """Stripe problem with these class counts (ratio 10 by default), shuffled."""
    labels = np.repeat(np.arange(len(counts)), counts)
    np.random.default_rng(0).shuffle(labels)
    return stripe_images(labels, stripes=len(counts)), labels


@pytest.mark.parametrize("mode", ["reweight", "resample"])
@pytest.mark.filterwarnings("ignore:train_data. strong class imbalance")
def test_class_balance_modes_train(mode: str, quick_fit: Callable[..., visiondojo.Run]) -> None:
    run = quick_fit(TinyNet(outputs=3), imbalanced(), pin={"regularization.class_balance": mode})
    assert run.plan.regularization.class_balance == mode
    assert run.plan.evidence["regularization.class_balance"] == "pinned by the user"
    assert run.metrics["val"]["acc"] >= 0.85  # measured 1.0
    assert min(run.metrics["val"]["recall"]) >= 0.5  # the rare class is found too


@pytest.mark.filterwarnings("ignore:train_data. strong class imbalance")
def test_auto_class_balance_reweights_a_ten_to_one_problem() -> None:
    """Ratio 10 lies between REWEIGHT_FROM and RESAMPLE_FROM: reweighting, with the ratio as evidence."""
    pins = {"optimization.epochs": 2, "optimization.batch_size": 32, "optimization.lr": 0.01}
    plan = visiondojo.find_params(TinyNet(outputs=3), imbalanced(), pin=pins)
    assert plan.regularization.class_balance == "reweight"
    assert "imbalance ratio 10.0" in plan.evidence["regularization.class_balance"]
    assert "regularization.class_balance" not in plan.pinned


# ---------------------------------------------------------------- 7. dropout

def test_inserted_dropout_is_removed_after_training(quick_fit: Callable[..., visiondojo.Run],
                                                    problem: Callable) -> None:
    """TinyNet has no dropout: one is inserted before the head for training (a hook), then removed,
    so the returned model is TinyNet's architecture exactly, and the run notes say what was done."""
    model = TinyNet()
    run = quick_fit(model, problem(240), pin={"regularization.dropout": 0.3})
    assert run.plan.regularization.dropout == 0.3
    assert run.metrics["val"]["acc"] >= 0.85  # measured 1.0
    assert list(run.model.state_dict()) == list(TinyNet().state_dict())
    assert not any(isinstance(m, nn.Dropout) for m in run.model.modules())
    assert len(run.model[-1]._forward_pre_hooks) == 0
    notes = json.loads((run.dir / "metrics.json").read_text())["notes"]
    assert any("inserted dropout p=0.3" in note for note in notes), notes


def test_policy_errors_name_the_field_before_training() -> None:
    from visiondojo.errors import ConfigError
    from visiondojo.regularize.batch import check

    for params, field in [(RegularizationParams(dropout=1.0), "regularization.dropout"),
                          (RegularizationParams(stochastic_depth=-0.1), "regularization.stochastic_depth"),
                          (RegularizationParams(class_balance="reweight", class_balance_beta=1.0),
                           "regularization.class_balance_beta"),
                          (RegularizationParams(augment=[AugmentOp("rotate", 0.5, 1.0, group="g"),
                                                         AugmentOp("shear", 0.5, 0.5, group="g")]), "group 'g'")]:
        with pytest.raises(ConfigError, match=field):
            check(params)
