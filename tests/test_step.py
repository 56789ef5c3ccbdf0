"""The one training step, the Runtime's step and collectives, and the Task as the only model caller."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import visiondojo
from visiondojo.engine.runtime import Runtime
from visiondojo.engine.step import train_step
from visiondojo.errors import ConfigError
from visiondojo.plan import RegularizationParams, RuntimeParams
from visiondojo.regularize.batch import check_supported
from visiondojo.regularize.search import target_options_for
from visiondojo.tasks import Capabilities, LossSettings, MultiClassTask

from conftest import TinyNet, make_problem


def test_one_process_runtime_has_trivial_collectives() -> None:
    runtime = Runtime(RuntimeParams())
    assert (runtime.rank, runtime.world_size, runtime.is_main, runtime.distributed) == (0, 1, True, False)
    values = torch.tensor([1.0, 2.0])
    assert runtime.all_reduce(values, "max") is values and values.tolist() == [1.0, 2.0]
    plan = {"batch_size": 64}
    assert runtime.broadcast(plan) is plan
    runtime.barrier()
    with pytest.raises(ValueError, match="op 'mean'"):
        runtime.all_reduce(values, "mean")


def test_the_runtime_step_clips_the_optimizers_parameters() -> None:
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    reference = copy.deepcopy(model)
    inputs, targets = torch.randn(8, 4) * 50, torch.randint(0, 3, (8,))
    task = MultiClassTask(3)
    runtime = Runtime(RuntimeParams())
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    loss = train_step(model, task, optimizer, runtime, inputs, targets, grad_clip_norm=0.5).loss

    by_hand = torch.optim.SGD(reference.parameters(), lr=1.0)
    expected = nn.functional.cross_entropy(reference(inputs), targets)
    expected.backward()
    assert torch.nn.utils.clip_grad_norm_(reference.parameters(), 0.5) > 0.5  # clipping had work to do
    by_hand.step()
    assert float(loss) == pytest.approx(float(expected.detach()))
    for mine, theirs in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(mine, theirs)


class DictNet(nn.Module):
    """A model whose output is not a logits tensor: ``{"logits": ...}``, as many detection and
    segmentation models answer with a dict."""

    def __init__(self) -> None:
        super().__init__()
        self.body = TinyNet()

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"logits": self.body(x)}


class DictOutputTask(MultiClassTask):
    """Multi-class classification over ``DictNet``'s dict: only the forwards know the output's form."""

    calls = {"train": 0, "eval": 0}

    def forward_train(self, model, inputs, targets, settings=LossSettings()):
        DictOutputTask.calls["train"] += 1
        return super().forward_train(lambda x: model(x)["logits"], inputs, targets, settings)

    def forward_eval(self, model, inputs):
        DictOutputTask.calls["eval"] += 1
        return model(inputs)["logits"]


def test_every_model_call_of_fit_goes_through_the_task(tmp_path, monkeypatch) -> None:
    """A model whose output only its task understands trains, is probed, validated, tested and
    predicts through ``fit``: nothing outside the Task reads the model's output."""
    from visiondojo import prepare, run

    monkeypatch.setattr(prepare, "make_task", lambda data: DictOutputTask(data.num_classes))
    monkeypatch.setattr(run, "make_task", lambda data: DictOutputTask(data.num_classes))
    monkeypatch.setattr(visiondojo.choose, "META_SHARE", 0.4)  # the range test fits, however slow the host
    DictOutputTask.calls.update(train=0, eval=0)
    images, labels = make_problem(400, size=8, seed=7)
    result = visiondojo.fit(DictNet(), (images[:320], labels[:320]), test_data=(images[320:], labels[320:]),
                            out=tmp_path / "r", progress=False, budget=20,
                            regularization=RegularizationParams())
    assert result.metrics["test"]["acc"] > 0.9  # an easy problem, learned through the task's forwards
    assert "lr_finder" in result.plan.measurements  # the probes trained through it too
    assert DictOutputTask.calls["train"] > 0 and DictOutputTask.calls["eval"] > 0
    predictions = result.predict(images[320:340])
    assert (predictions.labels == torch.as_tensor(labels[320:340])).float().mean() > 0.9
    evidence = " ".join(result.plan.evidence.values())
    assert "Fashion-MNIST" not in evidence  # the plan speaks of the user's run, not of our benchmarks


def test_a_task_without_soft_labels_gets_no_soft_options_and_a_clear_refusal() -> None:
    class HardOnly(MultiClassTask):
        capabilities = Capabilities(per_sample_loss=True)

    class NoMixing(MultiClassTask):
        capabilities = Capabilities(soft_labels=True, per_sample_loss=True)

    assert target_options_for(HardOnly(3)) == []
    assert target_options_for(NoMixing(3)) == [{"label_smoothing": 0.1}]
    assert len(target_options_for(MultiClassTask(3))) == 3
    with pytest.raises(ConfigError, match="label_smoothing: the multiclass task has no soft labels"):
        check_supported(RegularizationParams(label_smoothing=0.1), HardOnly(3))
    with pytest.raises(ConfigError, match="cutmix: the multiclass task.s targets cannot follow cutmix"):
        check_supported(RegularizationParams(label_smoothing=0.1, cutmix=1.0), NoMixing(3))
    check_supported(RegularizationParams(label_smoothing=0.1, mixup=0.2), MultiClassTask(3))
