"""The command line end to end on a tiny image folder: train, replay, resume refusal, evaluate, predict, demo."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from visiondojo.cli import main


def _write_split(root: Path, per_class: int, rng: np.random.Generator) -> None:
    """Two classes: the bright half of a 12x12 image is the left or the right one."""
    for name in ("left", "right"):
        folder = root / name
        folder.mkdir(parents=True)
        for i in range(per_class):
            pixels = (rng.random((12, 12)) * 60).astype(np.uint8)
            half = slice(0, 6) if name == "left" else slice(6, 12)
            pixels[:, half] += 150
            Image.fromarray(pixels).save(folder / f"{i}.png")


@pytest.fixture()
def project(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    _write_split(tmp_path / "train", 40, rng)
    _write_split(tmp_path / "test", 10, rng)
    (tmp_path / "config.yaml").write_text(
        "data:\n  train: train\n  test: test\n"
        "model:\n  spec: fmnist-resnet\n  kwargs: {width: 4}\n"
        "training:\n  epochs: 6\n  lr: 0.01\n"
        "output:\n  dir: run\n"
    )
    return tmp_path


def test_train_evaluate_predict(project: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(project)
    assert main(["train", "config.yaml", "--quiet", "--set", "training.seed=1"]) == 0
    run = project / "run"
    for name in ("model.safetensors", "plan.yaml", "metrics.json", "history.csv", "report.html"):
        assert (run / name).is_file(), name
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test"]["acc"] >= 0.9
    plan_text = (run / "plan.yaml").read_text()
    assert "seed: 1" in plan_text and "lr: 0.01" in plan_text
    with (run / "history.csv").open() as handle:
        assert len(list(csv.DictReader(handle))) == 6

    capsys.readouterr()
    assert main(["evaluate", "run", "--data", "test"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["acc"] == pytest.approx(metrics["test"]["acc"])

    images = ["test/left/0.png", "test/right/0.png"]
    assert main(["predict", "run", *images]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split("\t")[1] for line in lines] == ["left", "right"]
    assert main(["predict", "run", *images, "--out", "predictions.csv"]) == 0
    with open("predictions.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["prediction"] for r in rows] == ["left", "right"]
    assert all(0.5 < float(r["probability"]) <= 1.0 for r in rows)


def test_plan_replay_and_existing_run(project: Path, monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(project)
    assert main(["train", "config.yaml", "--quiet", "--set", "training.epochs=2"]) == 0
    # The same folder again is refused, and the run is untouched.
    before = (project / "run" / "model.safetensors").read_bytes()
    capsys.readouterr()
    assert main(["train", "config.yaml", "--quiet"]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert (project / "run" / "model.safetensors").read_bytes() == before
    # Replaying plan.yaml (data locations come from the plan) reproduces the weights exactly.
    assert main(["train", "--plan", "run/plan.yaml", "--out", "replay", "--quiet"]) == 0
    assert (project / "replay" / "model.safetensors").read_bytes() == before


def test_config_errors_name_the_key(project: Path, monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(project)
    assert main(["train", "config.yaml", "--set", "training.learning_rate=0.1"]) == 2
    err = capsys.readouterr().err
    assert "training.learning_rate" in err and "lr" in err and "batch_size" in err
    assert main(["train", "config.yaml", "--set", "training.precision=fp8"]) == 2
    err = capsys.readouterr().err
    assert "training.precision" in err and "bf16" in err
    assert main(["train", "config.yaml", "--set", "training.budget=soon"]) == 2
    assert "duration" in capsys.readouterr().err
    # Without a config there is nothing to start again from: resuming needs the run.
    assert main(["train", "--resume", "--out", "missing"]) == 2
    assert "no run to resume" in capsys.readouterr().err


def test_demo_runs_under_a_small_budget(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["demo", "--budget", "15", "--out", str(tmp_path / "demo"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "report.html" in out
    metrics = json.loads((tmp_path / "demo" / "metrics.json").read_text())
    assert metrics["test"]["acc"] > 0.8
