"""The augmentation-policy search: distances, groups, the greedy search and its budget, replay."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import yaml

import visiondojo
from visiondojo.data.batches import Normalizer, make_batches
from visiondojo.data.sources import DataOptions, as_source
from visiondojo.engine.loop import run_training
from visiondojo.engine.runtime import Runtime
from visiondojo.plan import RegularizationParams, RuntimeParams
from visiondojo.regularize.distance import Distance, measure_distances
from visiondojo.regularize.groups import group_pairs
from visiondojo.regularize.search import ProxyOutcome, search_policy

from conftest import FAST, TinyNet, make_problem, state_dicts_equal


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A TinyNet trained briefly on the stripes problem, and 512 of its training images in [0, 1]."""
    images, labels = make_problem(600, size=16, seed=5)
    run = visiondojo.fit(TinyNet(), (images, labels), out=tmp_path_factory.mktemp("run") / "r",
                         pin={"regularization.augment": []}, **FAST)
    runtime = Runtime(RuntimeParams())
    normalizer = Normalizer(run.plan.data, runtime.device)
    pixels = normalizer.unit(torch.as_tensor(images[:512]).unsqueeze(1))
    return run, pixels, torch.as_tensor(labels[:512]), normalizer, runtime


def _distances(trained, ops, magnitudes):
    run, pixels, labels, normalizer, runtime = trained
    task = visiondojo.tasks.make_task(run.plan.data)
    return measure_distances(run.model, task, pixels, labels, ops, normalizer, runtime, magnitudes=magnitudes)


def test_identity_has_zero_distance(trained) -> None:
    rows = _distances(trained, ["rotate", "brightness", "erase"], (0.0,))
    assert all(row.distance == pytest.approx(0.0, abs=1e-9) and row.loss_shift == pytest.approx(0.0, abs=1e-6)
               for row in rows)


@pytest.mark.parametrize("op", ["rotate", "translate", "brightness", "noise", "erase"])
def test_distance_grows_with_magnitude(trained, op: str) -> None:
    rows = _distances(trained, [op], (0.25, 0.5, 1.0))
    distances = [row.distance for row in rows]
    assert distances == sorted(distances) and distances[0] > 0, distances


def test_grouping_is_deterministic_and_orders_levels() -> None:
    rows = [Distance(op, m, d, 0.0) for op, m, d in [
        ("rotate", 0.2, 0.010), ("rotate", 1.0, 0.50), ("shear", 0.2, 0.012), ("shear", 1.0, 0.45),
        ("translate", 0.5, 0.10), ("zoom", 0.5, 0.09), ("brightness", 0.5, 0.05), ("hue", 1.0, 0.0),
    ]]
    first, second = group_pairs(rows), group_pairs(list(rows))
    assert [(g.name, g.pairs) for g in first] == [(g.name, g.pairs) for g in second]
    spatial = {g.level: g for g in first if g.family == "spatial"}
    assert set(spatial) == {"weak", "medium", "strong"}
    assert spatial["weak"].distance < spatial["medium"].distance < spatial["strong"].distance
    assert set(spatial["weak"].pairs) == {("rotate", 0.2), ("shear", 0.2)}
    assert set(spatial["strong"].pairs) == {("rotate", 1.0), ("shear", 1.0)}
    assert all(("hue", 1.0) not in g.pairs for g in first)  # no effect on the data: dropped


def _search_inputs(n: int = 1500):
    images, labels = make_problem(n, size=12, seed=9)
    plan = visiondojo.find_params(TinyNet(), (images, labels), pin={"optimization.batch_size": 32,
                                                                    "optimization.lr": 0.01, "optimization.epochs": 4,
                                                                    "regularization.augment": []})
    source = as_source((images, labels), DataOptions(), role="train")
    train, val = source.subset(torch.arange(0, n - 300)), source.subset(torch.arange(n - 300, n))
    task = visiondojo.tasks.make_task(plan.data)
    return plan, train, val, task


