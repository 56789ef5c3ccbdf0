"""The policy search on detection: objects as the paired tests' units, distances on backbone
features, mosaic and box mixup as the target stage, and real proxies scored by mAP."""

from __future__ import annotations

import copy
import re

import pytest
import torch
from torch import nn

import visiondojo
from visiondojo.data.sources import DataOptions
from visiondojo.engine.runtime import Runtime
from visiondojo.optimize.length import Throughput
from visiondojo.plan import RuntimeParams
from visiondojo.prepare import prepare
from visiondojo.regularize.distance import Distance, measure_distances
from visiondojo.regularize.search import BOX_MIX_OPTIONS, ProxyOutcome, search_policy, target_fields
from visiondojo.data.batches import Normalizer
from visiondojo.tasks import DetectionTask
from visiondojo.tasks.detection import found_objects

from test_detection_fit import TINY, rectangle_scenes

PINS = {"optimization.batch_size": 16, "optimization.lr": 3e-3, "optimization.epochs": 4,
        "regularization.augment": []}


def _boxes(*rows: list[float]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


def test_an_object_is_found_by_one_of_its_images_top_k_detections_of_its_class() -> None:
    truth = {"boxes": _boxes([0, 0, 10, 10], [20, 20, 30, 30]), "labels": torch.tensor([0, 1])}
    exact = {"boxes": _boxes([0, 0, 10, 10], [20, 20, 30, 30]), "scores": torch.tensor([0.9, 0.8]),
             "labels": torch.tensor([0, 1])}
    assert found_objects(exact, truth).tolist() == [True, True]
    # A confident false box takes one of the two slots: the weaker true detection falls out of the top 2.
    with_false = {"boxes": _boxes([40, 40, 50, 50], [0, 0, 10, 10], [20, 20, 30, 30]),
                  "scores": torch.tensor([0.95, 0.9, 0.8]), "labels": torch.tensor([0, 0, 1])}
    assert found_objects(with_false, truth).tolist() == [True, False]
    # The right place with the wrong class finds nothing; a loose box (IoU 0.45) neither.
    wrong = {"boxes": _boxes([0, 0, 10, 10], [20, 20, 24.5, 30]), "scores": torch.tensor([0.9, 0.8]),
             "labels": torch.tensor([1, 1])}
    assert found_objects(wrong, truth).tolist() == [False, False]
    # One detection finds one object, even when two true boxes coincide.
    twins = {"boxes": _boxes([0, 0, 10, 10], [0, 0, 10, 10]), "labels": torch.tensor([0, 0])}
    one = {"boxes": _boxes([0, 0, 10, 10]), "scores": torch.tensor([0.9]), "labels": torch.tensor([0])}
    assert found_objects(one, twins).tolist() == [True, False]
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}
    assert found_objects(exact, empty).tolist() == [] and found_objects(empty | {"scores": torch.zeros(0)},
                                                                        truth).tolist() == [False, False]


@pytest.fixture(scope="module")
def detection_inputs():
    """Plan, prepared data and model for 512 training and 280 validation rectangle scenes."""
    train, val = rectangle_scenes(512, seed=3), rectangle_scenes(280, seed=4)
    plan = visiondojo.find_params("small-fcos", train, val, pin=PINS, model_kwargs=TINY)
    prep = prepare("small-fcos", train, val, options=DataOptions(), model_kwargs=TINY)
    return plan, prep


def test_detector_distances_read_the_backbone_and_grow_from_zero(detection_inputs) -> None:
    plan, prep = detection_inputs
    task = prep.task
    assert task.unit == "objects" and task.units_per_sample(prep.val.targets) == pytest.approx(
        float(prep.val.targets.counts.float().mean()))
    assert "backbone" in task.feature_source(prep.model)
    assert task.feature_source(nn.Conv2d(1, 1, 1)) is None  # a module without a backbone: no search
    runtime = Runtime(RuntimeParams())
    normalizer = Normalizer(plan.data, runtime.device)
    index = torch.arange(128)
    pixels = normalizer.unit(prep.train.images_at(index))
    targets = prep.train.targets.gather(index)
    rows = measure_distances(prep.model, task, pixels, targets, ["rotate", "brightness"], normalizer, runtime,
                             magnitudes=(0.0, 1.0))
    assert [r.loss_shift for r in rows] == [None] * 4  # a detector has no per-sample loss
    assert rows[0].distance == pytest.approx(0.0, abs=1e-9) and rows[1].distance > 1e-3
    assert rows[2].distance == pytest.approx(0.0, abs=1e-9) and rows[3].distance > 1e-3


SYNTHETIC = [Distance(op, m, d, None) for op, m, d in [
    ("hflip", 1.0, 0.02), ("zoom", 0.6, 0.1), ("rotate", 1.0, 1.0), ("brightness", 0.6, 0.1)]]


