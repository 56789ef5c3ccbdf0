"""Segmentation's loss and target stage: label smoothing and Dice inside the loss, CutMix cutting
mask and image at the same pixels, mixup refused, the search's target options, and class balance
by pixel counts."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import visiondojo

from visiondojo.data.batches import Normalizer
from visiondojo.errors import ConfigError
from visiondojo.plan import DataParams, RegularizationParams
from visiondojo.regularize.batch import BatchRegularizer, check, loss_settings
from visiondojo.regularize.class_balance import choose_pixel_balance, effective_number_weights
from visiondojo.regularize.search import target_fields, target_options_for
from visiondojo.tasks import LossSettings, SegmentationTask
from visiondojo.tasks.segmentation import dice_loss


def one_hot_logits(masks: torch.Tensor, k: int, scale: float = 20.0) -> torch.Tensor:
    return F.one_hot(masks.clamp(max=k - 1), k).permute(0, 3, 1, 2).float() * scale


def test_dice_loss_is_zero_when_perfect_and_matches_the_formula():
    g = torch.Generator().manual_seed(0)
    masks = torch.randint(0, 3, (2, 8, 8), generator=g)
    masks[0, 0] = 255
    assert float(dice_loss(one_hot_logits(masks, 3, 50.0), masks, 3, 255)) == pytest.approx(0.0, abs=1e-6)
    logits = torch.randn(2, 3, 8, 8, generator=g)
    # The formula written out with the one-hot truth, over labelled pixels, classes present only.
    probs, labelled = logits.softmax(dim=1), (masks != 255)
    truth = F.one_hot(masks.clamp(max=2), 3).permute(0, 3, 1, 2).float() * labelled[:, None]
    probs = probs * labelled[:, None]
    scores = 2 * (probs * truth).sum(dim=(0, 2, 3)) / (probs.sum(dim=(0, 2, 3)) + truth.sum(dim=(0, 2, 3)))
    assert float(dice_loss(logits, masks, 3, 255)) == pytest.approx(float(1 - scores.mean()), rel=1e-5)
    # A class absent from the truth does not count: 2 classes present, their Dice averaged.
    two = torch.where(masks == 2, torch.zeros_like(masks), masks)
    assert float(dice_loss(one_hot_logits(two, 3, 50.0), two, 3, 255)) == pytest.approx(0.0, abs=1e-6)
    assert float(dice_loss(logits, torch.full_like(masks, 255), 3, 255)) == 0.0  # nothing labelled: no loss


def test_loss_settings_reach_the_segmentation_loss():
    task = SegmentationTask(3)
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 3, 8, 8, generator=g)
    masks = torch.randint(0, 3, (2, 8, 8), generator=g)
    masks[:, 0] = 255
    model = torch.nn.Identity()
    plain = task.forward_train(model, logits, masks).loss
    smoothed = task.forward_train(model, logits, masks, LossSettings(label_smoothing=0.1)).loss
    assert float(smoothed) == pytest.approx(float(F.cross_entropy(logits, masks, ignore_index=255,
                                                                  label_smoothing=0.1)), rel=1e-5)
    assert float(smoothed) != pytest.approx(float(plain))
    with_dice = task.forward_train(model, logits, masks, LossSettings(dice=0.5))
    assert float(with_dice.loss) == pytest.approx(float(plain) + 0.5 * float(dice_loss(logits, masks, 3, 255)), rel=1e-5)
    assert set(with_dice.terms) == {"out", "dice_loss"}  # both logged (the metric "dice" is a score)
    weights = torch.tensor([0.2, 1.0, 3.0])
    weighted = task.forward_train(model, logits, masks, LossSettings(class_weights=weights)).loss
    assert float(weighted) == pytest.approx(float(F.cross_entropy(logits, masks, weight=weights, ignore_index=255)),
                                            rel=1e-5)


def test_cutmix_cuts_mask_and_image_at_the_same_pixels():
    """Each image is filled with its own index and its mask too: after CutMix, every pixel's value
    and its mask's class still come from the same source image."""
    n, size = 8, 16
    task = SegmentationTask(n)
    masks = torch.arange(n).view(n, 1, 1).expand(n, size, size).clone()
    pixels = (masks.float() / n)[:, None]
    params = RegularizationParams(cutmix=1.0)
    regularizer = BatchRegularizer(params, task, Normalizer(DataParams(task="segmentation", num_classes=n, channels=1,
                                                                     mean=[0.0], std=[1.0]), torch.device("cpu")),
                                   torch.device("cpu"), seed=3)
    out, moved = regularizer.regularize(pixels, masks)
    assert moved.dtype == torch.int64 and moved.shape == masks.shape  # still hard class indices
    assert torch.equal((out[:, 0] * n).round().long(), moved)
    assert bool((moved != masks).any())  # something was pasted
    assert set(moved.unique().tolist()) <= set(range(n))