def test_search_respects_its_allowance(proxy_clock) -> None:
    plan, train, val, task = _search_inputs()
    allowance = 3.0
    clock = proxy_clock(0.8)  # 0.8 s a proxy: the fourth ends at 3.2, past the allowance
    result = search_policy(plan, TinyNet(), task, train, val, Runtime(RuntimeParams()), allowance,
                           train_images_per_s=40_000, eval_images_per_s=100_000)
    assert result is not None
    # It never starts a proxy it expects to overrun: three fit (2.4 s), a fourth would end at 3.2 s.
    assert result.seconds == pytest.approx(2.4) and result.stopped.startswith("the search allowance ran out")
    assert result.space["proxy_trainings"] == len(result.trials) == clock.proxies == 3
    assert result.trials[0].groups == {} and result.trials[0].target_options == {}


def proxy_outcome(score: float, images: int = 300) -> ProxyOutcome:
    """A proxy's outcome with accuracy ``score`` on nested correct sets: a higher score gets right every
    image a lower one does, so a paired test sees every difference as the better proxy's wins."""
    return ProxyOutcome(score, torch.arange(images) < round(score * images))


SYNTHETIC = [Distance(op, m, d, 0.0) for op, m, d in [
    ("rotate", 0.2, 0.01), ("rotate", 0.6, 0.1), ("rotate", 1.0, 1.0),
    ("brightness", 0.2, 0.01), ("brightness", 0.6, 0.1), ("brightness", 1.0, 1.0),
]]


def test_search_scores_combinations(monkeypatch) -> None:
    """Color only pays off on top of medium geometry: a search scoring ops alone would miss it."""
    from visiondojo.regularize import search

    def fake_run(self, augment, options, measure=None):
        groups = {op.group for op in augment}
        score = 0.80 + 0.03 * ("wide/weak" in groups) + 0.05 * ("spatial/medium" in groups)
        score += 0.03 * ({"spatial/medium", "color/weak"} <= groups) - 0.02 * ("color/weak" in groups and
                                                                            "spatial/medium" not in groups)
        score += 0.03 * (options == {"label_smoothing": 0.1})
        return proxy_outcome(score), (SYNTHETIC if measure is not None else None)

    monkeypatch.setattr(search.Proxy, "run", fake_run)
    plan, train, val, task = _search_inputs()
    result = search_policy(plan, TinyNet(), task, train, val, Runtime(RuntimeParams()), 1e6,
                           train_images_per_s=1e6, eval_images_per_s=1e6)
    assert {op.group for op in result.augment} == {"wide/weak", "spatial/medium", "color/weak"}
    assert result.target_options == {"label_smoothing": 0.1}
    color_trials = [t for t in result.trials if "color" in t.groups]  # the color step
    assert color_trials and all(t.groups.get("spatial") == "medium" for t in color_trials)
    # color medium scores below color weak, so color strong is never tried (stronger only hurts more)
    assert [t.groups["color"] for t in color_trials] == ["weak", "medium"]
    # wide weak helps, wide medium does not (so no wide strong); label smoothing helps, mixup on top
    # does not (so no CutMix); 3 spatial levels, 2 color levels
    assert [t.groups for t in result.trials[1:3]] == [{"wide": "weak"}, {"wide": "medium"}]
    assert [t.target_options for t in result.trials[3:5]] == [{"label_smoothing": 0.1}, {"label_smoothing": 0.1, "mixup": 0.2}]
    assert result.space["proxy_trainings"] == 1 + 2 + 2 + 3 + 2 + 2 == len(result.trials) + 2
    assert result.stopped == "tried every planned combination"
    # every adopted change was significant on the paired test; the gain held at half the subset
    adopted = [t for t in result.trials if t.groups.get("spatial") == "medium" and "color" not in t.groups]
    assert len(adopted) == 1 and adopted[0].test["verdict"] == "accepted" and adopted[0].test["p_value"] < 0.05 / 3
    assert result.extrapolation["kept"] and result.extrapolation["sizes"] == [600, 1200]


