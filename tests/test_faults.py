"""Non-finite steps and out-of-memory errors, injected through the fault hook: the run skips, rolls
back, re-splits its batches and finishes, says so, and stops with a clear error only when nothing
else helps."""

from __future__ import annotations

import json

import pytest
import torch

import visiondojo
from visiondojo.engine import faults
from visiondojo.engine.epoch import TrainingDiverged
from visiondojo.engine.step import OutOfMemory, _split_further
from visiondojo.engine.runtime import Runtime
from visiondojo.plan import RuntimeParams

from conftest import FAST, TinyNet, make_problem

PINS = {**FAST, "epochs": 3, "batch_size": 32}


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    """The plan every case replays, and its clean run (8 steps per epoch)."""
    root = tmp_path_factory.mktemp("clean")
    train, test = make_problem(288, seed=3), make_problem(96, seed=4)
    run = visiondojo.fit(TinyNet(), train, test_data=test, out=root / "run", **PINS)
    return run, train, test


def _replay(clean, tmp_path, injected: faults.Faults, name: str = "run"):
    run, train, test = clean
    with faults.injected(injected):
        return visiondojo.train(TinyNet(), train, test_data=test, plan=run.dir / "plan.yaml", out=tmp_path / name,
                                progress=False)


def _notes(run) -> str:
    return " ".join(json.loads((run.dir / "metrics.json").read_text())["notes"])


def test_a_non_finite_step_is_skipped_and_the_run_goes_on(clean, tmp_path) -> None:
    injected = faults.Faults(nan_at={3, 11})
    run = _replay(clean, tmp_path, injected)
    assert injected.raised == ["nan@3", "nan@11"]
    assert [row.get("skipped_steps", 0) for row in run.history] == [1, 1, 0]
    assert all(torch.isfinite(torch.tensor(row["train_loss"])) for row in run.history)
    assert "epoch 1: 1 step(s) skipped for non-finite gradients" in _notes(run)
    assert abs(run.metrics["test"]["acc"] - clean[0].metrics["test"]["acc"]) <= 0.05


def test_non_finite_steps_in_a_row_roll_back_and_cut_the_learning_rate_for_an_epoch(clean, tmp_path) -> None:
    # 8 steps an epoch: a host copy every step, the older of the last two restored. Steps 12-14
    # (epoch 2, steps 4-6) fail: copies after steps 10 and 11 are kept; 10 is restored, 4 steps back.
    with pytest.warns(UserWarning, match="rolled back 4 steps, to the weights of epoch 2 step 2; learning rate "
                                         "x0.5, back to the schedule over one epoch"):
        run = _replay(clean, tmp_path, faults.Faults(nan_at={12, 13, 14}))
    assert "epoch 2, step 6: 3 steps in a row had non-finite gradients" in _notes(run)
    assert "roll-back 1 of at most 3" in _notes(run)
    assert run.metrics["test"]["acc"] > 0.5
    # The cut rises back: 2 of its 8 recovery steps done at the end of epoch 2, all at the end of epoch 3.
    baseline = {row["epoch"]: row["lr"] for row in clean[0].history}
    assert [row["lr"] for row in run.history] == pytest.approx([baseline[1], baseline[2] * 0.625, baseline[3]])


def test_non_finite_steps_in_a_row_across_an_epoch_end_roll_back_too(clean, tmp_path) -> None:
    with pytest.warns(UserWarning, match="epoch 2, step 1: 3 steps in a row had non-finite gradients"):
        run = _replay(clean, tmp_path, faults.Faults(nan_at={7, 8, 9}))  # epoch 1's last two, epoch 2's first
    assert [row.get("skipped_steps", 0) for row in run.history] == [2, 1, 0]


def test_a_second_roll_back_keeps_the_lower_learning_rate(clean, tmp_path) -> None:
    with pytest.warns(UserWarning, match="learning rate x0.5 for the rest of the run"):
        run = _replay(clean, tmp_path, faults.Faults(nan_at={4, 5, 6, 12, 13, 14}))
    assert "roll-back 2 of at most 3" in _notes(run)
    baseline = {row["epoch"]: row["lr"] for row in clean[0].history}
    assert run.history[-1]["lr"] == pytest.approx(baseline[3] * 0.5)


def test_rolled_back_weights_are_those_of_the_older_copy(clean, tmp_path, monkeypatch) -> None:
    """The restored state is the one kept two copies back, bit for bit, and the newer copy is dropped."""
    from visiondojo.engine import rollback

    restored = []
    roll_back = rollback.GoodStates.roll_back

    def watched(self, epoch_steps, earlier):
        older = self.kept[0]
        note = roll_back(self, epoch_steps, earlier)
        restored.append((older.step, [s.step for s in self.kept],
                         all(torch.equal(v, self.model.state_dict()[k].cpu()) for k, v in older.model.items())))
        return note

    monkeypatch.setattr(rollback.GoodStates, "roll_back", watched)
    with pytest.warns(UserWarning, match="rolled back"):
        _replay(clean, tmp_path, faults.Faults(nan_at={12, 13, 14}))
    assert restored == [(10, [10], True)]


