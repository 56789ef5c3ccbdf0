"""The Plan: YAML round trip, strict keys and types, pins, and epochs planned from a time budget."""

from __future__ import annotations

import json

import pytest
import yaml

import visiondojo
from visiondojo import ConfigError, Plan
from visiondojo.durations import format_duration, parse_duration

from conftest import FAST


def edited_plan() -> Plan:
    plan = Plan(seed=7, monitor="f1_macro")
    plan.data.task, plan.data.num_classes, plan.data.class_names = "multiclass", 3, ["a", "b", "c"]
    plan.data.mean, plan.data.std, plan.data.resize = [0.25, 0.5, 0.75], [0.1, 0.2, 0.3], [32, 48]
    plan.optimization.lr, plan.optimization.grad_clip_norm, plan.optimization.early_stopping_patience = 3e-4, 1.0, None
    plan.model.spec, plan.model.kwargs = "timm:resnet18", {"drop_rate": 0.1}
    plan.set("optimization.epochs", 12)
    plan.evidence["optimization.epochs"] = "pinned by the user"
    return plan


def test_yaml_round_trip(tmp_path):
    plan = edited_plan()
    assert Plan.from_dict(yaml.safe_load(plan.to_yaml())) == plan
    plan.save(tmp_path / "plan.yaml")
    loaded = Plan.load(tmp_path / "plan.yaml")
    assert loaded == plan
    assert loaded.pinned == ["optimization.epochs"] and loaded.optimization.epochs == 12
    assert loaded.to_yaml() == plan.to_yaml()


def test_partial_plan_fills_defaults():
    plan = Plan.from_dict({"optimization": {"lr": 1}, "seed": 3})
    assert plan.optimization.lr == 1.0 and isinstance(plan.optimization.lr, float)
    assert plan.optimization.epochs == Plan().optimization.epochs and plan.seed == 3


def test_run_plan_file_matches_the_run(tmp_path, tiny_net, problem, quick_fit):
    run = quick_fit(tiny_net(), problem(80), epochs=1)
    assert Plan.load(run.dir / "plan.yaml") == run.plan
    assert run.plan.data.train_size + run.plan.data.val_size == 80


def test_unknown_key_names_it_and_the_allowed_keys(tmp_path):
    with pytest.raises(ConfigError) as caught:
        Plan.from_dict({"optimization": {"lrr": 0.1}})
    message = str(caught.value)
    assert "plan.optimization: unknown key 'lrr'" in message
    assert "allowed keys: optimizer, lr, betas," in message and "budget_s" in message
    path = tmp_path / "plan.yaml"
    path.write_text("seed: 1\noptimisation:\n  lr: 0.1\n")
    with pytest.raises(ConfigError, match=rf"{path}: unknown key 'optimisation'; allowed keys: data, model, "
                                          r"optimization, regularization, ssl, runtime, seed, monitor, evidence, pinned"):
        Plan.load(path)


@pytest.mark.parametrize("section, value, message", [
    ({"optimization": {"epochs": "ten"}}, None, r"plan\.optimization\.epochs: expected int, got 'ten'"),
    ({"optimization": {"epochs": True}}, None, r"plan\.optimization\.epochs: expected int, got True"),
    ({"optimization": {"epochs": None}}, None, r"plan\.optimization\.epochs: expected int, got None"),
    ({"data": {"mean": 0.5}}, None, r"plan\.data\.mean: expected a list, got 0\.5"),
    ({"model": {"kwargs": [1]}}, None, r"plan\.model\.kwargs: expected a mapping"),
    ({"runtime": "cpu"}, None, r"plan\.runtime: expected a mapping, got 'cpu'"),
])
def test_wrong_types_are_config_errors(section, value, message):
    with pytest.raises(ConfigError, match=message):
        Plan.from_dict(section)


def test_plan_files_that_are_not_plans(tmp_path):
    with pytest.raises(ConfigError, match="plan file not found"):
        Plan.load(tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="a plan file is a YAML mapping, got list"):
        Plan.load(tmp_path / "list.yaml")


def test_set_and_choose_respect_pins():
    plan = Plan()
    with pytest.raises(ConfigError, match="plan has no field 'optimization.nope'"):
        plan.set("optimization.nope", 1)
    with pytest.raises(ConfigError, match="plan has no field 'seed.x'"):
        plan.set("seed.x", 1)
    plan.set("optimization.lr", 0.5)
    plan.choose("optimization.lr", 0.001, "a meta-learner's guess")
    plan.choose("optimization.batch_size", 64, "a meta-learner's guess")
    assert plan.optimization.lr == 0.5 and plan.evidence["optimization.lr"] == "pinned by the user"
    assert plan.optimization.batch_size == 64 and plan.evidence["optimization.batch_size"] == "a meta-learner's guess"
    assert plan.pinned == ["optimization.lr"]