def test_when_no_wide_menu_helps_the_search_refines_no_family(monkeypatch) -> None:
    """A run too short for augmentation to pay off: the weakest wide menu loses to none, so the search
    ends after the soft labels, without spending proxies on single families."""
    from visiondojo.regularize import search

    def fake_run(self, augment, options, measure=None):
        score = 0.75 - 0.02 * bool(augment) + 0.03 * (options.get("label_smoothing", 0) > 0) - 0.03 * (options.get("mixup", 0) > 0)
        return proxy_outcome(score), (SYNTHETIC if measure is not None else None)

    monkeypatch.setattr(search.Proxy, "run", fake_run)
    plan, train, val, task = _search_inputs()
    result = search_policy(plan, TinyNet(), task, train, val, Runtime(RuntimeParams()), 1e6,
                           train_images_per_s=1e6, eval_images_per_s=1e6)
    assert result.augment == [] and result.target_options == {"label_smoothing": 0.1}
    assert [(t.groups, t.target_options) for t in result.trials] == [
        ({}, {}), ({"wide": "weak"}, {}), ({}, {"label_smoothing": 0.1}), ({}, {"label_smoothing": 0.1, "mixup": 0.2})]
    assert "no wide menu beat no augmentation (0.7300 for the weakest against 0.7500)" in result.stopped
    assert result.stopped.endswith("no family refinements")


def test_a_proxy_validated_once_trains_the_weights_of_one_validated_every_epoch(tmp_path) -> None:
    """Proxies skip the per-epoch validation passes: the weights and the final score are unchanged."""
    plan, train, val, task = _search_inputs(600)
    plan.optimization.early_stopping_patience = None
    runtime = Runtime(RuntimeParams())
    normalizer = Normalizer(plan.data, runtime.device)
    initial = TinyNet()
    models, results = [], []
    for each_epoch in (True, False):
        model = copy.deepcopy(initial)
        batches = make_batches(train, 32, runtime.device, train=True, seed=plan.seed)
        results.append(run_training(model, task, plan, batches, make_batches(val, 256, runtime.device, train=False),
                                    runtime, normalizer, tmp_path / str(each_epoch), validate_each_epoch=each_epoch))
        models.append(model)
    assert state_dicts_equal(models[0], models[1])
    every, once = results
    assert once.kept_metric == every.kept_metric and once.kept_epoch == every.kept_epoch == 4
    assert [any(k.startswith("val_") for k in row) for row in once.history] == [False, False, False, True]
    plan.optimization.keep = "best"
    with pytest.raises(ValueError, match="validate_each_epoch=False needs keep 'last'"):
        run_training(copy.deepcopy(initial), task, plan, make_batches(train, 32, runtime.device, train=True), [],
                     runtime, normalizer, tmp_path / "bad", validate_each_epoch=False)


def test_wide_menu_holds_every_group_up_to_its_level(monkeypatch) -> None:
    """A wide menu is one menu across families; a level that does not beat the best so far ends the step."""
    from visiondojo.regularize import search

    def fake_run(self, augment, options, measure=None):
        groups = {op.group for op in augment}
        score = 0.80 + 0.04 * ("wide/medium" in groups) - 0.03 * ("wide/strong" in groups)
        score -= 0.01 * any(g.startswith(("spatial", "color")) for g in groups)  # stacking on top hurts
        return proxy_outcome(score), (SYNTHETIC if measure is not None else None)

    monkeypatch.setattr(search.Proxy, "run", fake_run)
    plan, train, val, task = _search_inputs()
    result = search_policy(plan, TinyNet(), task, train, val, Runtime(RuntimeParams()), 1e6,
                           train_images_per_s=1e6, eval_images_per_s=1e6, search_targets=False)
    assert {op.group for op in result.augment} == {"wide/medium"}
    weak_and_medium = {(r.op, r.magnitude) for r in SYNTHETIC if r.magnitude < 1.0}
    assert {(op.name, op.magnitude) for op in result.augment} == weak_and_medium
    # each family's first stacked level scores below the best: one proxy per family
    assert [t.groups for t in result.trials[4:]] == [{"wide": "medium", "spatial": "weak"},
                                                     {"wide": "medium", "color": "weak"}]


def test_too_small_allowance_skips_the_search() -> None:
    plan, train, val, task = _search_inputs()
    assert search_policy(plan, TinyNet(), task, train, val, Runtime(RuntimeParams()), 0.01,
                         train_images_per_s=1000, eval_images_per_s=1000) is None