def test_host_copies_reuse_their_buffers_and_a_roll_back_leaves_them_intact() -> None:
    """Two sets of host buffers take turns; after a roll-back the optimizer trains on its own
    tensors, not the kept copy's (its load keeps host tensors as they are)."""
    from visiondojo.engine.rollback import GoodStates
    from visiondojo.optimize.schedules import WarmupCosine

    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(0, 100))
    good = GoodStates(model, optimizer, scheduler, steps_per_epoch=8)  # a copy every step

    def step() -> None:
        optimizer.zero_grad()
        model(torch.randn(8, 4)).square().mean().backward()
        optimizer.step()
        scheduler.step()

    step()
    good.keep(1)
    first = good.buffers[0].tensors[:]
    for n in (2, 3):
        step()
        good.passed(n)
    assert [s.step for s in good.kept] == [2, 3] and [s.slot for s in good.kept] == [1, 0]
    assert all(a is b for a, b in zip(good.buffers[0].tensors, first))  # step 3 reused step 1's buffers
    kept = {k: v.clone() for k, v in good.kept[0].optimizer["state"][0].items()}
    weights = good.kept[0].model["weight"].clone()
    good.roll_back(3, earlier=0)
    assert torch.equal(model.weight.detach(), weights)
    # The cut rate applies from the next step on (the restored groups held the copy's).
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * 0.5 * WarmupCosine(0, 100)(3))
    step()
    step()
    assert all(torch.equal(good.kept[0].optimizer["state"][0][k], v) for k, v in kept.items())
    assert not torch.equal(optimizer.state_dict()["state"][0]["exp_avg"], kept["exp_avg"])


def test_host_copies_keep_the_memory_layout() -> None:
    """A channels_last tensor's copy keeps its strides (restored contiguous, a foreach optimizer
    would fall back to its per-tensor path)."""
    from visiondojo.engine.rollback import HostBuffers

    weight = torch.randn(4, 3, 3, 3).to(memory_format=torch.channels_last)
    copy = HostBuffers().fill({"w": weight})["w"]
    assert copy.stride() == weight.stride() and torch.equal(copy, weight)


def test_when_roll_backs_do_not_help_the_run_stops_saying_what_to_change(clean, tmp_path) -> None:
    with pytest.warns(UserWarning), pytest.raises(TrainingDiverged, match=r"after 3 roll-backs that cut the "
                                                  r"learning rate to x0.25\. Lower optimization.lr"):
        _replay(clean, tmp_path, faults.Faults(nan_at=set(range(4, 100))))


def test_under_a_grad_scaler_a_nan_loss_counts_as_a_skipped_step() -> None:
    """fp16's GradScaler skips overflowing steps on its own (not counted); a NaN loss is counted."""
    from visiondojo.engine.step import train_step
    from visiondojo.plan import DataParams
    from visiondojo.tasks import make_task

    torch.manual_seed(0)
    model, runtime = TinyNet(), Runtime(RuntimeParams())
    runtime.scaler = torch.amp.GradScaler("cpu")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    task = make_task(DataParams(task="multiclass", num_classes=4, class_names=list("abcd")))
    inputs, targets = torch.randn(8, 1, 8, 8), torch.arange(8) % 4
    before = [p.detach().clone() for p in model.parameters()]
    with faults.injected(faults.Faults(nan_at={1})) as injected:
        faults.next_step()
        assert train_step(model, task, optimizer, runtime, inputs, targets).stepped is False
        assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # the scaler skipped it
        faults.next_step()
        assert train_step(model, task, optimizer, runtime, inputs, targets).stepped is True
    assert injected.raised == ["nan@1"]
    assert not all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_out_of_memory_splits_the_batch_and_keeps_the_global_batch(clean, tmp_path) -> None:
    injected = faults.Faults(oom_at={2, 5, 17})
    with pytest.warns(UserWarning, match="out of memory; each batch of 32 now trains in 2 micro-batches"):
        run = _replay(clean, tmp_path, injected)
    assert injected.raised == ["oom@2"]  # later whole-batch attempts never happen: the split stays
    assert run.plan.optimization.batch_size == 32
    # TinyNet has no BatchNorm: two halves' accumulated gradients are the whole batch's (summation order aside).
    tolerance = 1e-5 if run.plan.runtime.precision == "fp32" else 1e-3  # bf16 on a GPU rounds coarser
    for name, value in clean[0].model.state_dict().items():
        assert torch.allclose(value, run.model.state_dict()[name], atol=tolerance), name


def test_a_sample_at_a_time_that_does_not_fit_is_a_clear_error() -> None:
    runtime = Runtime(RuntimeParams())
    optimizer = torch.optim.SGD(TinyNet().parameters(), lr=0.1)
    error = torch.OutOfMemoryError("CUDA out of memory")
    assert _split_further(error, 2, 32, runtime, optimizer) == 4
    with pytest.raises(OutOfMemory, match="a batch of 32 \\(even one image at a time does not fit\\): pin a "
                                          "smaller optimization.batch_size"):
        _split_further(error, 32, 32, runtime, optimizer)


def test_evaluation_that_runs_out_of_memory_is_done_in_halves() -> None:
    from visiondojo.engine.step import eval_outputs
    from visiondojo.tasks import make_task
    from visiondojo.plan import DataParams

    class Tight(TinyNet):
        """Runs out of memory on batches of more than 3 images."""

        def forward(self, x):
            if len(x) > 3:
                raise torch.OutOfMemoryError("CUDA out of memory (test)")
            return super().forward(x)

    model, runtime = Tight().eval(), Runtime(RuntimeParams())
    task = make_task(DataParams(task="multiclass", num_classes=4, class_names=list("abcd")))
    inputs = torch.randn(10, 1, 8, 8)
    expected = TinyNet().eval()(inputs)
    assert torch.allclose(eval_outputs(model, task, runtime, inputs), expected, atol=1e-6)
    model.forward = lambda x: (_ for _ in ()).throw(torch.OutOfMemoryError("CUDA out of memory (test)"))
    with pytest.raises(OutOfMemory, match="evaluating a single image"):
        eval_outputs(model, task, runtime, inputs)