def test_what_masks_cannot_follow_is_refused_and_the_search_offers_what_they_can():
    task = SegmentationTask(4)
    with pytest.raises(ConfigError, match="mixup: the segmentation task's targets cannot follow mixup"):
        check(RegularizationParams(mixup=0.2), task)
    check(RegularizationParams(cutmix=1.0, label_smoothing=0.1, dice=0.5), task)
    with pytest.raises(ConfigError, match="dice: weight 1.5 is outside"):
        check(RegularizationParams(dice=1.5))
    options = target_options_for(task)
    assert options[0] == {"dice": 0.5}
    assert {"label_smoothing": 0.1, "cutmix": 1.0} in options
    assert not any("mixup" in o for o in options)
    assert "dice" in target_fields(task)


def test_class_balance_by_pixels_is_off_by_default_and_pinned_reweighting_counts_images_worth():
    counts = [900_000, 30_000, 10_000]
    mode, beta, why = choose_pixel_balance(counts, pixels_per_image=1024, beta=0.999)
    assert mode == "none" and "pixel imbalance ratio 90.0" in why
    assert beta == pytest.approx(0.999 ** (1 / 1024))
    # Per pixel at 0.999 every class saturates and the weights come out equal; at the pixel beta they
    # are the weights of 879, 29 and 10 images' worth of pixels at 0.999.
    assert torch.allclose(effective_number_weights(counts, 0.999), torch.ones(3), atol=1e-3)
    per_image = effective_number_weights([c / 1024 for c in counts], 0.999)  # type: ignore[misc]
    assert torch.allclose(effective_number_weights(counts, beta), per_image, rtol=1e-3)
    settings = loss_settings(RegularizationParams(class_balance="reweight", class_balance_beta=beta), counts,
                             torch.device("cpu"))
    assert settings.class_weights is not None and settings.class_weights[2] > 5 * settings.class_weights[0]


def test_segmentation_resumes_bit_exactly_with_augmentation_cutmix_and_dice(tmp_path, monkeypatch):
    """Interrupted after epoch 2 of 3 and resumed: the same weights, metrics and history as one
    uninterrupted run, with warped masks, CutMix and the Dice term all drawing or computing."""
    from visiondojo.engine import checkpoint, loop
    from visiondojo.plan import AugmentOp

    from conftest import state_dicts_equal
    from test_segmentation import TINY, blob_scenes

    class Interrupted(Exception):
        pass

    train, test = blob_scenes(96, seed=5), blob_scenes(32, seed=6)
    pins = {"regularization.augment": [AugmentOp("hflip", 1.0), AugmentOp("rotate", 0.5)],
            "regularization.cutmix": 1.0, "regularization.dice": 0.5}
    kwargs = dict(test_data=test, epochs=3, batch_size=16, lr=3e-3, pin=pins, model_kwargs=TINY, progress=False)
    full = visiondojo.fit("small-unet", train, out=tmp_path / "full", **kwargs)
    save_last = loop._save_last

    def save_then_crash(directory, model, optimizer, scheduler, state, *rest):
        save_last(directory, model, optimizer, scheduler, state, *rest)
        if state.epoch == 2:
            raise Interrupted

    monkeypatch.setattr(loop, "_save_last", save_then_crash)
    out = tmp_path / "cut"
    with pytest.raises(Interrupted):
        visiondojo.fit("small-unet", train, out=out, **kwargs)
    monkeypatch.undo()
    resumed = visiondojo.train(None, train, test_data=test, plan=out / "plan.yaml", out=out, resume=True,
                               progress=False)  # the plan names the model and its kwargs
    last = lambda run_dir: checkpoint.load_state(run_dir / "checkpoints" / loop.LAST)["model"]  # noqa: E731
    assert state_dicts_equal(last(out), last(full.dir))
    assert resumed.metrics == full.metrics
    assert 0 < full.history[0]["train_dice_loss"] < 1  # the Dice term is trained on and logged
    timing = {"train_s", "epoch_s", "train_images_per_s"}
    strip = lambda history: [{k: v for k, v in row.items() if k not in timing} for row in history]  # noqa: E731
    assert strip(resumed.history) == strip(full.history)


def test_memory_probes_measure_the_dice_term_the_run_will_likely_train_with():
    """The target stage (which may add Dice) comes after the memory ceiling: the probe measures
    with Dice, so the batch it sizes still fits when the run trains with it."""
    from visiondojo.engine.runtime import Runtime
    from visiondojo.models import build_for
    from visiondojo.optimize.memory import saved_activation_bytes
    from visiondojo.plan import RuntimeParams

    from test_segmentation import TINY, blob_scenes

    data = DataParams(task="segmentation", num_classes=21, channels=1, height=32, width=32, mean=[0.0], std=[1.0])
    model = build_for("small-unet", data, TINY)
    images, masks = blob_scenes(4)
    runtime, normalizer = Runtime(RuntimeParams()), Normalizer(data, torch.device("cpu"))
    task = SegmentationTask(21)
    with_dice = saved_activation_bytes(model, task, runtime, normalizer, images, masks)
    task.probe_settings = LossSettings()
    without = saved_activation_bytes(model, task, runtime, normalizer, images, masks)
    assert SegmentationTask.probe_settings.dice > 0 and with_dice > without