def test_the_target_stage_of_detection_is_mosaic_and_box_mixup(detection_inputs, monkeypatch) -> None:
    """Soft labels do not apply to boxes: the stage after the wide menus tries mosaic, weak to strong."""
    from visiondojo.regularize import search

    plan, prep = detection_inputs
    assert target_fields(prep.task) == ("mosaic", "box_mixup")
    objects = int(prep.val.targets.counts.sum())
    seen = []

    def fake_run(self, augment, options, measure=None):
        seen.append(dict(options))
        score = 0.30 + 0.06 * (options.get("mosaic") == 0.5) + 0.04 * (options.get("mosaic") == 1.0)
        return (ProxyOutcome(score, torch.arange(objects) < round(score * objects)),
                SYNTHETIC if measure is not None else None)

    monkeypatch.setattr(search.Proxy, "run", fake_run)
    result = search_policy(plan, prep.model, prep.task, prep.train, prep.val, Runtime(RuntimeParams()), 1e6,
                           train_images_per_s=1e6, eval_images_per_s=1e6, min_effect=0.03)
    assert result is not None and result.unit == "objects" and result.val_units == objects
    assert result.target_options == {"mosaic": 0.5}, (result.trials, result.extrapolation)
    # mosaic on half the images wins; on all of them it scores less, so box mixup is never tried
    assert {"mosaic": 1.0} in seen and BOX_MIX_OPTIONS[2] not in seen
    accepted = next(t for t in result.trials if t.target_options == {"mosaic": 0.5})
    assert accepted.test["verdict"] == "accepted" and accepted.test["unit"] == "objects"
    assert accepted.test["images"] == objects
    # kept at the training set's size: the same gain on 256 and 512 images extrapolates to itself
    assert result.extrapolation["kept"] and result.extrapolation["sizes"] == [256, 512]


def test_a_real_detection_search_trains_proxies_scored_by_map(detection_inputs, proxy_clock) -> None:
    """Real proxies of a tiny detector: each scored by mAP, compared object by object."""
    plan, prep = detection_inputs
    clock = proxy_clock(6.0)  # the base and two more fit 20 s
    logged: list[str] = []
    train = prep.train.subset(torch.arange(256))
    result = search_policy(plan, prep.model, prep.task, train, prep.val, Runtime(RuntimeParams()), 20.0,
                           train_images_per_s=1e6, eval_images_per_s=1e6, min_effect=0.03, log=logged.append)
    assert result is not None and result.subset_size == 256 and len(result.trials) == clock.proxies == 3
    assert result.val_units > result.val_images  # 1-3 objects per image: units are objects
    base = result.trials[0]
    assert base.groups == {} and base.target_options == {} and 0.0 < base.score <= 1.0  # an mAP
    assert all(t.test["unit"] == "objects" and t.test["images"] == result.val_units for t in result.trials[1:])
    assert result.groups and all(d.loss_shift is None for d in result.distances)
    assert "validation images" in logged[0] and "objects" in logged[0]
    assert result.seconds == 18.0 and result.stopped == "the search allowance ran out after 3 proxy trainings"


def test_proxies_that_find_almost_nothing_end_the_search_and_the_prior_stays(detection_inputs, monkeypatch) -> None:
    """A detector's proxy that finds 5% of the objects cannot rank policies: one proxy, then the prior."""
    from visiondojo.regularize import choose, search

    plan, prep = detection_inputs
    objects = int(prep.val.targets.counts.sum())
    calls = []

    def fake_run(self, augment, options, measure=None):
        calls.append(augment)
        return ProxyOutcome(0.01, torch.arange(objects) < objects // 20), SYNTHETIC if measure is not None else None

    monkeypatch.setattr(search.Proxy, "run", fake_run)
    monkeypatch.setattr(choose, "NO_BUDGET_SEARCH_EPOCHS", 100)  # proxies of 256+ of the 512 images
    plan = copy.deepcopy(plan)
    plan.pinned.remove("regularization.augment")
    speed = Throughput(16, 200.0, 1e6, 0.0)
    assert choose.choose_regularization(plan, prep, Runtime(RuntimeParams()), speed, deadline=None)
    assert len(calls) == 1
    summary = plan.measurements["augment_search"]
    assert summary["informative"] is False and summary["space"]["proxy_trainings"] == 1
    why = plan.evidence["regularization.augment"]
    assert "learned too little to rank policies" in why
    assert re.search(r"got [45]\.\d% of its \d+ validation objects right, under the 10%", why), why
    assert [op.name for op in plan.regularization.augment] == ["hflip"]  # the short-run detection prior
