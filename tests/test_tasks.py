"""Binary, multi-class and multi-label classification trained end to end with ``fit``."""

from __future__ import annotations

import base64
import csv
import json
import re

import numpy as np
import pytest
import torch
import yaml

import visiondojo
from visiondojo.engine.loop import BEST, LAST

from conftest import FAST, TinyNet, make_problem, state_dicts_equal

CLASSES = {"binary": 2, "multiclass": 4, "multilabel": 3}
OUTPUTS = {"binary": 1, "multiclass": 4, "multilabel": 3}
ACCURACY_FLOOR = 0.95


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One finished run per task (fitted on first use), with its test data."""
    cache = {}

    def get(task):
        if task not in cache:
            train = make_problem(400, task=task, classes=CLASSES[task], seed=1)
            test = make_problem(200, task=task, classes=CLASSES[task], seed=2)
            out = tmp_path_factory.mktemp(task) / "run"
            run = visiondojo.fit(TinyNet(outputs=OUTPUTS[task]), train, test_data=test, out=out, **FAST)
            cache[task] = run, test
        return cache[task]

    return get


@pytest.mark.parametrize("task", ["binary", "multiclass", "multilabel"])
def test_task_trains_to_the_accuracy_floor(runs, task):
    run, (images, labels) = runs(task)
    assert run.plan.data.task == task
    assert run.plan.data.num_outputs == OUTPUTS[task]
    test = run.metrics["test"]
    assert test["acc"] >= ACCURACY_FLOOR
    assert test["f1_macro"] >= ACCURACY_FLOOR
    assert test["auroc"] >= 0.97
    k = CLASSES[task]
    assert len(test["precision"]) == k and len(test["recall"]) == k
    assert all(0.0 <= v <= 1.0 for v in test["precision"] + test["recall"])
    assert min(test["recall"]) >= 0.8  # no class is left behind
    assert set(run.metrics) == {"val", "test"}
    if task == "multilabel":
        assert 0.0 <= test["exact_match"] <= test["acc"]
    # Predictions agree with the reported test accuracy.
    predictions = run.predict(images)
    truth = torch.as_tensor(labels)
    if task == "multilabel":
        assert tuple(predictions.labels.shape) == (200, 3) and tuple(predictions.scores.shape) == (200, 3)
        accuracy = (predictions.labels == truth.long()).float().mean().item()
    else:
        assert tuple(predictions.labels.shape) == (200,) and tuple(predictions.scores.shape) == (200, k)
        assert torch.allclose(predictions.scores.sum(dim=1), torch.ones(200), atol=1e-5)
        accuracy = (predictions.labels == truth).float().mean().item()
    assert accuracy == pytest.approx(test["acc"], abs=1e-6)


def test_training_improves_on_the_untrained_model(runs):
    run, _ = runs("multiclass")
    history = run.history
    assert [row["epoch"] for row in history] == list(range(1, FAST["epochs"] + 1))
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert history[-1]["val_loss"] < history[0]["val_loss"]
    assert history[-1]["lr"] < FAST["lr"] / 10  # the cosine schedule anneals to the end


def test_run_folder_contents(runs):
    run, _ = runs("multiclass")
    folder = run.dir
    for name in ("model.safetensors", "plan.yaml", "metrics.json", "history.csv", "report.html"):
        assert (folder / name).is_file(), name
    assert (folder / "checkpoints" / LAST).is_file() and (folder / "checkpoints" / BEST).is_file()
    assert not list(folder.rglob("*.tmp"))

    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["test"] == run.metrics["test"] and metrics["val"] == run.metrics["val"]
    assert 1 <= metrics["best_epoch"] <= FAST["epochs"]
    assert metrics["stop_reason"] == "completed the planned epochs"

    with (folder / "history.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == FAST["epochs"]
    assert {"epoch", "lr", "train_loss", "val_loss", "val_acc", "val_f1_macro", "val_auroc"} <= set(rows[0])
    assert float(rows[-1]["val_acc"]) == pytest.approx(run.history[-1]["val_acc"])

    plan = yaml.safe_load((folder / "plan.yaml").read_text())
    assert plan["optimization"]["epochs"] == FAST["epochs"]
    assert plan["data"]["task"] == "multiclass"


def test_report_is_self_contained_html(runs):
    run, _ = runs("multiclass")
    text = run.report.read_text()
    assert text.startswith("<!doctype html>")
    pngs = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)
    assert len(pngs) >= 2  # learning curves and confusion matrix
    assert all(base64.b64decode(png)[:8] == b"\x89PNG\r\n\x1a\n" for png in pngs)
    assert "Per-class precision and recall (test)" in text
    assert "http://" not in text and "https://" not in text  # renders offline


def test_load_and_evaluate_reproduce_the_metrics(runs):
    run, test = runs("multiclass")
    loaded = visiondojo.load(run.dir, model=TinyNet(outputs=4, seed=99))
    assert loaded.plan == run.plan
    assert loaded.metrics["test"] == run.metrics["test"]
    assert len(loaded.history) == len(run.history)
    images = test[0]
    assert torch.equal(loaded.predict(images).labels, run.predict(images).labels)
    metrics = visiondojo.evaluate(run.dir, test, model=TinyNet(outputs=4))
    assert metrics["acc"] == pytest.approx(run.metrics["test"]["acc"], abs=1e-6)
    assert metrics["loss"] == pytest.approx(run.metrics["test"]["loss"], abs=1e-4)


def test_load_of_a_python_model_needs_the_model(runs):
    run, _ = runs("multiclass")
    with pytest.raises(visiondojo.VisionDojoError, match="pass an instance of it"):
        visiondojo.load(run.dir)


def test_binary_predictions_are_class_indices(runs):
    run, (images, labels) = runs("binary")
    predictions = run.predict(images[:10])
    assert set(predictions.labels.tolist()) <= {0, 1}
    assert predictions.names() == [str(int(v)) for v in predictions.labels]
    assert np.array_equal(predictions.labels.numpy(), (predictions.scores[:, 1] > 0.5).long().numpy())


def test_multilabel_names_list_every_label(runs):
    run, _ = runs("multilabel")
    images, labels = make_problem(3, task="multilabel", classes=3, seed=7)
    names = run.predict(images).names()
    assert all(isinstance(row, list) for row in names)
    assert [sorted(row) for row in names] == [[str(k) for k in np.flatnonzero(row)] for row in labels]


def test_binary_data_with_two_outputs_trains_as_a_two_class_softmax(tmp_path):
    """nn.Linear(features, 2) + cross-entropy is the common binary classifier: it trains, as a 2-class softmax."""
    train = make_problem(400, task="binary", seed=1)
    test = make_problem(200, task="binary", seed=2)
    run = visiondojo.fit(TinyNet(outputs=2), train, test_data=test, out=tmp_path / "run", **FAST)
    plan = run.plan
    assert (plan.data.task, plan.data.num_classes, plan.data.num_outputs) == ("multiclass", 2, 2)
    assert plan.evidence["data.task"].startswith("binary data, and the model has 2 outputs: trained as a 2-class "
                                                 "softmax")
    assert run.metrics["test"]["acc"] >= ACCURACY_FLOOR
    # Prediction, evaluation and loading read the softmax from the plan.
    images, labels = test
    predictions = run.predict(images)
    assert tuple(predictions.scores.shape) == (200, 2)
    assert (predictions.labels == torch.as_tensor(labels)).float().mean().item() == pytest.approx(
        run.metrics["test"]["acc"], abs=1e-6)
    metrics = visiondojo.evaluate(run.dir, test, model=TinyNet(outputs=2))
    assert metrics["acc"] == pytest.approx(run.metrics["test"]["acc"], abs=1e-6)
    # A replay of the saved plan trains the same softmax, to the same weights.
    saved = visiondojo.Plan.load(run.dir / "plan.yaml")
    again = visiondojo.train(TinyNet(outputs=2), train, test_data=test, plan=saved, out=tmp_path / "replay",
                             progress=False)
    assert again.plan.data.task == "multiclass" and again.plan.evidence["data.task"] == plan.evidence["data.task"]
    assert state_dicts_equal(again.model, run.model)


def test_binary_data_with_one_output_keeps_the_sigmoid(runs):
    run, _ = runs("binary")
    assert (run.plan.data.task, run.plan.data.num_outputs) == ("binary", 1)
    assert run.plan.evidence["data.task"].startswith("binary data, and the model has 1 output: one sigmoid logit")


def test_a_replay_keeps_the_task_of_its_plan(runs):
    """A sigmoid plan replayed with a 2-output model is refused, not silently turned into a softmax."""
    run, _ = runs("binary")
    with pytest.raises(visiondojo.ModelError, match=r"outputs \(2, 2\) .* needs \(2, 1\) \(1 logit\);"):
        visiondojo.train(TinyNet(outputs=2), make_problem(40, task="binary"), plan=run.plan)