def test_pins_are_respected_and_recorded(tiny_net, problem, quick_fit):
    pins = {"regularization.weight_decay": 0.0, "optimization.schedule": "constant"}
    run = quick_fit(tiny_net(), problem(120), epochs=2, batch_size=16, lr=0.005, pin=pins)
    opt = run.plan.optimization
    assert (opt.epochs, opt.batch_size, opt.lr, opt.schedule) == (2, 16, 0.005, "constant")
    assert run.plan.regularization.weight_decay == 0.0
    assert set(run.plan.pinned) == {"optimization.epochs", "optimization.batch_size", "optimization.lr",
                                    "regularization.weight_decay", "optimization.schedule"}
    assert all(run.plan.evidence[k] == "pinned by the user" for k in run.plan.pinned)
    assert len(run.history) == 2
    assert [row["lr"] for row in run.history] == [0.005, 0.005]  # constant after the warmup epoch
    saved = yaml.safe_load((run.dir / "plan.yaml").read_text())
    assert set(saved["pinned"]) == set(run.plan.pinned)


def test_unknown_pin_is_a_config_error(tiny_net, problem):
    with pytest.raises(ConfigError, match="plan has no field 'optimization.learning_rate'"):
        visiondojo.find_params(tiny_net(), problem(40), pin={"optimization.learning_rate": 0.1})


def test_default_plan_without_a_budget(tiny_net, problem):
    plan = visiondojo.find_params(tiny_net(), problem(200))
    assert plan.pinned == []
    assert 8 <= plan.optimization.batch_size <= 45  # the 180 training images make at least 4 steps per epoch
    assert plan.optimization.budget_s is None
    assert plan.evidence["optimization.epochs"].startswith("no time budget")
    assert plan.runtime.device == "cpu" and plan.runtime.channels_last is True  # a conv net


def test_budget_plans_epochs_from_measured_throughput(tiny_net, problem, tmp_path):
    run = visiondojo.fit(tiny_net(), problem(300), budget=8, out=tmp_path / "run", progress=False)
    plan = run.plan
    assert plan.optimization.budget_s == 8.0
    assert "img/s" in plan.evidence["optimization.epochs"] and "per epoch" in plan.evidence["optimization.epochs"]
    assert plan.optimization.epochs > 1
    assert plan.optimization.early_stopping_patience is None
    assert 1 <= len(run.history) <= plan.optimization.epochs
    metrics = json.loads((run.dir / "metrics.json").read_text())
    assert metrics["stop_reason"] in ("completed the planned epochs", "the time budget ran out mid-epoch",
                                      "the time budget: the schedule was shortened to end on time")


def test_pinned_epochs_win_over_the_budget(tiny_net, problem):
    plan = visiondojo.find_params(tiny_net(), problem(100), budget="30s", pin={"optimization.epochs": 3})
    assert plan.optimization.epochs == 3
    assert plan.evidence["optimization.epochs"] == "pinned by the user"
    assert plan.optimization.budget_s == 30.0


@pytest.mark.parametrize("text, seconds", [(300, 300.0), ("90s", 90.0), ("5m", 300.0), ("1h30m", 5400.0),
                                           ("2.5", 2.5), (" 1m 15s ", 75.0)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["soon", "5 minutes", "-3", "0", "1x"])
def test_bad_durations(text):
    with pytest.raises(ConfigError, match="budget"):
        parse_duration(text)


def test_bad_budget_fails_before_training(tiny_net, problem, tmp_path):
    with pytest.raises(ConfigError, match=r"budget: cannot read 'soon' as a duration"):
        visiondojo.fit(tiny_net(), problem(40), budget="soon", out=tmp_path / "run", **FAST)
    assert not (tmp_path / "run").exists()


def test_format_duration():
    assert [format_duration(s) for s in (5, 75, 3600, 5430.4)] == ["5s", "1m15s", "1h00m", "1h30m"]


def test_a_budgeted_fit_ends_on_time_and_spends_under_a_tenth_of_it_planning(tiny_net, problem, tmp_path):
    """Read from the run's own timing record: the whole call (data checks, meta-learners, training,
    final evaluation, report) within the budget plus 10%, and the meta-learners under 10% of it."""
    budget = 20.0
    run = visiondojo.fit(tiny_net(), problem(600), budget=budget, out=tmp_path / "run", progress=False)
    timing = json.loads((run.dir / "metrics.json").read_text())["timing"]
    assert timing["budget_s"] == budget
    assert set(timing) == {"budget_s", "data_and_model_s", "meta_learning_s", "training_s", "report_s", "total_s"}
    assert timing["meta_learning_s"] < 0.10 * budget
    assert timing["total_s"] <= 1.10 * budget
    # The budget went to training: most of what data checks and planning left (on any host's speed).
    assert timing["training_s"] > 0.5 * (budget - timing["data_and_model_s"] - timing["meta_learning_s"])
    parts = timing["data_and_model_s"] + timing["meta_learning_s"] + timing["training_s"] + timing["report_s"]
    assert parts <= timing["total_s"] + 0.05
