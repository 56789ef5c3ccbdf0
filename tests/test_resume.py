"""Exact resume and exact replay: the same plan and seed give bit-identical weights."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

import visiondojo
from visiondojo.engine import checkpoint, loop

from conftest import FAST, TinyNet, make_problem, state_dicts_equal

PINS = {**FAST, "epochs": 3}


class Interrupted(Exception):
    """Stands in for a crash or Ctrl-C between epochs."""


@pytest.fixture(scope="module")
def data():
    return make_problem(300, seed=3), make_problem(100, seed=4)


@pytest.fixture(scope="module")
def full_run(data, tmp_path_factory):
    train, test = data
    return visiondojo.fit(TinyNet(), train, test_data=test, out=tmp_path_factory.mktemp("full") / "run", **PINS)


def last_model_weights(run_dir):
    """The model tensors of checkpoints/last.safetensors: the weights after the final epoch."""
    return checkpoint.load_state(run_dir / "checkpoints" / loop.LAST)["model"]


def test_resume_after_an_interruption_gives_identical_weights(data, full_run, tmp_path, monkeypatch):
    train, test = data
    out = tmp_path / "run"
    save_last = loop._save_last

    def save_then_crash(directory, model, optimizer, scheduler, state, *rest):
        save_last(directory, model, optimizer, scheduler, state, *rest)
        if state.epoch == 2:  # epoch 2 done and its checkpoint written
            raise Interrupted

    monkeypatch.setattr(loop, "_save_last", save_then_crash)
    with pytest.raises(Interrupted):
        visiondojo.fit(TinyNet(), train, test_data=test, out=out, **PINS)
    monkeypatch.undo()
    assert not (out / "model.safetensors").exists()
    after_two = last_model_weights(out)
    with pytest.raises(visiondojo.VisionDojoError, match="did not finish"):
        visiondojo.load(out, model=TinyNet())

    # Resume with a model whose weights differ: the checkpoint must replace them.
    resumed = visiondojo.train(TinyNet(seed=123), train, test_data=test, plan=out / "plan.yaml", out=out,
                               resume=True, progress=False)

    assert [row["epoch"] for row in resumed.history] == [1, 2, 3]
    final = last_model_weights(out)
    assert state_dicts_equal(final, last_model_weights(full_run.dir))
    assert not state_dicts_equal(final, after_two)  # epoch 3 really trained
    assert state_dicts_equal(resumed.model, full_run.model)  # the best weights, as returned
    assert load_file(str(out / "model.safetensors")).keys() == load_file(str(full_run.dir / "model.safetensors")).keys()
    assert resumed.metrics == full_run.metrics
    timing = {"train_s", "epoch_s", "train_images_per_s"}
    strip = lambda history: [{k: v for k, v in row.items() if k not in timing} for row in history]  # noqa: E731
    assert strip(resumed.history) == strip(full_run.history)


def test_resume_restores_optimizer_and_schedule(data, tmp_path, monkeypatch):
    """The checkpoint carries the AdamW moments and the learning-rate position, not just weights."""
    train, _ = data
    out = tmp_path / "run"
    save_last = loop._save_last

    def save_then_crash(directory, model, optimizer, scheduler, state, *rest):
        save_last(directory, model, optimizer, scheduler, state, *rest)
        raise Interrupted

    monkeypatch.setattr(loop, "_save_last", save_then_crash)
    with pytest.raises(Interrupted):
        visiondojo.fit(TinyNet(), train, out=out, **PINS)
    saved = checkpoint.load_state(out / "checkpoints" / loop.LAST)
    steps_per_epoch = saved["loop"]["step"]
    assert saved["loop"]["epoch"] == 1 and steps_per_epoch == 270 // PINS["batch_size"]
    assert saved["scheduler"]["last_epoch"] == steps_per_epoch
    adam = saved["optimizer"]["state"]
    assert len(adam) == 4 and all(float(s["step"]) == steps_per_epoch for s in adam.values())
    assert all(s["exp_avg_sq"].abs().sum() > 0 for s in adam.values())
    assert len(saved["loop"]["history"]) == 1


def test_plan_replay_reproduces_the_weights(data, full_run, tmp_path):
    train, test = data
    replay = visiondojo.train(TinyNet(), train, test_data=test, plan=full_run.dir / "plan.yaml",
                              out=tmp_path / "replay", progress=False)
    assert replay.plan == full_run.plan
    assert (tmp_path / "replay" / "plan.yaml").read_text() == (full_run.dir / "plan.yaml").read_text()
    assert state_dicts_equal(replay.model, full_run.model)
    assert state_dicts_equal(last_model_weights(tmp_path / "replay"), last_model_weights(full_run.dir))
    assert replay.metrics == full_run.metrics


def test_replay_with_another_seed_differs(data, full_run, tmp_path):
    """The seed matters (so the equality above is not vacuous)."""
    train, test = data
    plan = visiondojo.Plan.load(full_run.dir / "plan.yaml")
    plan.seed = 1
    visiondojo.train(TinyNet(), train, test_data=test, plan=plan, out=tmp_path / "other", progress=False)
    assert not state_dicts_equal(last_model_weights(tmp_path / "other"), last_model_weights(full_run.dir))


def test_replay_of_a_spec_model_rebuilds_it(data, tmp_path):
    """``model=None`` builds ``plan.model.spec`` with the plan's kwargs and seed: same initial weights."""
    (train_images, labels), _ = data
    padded = torch.nn.functional.pad(torch.from_numpy(train_images[:48]), (10, 10, 10, 10)).numpy()  # 28x28
    labels = labels[:48]
    pins = {**PINS, "epochs": 2, "batch_size": 16}
    original = visiondojo.fit("fmnist-resnet", (padded, labels), model_kwargs={"width": 4}, out=tmp_path / "a", **pins)
    torch.manual_seed(1234)  # the global RNG state must not matter
    replay = visiondojo.train(None, (padded, labels), plan=tmp_path / "a" / "plan.yaml", out=tmp_path / "b",
                              progress=False)
    assert isinstance(replay.model, visiondojo.FMNISTResNet)
    assert replay.model.fc.in_features == 16
    assert state_dicts_equal(replay.model, original.model)