def test_fit_searches_by_default_and_the_policy_replays(tmp_path, monkeypatch, proxy_clock) -> None:
    from visiondojo.regularize import choose, search

    monkeypatch.setattr(search, "MIN_SUBSET", 128)  # proxies on a few hundred images, whatever the CPU speed
    monkeypatch.setattr(choose, "MAX_MIN_EFFECT", 0.1)  # 200 validation images: only large gains count
    # No budget (a guard on the real clock could re-plan the run, and the replay below would differ);
    # the search's allowance, speeds and clock fixed: the same proxies on any host (3 of 0.6 s fit 2 s).
    proxy_clock(0.6)
    real_search = choose.search_policy
    monkeypatch.setattr(choose, "search_policy", lambda plan, model, task, train, val, runtime, allowance, *speeds,
                        **kwargs: real_search(plan, model, task, train, val, runtime, 2.0, 20_000.0, 100_000.0,
                                              **kwargs))
    images, labels = make_problem(2000, size=12, seed=11)
    run = visiondojo.fit(TinyNet(), (images, labels), out=tmp_path / "searched", progress=False,
                         pin={"optimization.batch_size": 32, "optimization.lr": 0.01, "optimization.epochs": 3})
    search = run.plan.measurements["augment_search"]
    assert search["space"]["proxy_trainings"] == len(search["trials"]) == 3
    assert "regularization.augment" in run.plan.evidence and not run.plan.is_pinned("regularization.augment")
    assert "Augmentation search" in (run.dir / "report.html").read_text()
    saved = RegularizationParams.load(run.dir / "plan.yaml")
    assert saved == run.plan.regularization

    # The plan replays exactly (no second search).
    replay = visiondojo.train(TinyNet(), (images, labels), plan=run.dir / "plan.yaml", out=tmp_path / "replay",
                              progress=False)
    assert state_dicts_equal(replay.model, run.model)

    # A saved policy is used as given: no search.
    given = visiondojo.fit(TinyNet(), (images, labels), out=tmp_path / "given", regularization=run.dir / "plan.yaml",
                           progress=False, **{k: v for k, v in FAST.items() if k != "progress"})
    assert "augment_search" not in given.plan.measurements
    assert given.plan.regularization.augment == run.plan.regularization.augment
    assert yaml.safe_load((given.dir / "plan.yaml").read_text())["regularization"]["augment"] == \
        [vars(op) for op in run.plan.regularization.augment]
    assert math.isfinite(given.metrics["val"]["acc"])


@pytest.mark.parametrize("epochs, expected", [(6, set()), (25, {"trivial"})])
def test_without_time_to_search_long_runs_get_trivialaugment(tmp_path, monkeypatch, epochs, expected) -> None:
    from visiondojo.regularize import choose

    monkeypatch.setattr(choose, "search_policy", lambda *args, **kwargs: None)  # no time for proxies
    monkeypatch.setattr(choose, "MAX_MIN_EFFECT", 1.0)  # 30 validation images would make it underpowered
    images, labels = make_problem(300, size=8, seed=12)
    run = visiondojo.fit(TinyNet(), (images, labels), out=tmp_path / "r", progress=False,
                         pin={"optimization.batch_size": 32, "optimization.lr": 0.01, "optimization.epochs": epochs})
    assert {op.group for op in run.plan.regularization.augment} == expected
    assert "too little for" in run.plan.evidence["regularization.augment"]


def test_runs_longer_than_any_proxy_get_trivialaugment_without_a_search(tmp_path, monkeypatch) -> None:
    """Proxies of 5 epochs cannot stand for a run of 6 (on a few labeled images such proxies prefer
    no augmentation, the run memorizes): no search, the prior."""
    from visiondojo.regularize import choose

    def no_search(*args, **kwargs):
        raise AssertionError("the search must not run")

    monkeypatch.setattr(choose, "search_policy", no_search)
    monkeypatch.setattr(choose, "PROXY_EPOCHS", (2, 5))
    monkeypatch.setattr(choose, "PRIOR_MIN_EPOCHS", 6)
    images, labels = make_problem(300, size=8, seed=12)
    run = visiondojo.fit(TinyNet(), (images, labels), out=tmp_path / "r", progress=False,
                         pin={"optimization.batch_size": 32, "optimization.lr": 0.01, "optimization.epochs": 6})
    assert {op.group for op in run.plan.regularization.augment} == {"trivial"}
    assert "6 planned epochs are more than the 5 a proxy training can run" in run.plan.evidence["regularization.augment"]
    assert "augment_search" not in run.plan.measurements
