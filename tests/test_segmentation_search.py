"""The policy search on segmentation: images scored by their IoU as the paired tests' units,
distances on the head's input, Dice then soft labels and CutMix as the target stage, and real
proxies scored by mIoU."""

from __future__ import annotations

import pytest
import torch

import visiondojo
from visiondojo.data.sources import DataOptions
from visiondojo.engine.runtime import Runtime
from visiondojo.plan import RuntimeParams
from visiondojo.prepare import prepare
from visiondojo.regularize.search import ProxyOutcome, search_policy, target_fields

from test_detection_search import SYNTHETIC
from test_segmentation import TINY, blob_scenes

PINS = {"optimization.batch_size": 16, "optimization.lr": 3e-3, "optimization.epochs": 4,
        "regularization.augment": []}


@pytest.fixture(scope="module")
def segmentation_inputs():
    """Plan, prepared data and model for 600 training and 300 validation blob scenes."""
    train, val = blob_scenes(600, seed=7), blob_scenes(300, seed=8)
    plan = visiondojo.find_params("small-unet", train, val, pin=PINS, model_kwargs=TINY)
    prep = prepare("small-unet", train, val, options=DataOptions(), model_kwargs=TINY)
    return plan, prep


def test_the_target_stage_of_segmentation_tries_dice_first(segmentation_inputs, monkeypatch) -> None:
    from visiondojo.regularize import search

    plan, prep = segmentation_inputs
    assert set(target_fields(prep.task)) == {"label_smoothing", "mixup", "cutmix", "dice"}
    images = len(prep.val)
    seen = []

    def fake_run(self, augment, options, measure=None):
        seen.append(dict(options))
        score = 0.50 + 0.08 * (options.get("dice") == 0.5)
        right = torch.arange(images) < round(score * images)
        return ProxyOutcome(score, right), (SYNTHETIC if measure is not None else None)

    monkeypatch.setattr(search.Proxy, "run", fake_run)
    result = search_policy(plan, prep.model, prep.task, prep.train, prep.val, Runtime(RuntimeParams()), 1e6,
                           train_images_per_s=1e6, eval_images_per_s=1e6, min_effect=0.03)
    assert result is not None and result.unit == "images"
    tried = [o for o in seen if o]
    assert tried[0] == {"dice": 0.5}  # Dice is the first target option
    assert not any("mixup" in o for o in seen)  # masks cannot follow mixup: never offered
    assert result.target_options == {"dice": 0.5}, (result.trials, result.extrapolation)
    accepted = next(t for t in result.trials if t.target_options == {"dice": 0.5})
    assert accepted.test["verdict"] == "accepted" and accepted.test["unit"] == "images"


def test_a_real_segmentation_search_trains_proxies_scored_by_miou(segmentation_inputs, proxy_clock) -> None:
    plan, prep = segmentation_inputs
    clock = proxy_clock(6.0)  # the base and two more fit 20 s
    logged: list[str] = []
    train = prep.train.subset(torch.arange(256))
    result = search_policy(plan, prep.model, prep.task, train, prep.val, Runtime(RuntimeParams()), 20.0,
                           train_images_per_s=1e6, eval_images_per_s=1e6, min_effect=0.03, log=logged.append)
    assert result is not None and result.subset_size == 256 and len(result.trials) == clock.proxies == 3
    assert result.val_units == result.val_images  # one unit per image: its IoU reaches 0.5 or not
    base = result.trials[0]
    assert base.groups == {} and base.target_options == {} and 0.0 < base.score <= 1.0  # an mIoU
    assert all(t.test["unit"] == "images" for t in result.trials[1:])
    assert result.groups and all(d.loss_shift is not None for d in result.distances)  # per-image losses
    assert "validation images" in logged[0]
