"""Semantic segmentation benchmark on ``fashion-scenes``: torchvision's reference recipe and
``visiondojo.fit`` training the same built-in SmallUNet, each with the same wall-clock budget, scored
by the same mIoU.

Usage (from the repository root)::

    python bench/segmentation.py --budget 600 --out bench/results/segmentation-600-s0.json
    python bench/segmentation.py --budget 20 --train 200 --val 50 --test 50 --out bench/results/segmentation-smoke.json

Resumable: contenders already in ``--out`` for the same budget, sizes and seed are kept, not rerun,
and the file is rewritten after each contender, so an interrupted run keeps what finished.

Data: ``fashion-scenes`` (``visiondojo.data.scenes``) with their semantic masks (class 0 the
background, k + 1 the Fashion-MNIST class k: 11 classes): ``--train`` training scenes (default
8,000), ``--val`` validation scenes (1,000) and ``--test`` test scenes (1,000), 128x128 grayscale,
generated once per (split, count) with data seed 0 and cached under ``bench/results/`` (the same
cache files as ``bench/detection.py``), so both contenders see identical images and masks. The
first scene of each cached split is checked against a freshly generated one before any clock
starts, so a cache left by an older scene generator is refused rather than silently used.

Both contenders train the model ``visiondojo.fit`` builds for the name ``small-unet``: the bench
calls the same builder ``fit`` does (``visiondojo.models.build_for``, after ``torch.manual_seed(seed)``
as ``fit``'s data preparation does), so both even start from the same initial weights. Both are
scored on the test scenes at their native 128x128 by the metrics of
``visiondojo.tasks.segmentation.SegmentationTask.metrics()``: torchmetrics'
``MulticlassJaccardIndex`` (macro over the 11 classes, ``ignore_index`` 255) as ``test_miou``,
``MulticlassAccuracy`` (micro, the same ignore index) as ``test_pixel_acc``, and the IoU per class.

Contenders, each in its own child process (peak RSS its own, torch on all the cores):

- ``reference``: torchvision's ``references/segmentation`` recipe, written plainly below. Its
  settings and where each comes from (pytorch/vision, ``references/segmentation/``):

  - batch 8: ``train.py``'s ``-b/--batch-size`` default (8 images per GPU; one process here). The
    published models in that folder's README were trained on 8 GPUs with ``-b 4`` and ``--lr
    0.02``; the bench takes the script's defaults, as a user training on one device would;
  - SGD, momentum 0.9, learning rate 0.01, weight decay 1e-4 on every parameter: ``train.py``'s
    ``--momentum``, ``--lr`` and ``--wd`` defaults and its ``torch.optim.SGD(params, lr, momentum,
    weight_decay)`` (no parameter group excluded from decay; the 10x learning rate group is the
    auxiliary classifier's, which SmallUNet does not have);
  - the poly schedule, lr x (1 - step / total steps)^0.9, stepped every iteration: ``train.py``'s
    ``LambdaLR(optimizer, lambda x: (1 - x / (len(data_loader) * args.epochs)) ** 0.9)``, called
    after every optimizer step; no warmup. The total is only known once the epochs are planned
    (below), so the first steps run at the full rate, which the curve gives them anyway to within
    a percent;
  - augmentation, per image in this order: resize to a random side drawn uniformly from
    [0.5 x, 2.0 x] the image's (bilinear for the image, nearest for the mask), horizontal flip with
    probability 0.5, padding on the right and bottom to the training size when smaller (0 for the
    image, 255 for the mask), a random crop of the training size, then normalization:
    ``presets.py``/``get_transform`` (``RandomResize(int(0.5 * base_size), int(2.0 * base_size))``,
    ``RandomHorizontalFlip(0.5)``, ``RandomCrop(crop_size)``, ``Normalize``) and ``transforms.py``
    (``RandomResize`` draws ``random.randint(min_size, max_size)`` and resizes the mask by
    ``NEAREST``; ``RandomCrop`` calls ``pad_if_smaller`` with fill 0 for the image and 255 for the
    target). The reference trains at a 480 crop of images based at 520; here base and crop are the
    scenes' own 128, and the resizing runs on tensors through ``torchvision.transforms.v2.functional``
    (the reference's own tooling; its v1 code resizes PIL images). Its ImageNet mean and std are
    for RGB photos; the grayscale scenes are normalized by the training images' own mean and std,
    as ``bench/detection.py``'s reference does;
  - the loss: ``train.py``'s ``criterion``, cross-entropy with ``ignore_index=255`` on ``out``
    plus 0.5 x that on ``aux`` when the model has an auxiliary head (SmallUNet returns one tensor,
    so cross-entropy alone). SmallUNet predicts at half resolution; its logits are upsampled
    bilinearly to the mask first, as torchvision's segmentation models do in their forward;
  - epochs: ``train.py`` defaults to 30; here they are planned to fill the budget exactly as
    ``bench/detection.py``'s reference plans them: after the first 30 steps (or the first epoch, if
    shorter), from the seconds per step measured since the contender's clock started (model
    building and the first steps' one-time costs included), epochs = max(1, floor(budget / (seconds
    per step x steps per epoch))); every epoch drops the last partial batch (``drop_last=True``).
    ``train.py`` evaluates on its validation set after every epoch only to print it (it keeps the
    last epoch's weights); the bench skips that, in the reference's favour, and uses no validation
    data for it;

- ``visiondojo``: ``visiondojo.fit("small-unet", train, val_data=val, test_data=test,
  task="segmentation", budget=...)`` at its defaults, on the same scenes passed as (images, masks)
  tensors with the class names ``fashion-scenes`` gives (``data.scenes.load_split(masks=True)``;
  the ``fashion-scenes:train:N`` strings would regenerate the scenes inside ``fit``'s budget). Its
  test figures are ``fit``'s own; the bench also rescores the returned model on the test scenes
  through ``Run.predict`` with the reference's scorer (``test_miou_rescored``), a check that both
  paths measure alike.

What a budget covers: ``fit``'s covers the whole call (data checks, planning, training, its
validation and test passes, the report); the reference's clock starts after the cached scenes are
read and covers normalization, model building and training (its test pass comes after).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

import visiondojo
from detection import chosen_contenders, scene_bench_args, scenes
from fmnist import RUNS_DIR, log, run_contender_here, run_contender_in_child, visiondojo_result
from visiondojo.data.scenes import BACKGROUND_NAME, fashion_scenes
from visiondojo.models import build_for
from visiondojo.plan import DataParams
from visiondojo.tasks.segmentation import SegmentationTask

CONTENDERS = ("reference", "visiondojo")
MODEL = "small-unet"
DATA_SEED = 0
"""The scenes are the same for every seed (as in ``bench/detection.py``); ``--seed`` seeds training."""

# torchvision's references/segmentation defaults (see the module docstring for where each is set).
BATCH = 8
LR = 0.01
MOMENTUM = 0.9
WEIGHT_DECAY = 1e-4
POLY_POWER = 0.9
RESIZE_RANGE = (0.5, 2.0)
HFLIP_P = 0.5
IGNORE_INDEX = 255
AUX_WEIGHT = 0.5
PLAN_AFTER_STEPS = 30
"""The reference plans its epochs from this many steps (``bench/detection.py``'s 30)."""
EVAL_CHUNK = 100


def segmentation_split(split: str, n: int) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """(images (N, 1, S, S) uint8, semantic masks (N, S, S) uint8, class names with the background
    first), as ``load_split(masks=True)`` gives them, from the bench's cache; the rest of the cached
    scenes (boxes, instance maps) is dropped so that it does not count in a contender's memory."""
    made = scenes(split, n, DATA_SEED)
    return made.images, made.semantic, [BACKGROUND_NAME, *made.class_names]


def check_cache(split: str, n: int) -> None:
    """Refuse a cached split whose first scene is not what the scene generator makes now (the
    generator's random stream for scene 0 does not depend on the scene count)."""
    cached = scenes(split, n, DATA_SEED)
    fresh = fashion_scenes(split, 1, seed=DATA_SEED)
    if not (torch.equal(cached.images[:1], fresh.images) and torch.equal(cached.semantic[:1], fresh.semantic)):
        path = RUNS_DIR / f"scenes-{split}-{n}-{DATA_SEED}.pt"
        sys.exit(f"{path} was made by another version of the scene generator; delete it (and the other "
                 "scenes-*.pt files there) so that the scenes are generated again")


def score(predict: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, masks: torch.Tensor,
          num_classes: int) -> dict[str, Any]:
    """Test figures by ``SegmentationTask.metrics()``: ``predict`` maps a chunk of uint8 images to
    (n, H, W) class indices, what ``SegmentationTask.update_metrics`` feeds the metrics after its argmax."""
    metrics = SegmentationTask(num_classes, ignore_index=IGNORE_INDEX).metrics()
    with torch.no_grad():
        for start in range(0, len(images), EVAL_CHUNK):
            chunk = slice(start, start + EVAL_CHUNK)
            metrics.update(predict(images[chunk]), masks[chunk].long())
    values = metrics.compute()
    figures = {"test_miou": round(float(values["miou"]), 6), "test_pixel_acc": round(float(values["pixel_acc"]), 6),
               "test_iou_per_class": [round(float(v), 6) for v in values["iou_per_class"]]}
    if "dice" in values:  # the task's macro Dice (F1), where its metrics have one
        figures["test_dice"] = round(float(values["dice"]), 6)
    return figures


def build_small_unet(num_classes: int, channels: int, size: int, seed: int) -> torch.nn.Module:
    """The model ``fit("small-unet", ...)`` trains, built as ``fit`` builds it (``prepare`` seeds
    torch with the run's seed, then calls ``build_for``)."""
    torch.manual_seed(seed)
    data = DataParams(task="segmentation", num_classes=num_classes, channels=channels, height=size, width=size)
    return build_for(MODEL, data)


# --- (a) torchvision's reference recipe ------------------------------------------------------------


def reference_sample(image: torch.Tensor, mask: torch.Tensor,
                     generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """One training pair through the reference's train transforms: a (1, S, S) uint8 image and its
    (S, S) uint8 mask -> the same shapes, randomly resized, flipped, padded and cropped."""
    side = image.shape[-1]
    low, high = int(RESIZE_RANGE[0] * side), int(RESIZE_RANGE[1] * side)
    size = int(torch.randint(low, high + 1, (1,), generator=generator))
    image = TF.resize(image, [size, size], interpolation=InterpolationMode.BILINEAR, antialias=True)
    mask = TF.resize(mask[None], [size, size], interpolation=InterpolationMode.NEAREST)
    if float(torch.rand(1, generator=generator)) < HFLIP_P:
        image, mask = image.flip(-1), mask.flip(-1)
    if size < side:  # pad_if_smaller: right and bottom, 0 for the image, 255 (ignored) for the mask
        padding = [0, 0, side - size, side - size]
        image, mask = TF.pad(image, padding, fill=0), TF.pad(mask, padding, fill=IGNORE_INDEX)
    top = int(torch.randint(0, image.shape[-2] - side + 1, (1,), generator=generator))
    left = int(torch.randint(0, image.shape[-1] - side + 1, (1,), generator=generator))
    return image[:, top:top + side, left:left + side], mask[0, top:top + side, left:left + side]


def criterion(outputs: torch.Tensor | dict[str, torch.Tensor], target: torch.Tensor) -> torch.Tensor:
    """The reference's loss: cross-entropy (ignore index 255) on ``out``, plus 0.5 x that on ``aux``
    when the model has an auxiliary head; logits are upsampled to the mask first."""
    heads = outputs if isinstance(outputs, dict) else {"out": outputs}
    losses = {name: F.cross_entropy(upsampled(logits, target.shape[-2:]), target, ignore_index=IGNORE_INDEX)
              for name, logits in heads.items()}
    if len(losses) == 1:
        return losses["out"]
    return losses["out"] + AUX_WEIGHT * losses["aux"]


def upsampled(logits: torch.Tensor, size: torch.Size) -> torch.Tensor:
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)


def pixel_stats(images: torch.Tensor) -> tuple[float, float]:
    """Mean and standard deviation of uint8 images in [0, 1] units, read in chunks."""
    total = squares = 0.0
    for chunk in images.split(500):
        x = chunk.float() / 255
        total += float(x.sum(dtype=torch.float64))
        squares += float((x * x).sum(dtype=torch.float64))
    count = images.numel()
    mean = total / count
    return mean, math.sqrt(max(squares / count - mean * mean, 1e-12))


def run_reference(budget_s: float, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    images, masks, class_names = segmentation_split("train", args.train)
    test_images, test_masks, _ = segmentation_split("test", args.test)
    if len(images) < BATCH:
        raise SystemExit(f"reference: --train {args.train} is less than one batch of {BATCH}")
    start = time.perf_counter()
    mean, std = pixel_stats(images)
    num_classes, side = len(class_names), images.shape[-1]
    model = build_small_unet(num_classes, images.shape[1], side, seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    steps_per_epoch = len(images) // BATCH  # drop_last=True
    plan_at = min(PLAN_AFTER_STEPS, steps_per_epoch)
    generator = torch.Generator().manual_seed(seed)
    epochs: int | None = None
    total_steps, step, epoch = None, 0, 0
    history: list[dict[str, Any]] = []
    model.train()
    while epochs is None or epoch < epochs:
        epoch_start, loss_sum = time.perf_counter(), 0.0
        order = torch.randperm(len(images), generator=generator)
        for i in range(steps_per_epoch):
            pairs = [reference_sample(images[k], masks[k], generator) for k in order[i * BATCH:(i + 1) * BATCH].tolist()]
            batch = (torch.stack([p[0] for p in pairs]).float() / 255 - mean) / std
            target = torch.stack([p[1] for p in pairs]).long()
            factor = 1.0 if total_steps is None else max(0.0, 1 - step / total_steps) ** POLY_POWER
            for group in optimizer.param_groups:
                group["lr"] = LR * factor
            loss = criterion(model(batch), target)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            loss_sum += loss.item()
            step += 1
            if epochs is None and step == plan_at:  # plan the epochs from the measured speed
                per_step = (time.perf_counter() - start) / step
                epochs = max(1, math.floor(budget_s / (per_step * steps_per_epoch)))
                total_steps = epochs * steps_per_epoch
                log(f"reference: {per_step * 1000:.0f} ms per step: {epochs} epochs of {steps_per_epoch} steps")
        epoch += 1
        epoch_s = time.perf_counter() - epoch_start
        history.append({"epoch": epoch, "train_loss": round(loss_sum / steps_per_epoch, 6), "epoch_s": round(epoch_s, 2),
                        "train_images_per_s": round(steps_per_epoch * BATCH / epoch_s, 1)})
        log(f"reference: epoch {epoch}/{epochs}  train_loss {loss_sum / steps_per_epoch:.4f}  "
            f"{steps_per_epoch * BATCH / epoch_s:,.0f} img/s  ({time.perf_counter() - start:.0f}/{budget_s:.0f}s)")
    trained_s = time.perf_counter() - start
    model.eval()

    def predict(chunk: torch.Tensor) -> torch.Tensor:
        return upsampled(model((chunk.float() / 255 - mean) / std), chunk.shape[-2:]).argmax(dim=1)

    figures = score(predict, test_images, test_masks, num_classes)
    return {**figures, "epochs": epochs, "steps": step, "train_images_per_s": round(step * BATCH / trained_s, 1),
            "train_s": round(trained_s, 1),
            "plan": {"model": MODEL, "optimizer": "sgd", "momentum": MOMENTUM, "lr": LR, "weight_decay": WEIGHT_DECAY,
                     "batch_size": BATCH, "schedule": f"poly (1 - step / {total_steps})^{POLY_POWER} per step",
                     "augmentation": f"random resize {RESIZE_RANGE[0]}-{RESIZE_RANGE[1]}x, hflip p {HFLIP_P}, "
                                     f"pad (0 / {IGNORE_INDEX}) + random crop {side}",
                     "loss": f"cross-entropy, ignore_index {IGNORE_INDEX} (+{AUX_WEIGHT} x aux when present)",
                     "normalization": {"mean": round(mean, 5), "std": round(std, 5)},
                     "epochs_planned_from_steps": plan_at},
            "history": history}


# --- (b) visiondojo ---------------------------------------------------------------------------------


def run_visiondojo(budget_s: float, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """``fit`` as a user calls it, at its defaults."""
    train_images, train_masks, class_names = segmentation_split("train", args.train)
    val_images, val_masks, _ = segmentation_split("val", args.val)
    test_images, test_masks, _ = segmentation_split("test", args.test)
    run = visiondojo.fit(MODEL, (train_images, train_masks), val_data=(val_images, val_masks),
                         test_data=(test_images, test_masks), task="segmentation", class_names=class_names,
                         budget=budget_s, seed=seed,
                         out=RUNS_DIR / "segmentation-runs" / f"visiondojo-{args.train}-{int(budget_s)}-{seed}",
                         overwrite=True, progress=True)
    rescored = score(lambda chunk: run.predict(chunk).labels, test_images, test_masks, len(class_names))
    plan = run.plan
    opt, reg = plan.optimization, plan.regularization
    test = run.metrics["test"]
    return {**visiondojo_result(run, metric="miou"), "test_pixel_acc": test["pixel_acc"],
            "test_iou_per_class": test["iou_per_class"], **({"test_dice": test["dice"]} if "dice" in test else {}),
            "test_miou_rescored": rescored["test_miou"], "test_pixel_acc_rescored": rescored["test_pixel_acc"],
            "choices": {"batch_size": opt.batch_size, "optimizer": opt.optimizer, "lr": opt.lr,
                        "epochs_planned": opt.epochs, "schedule": opt.schedule, "warmup_epochs": opt.warmup_epochs,
                        "weight_decay": reg.weight_decay,
                        "augment": [f"{a.name} m{a.magnitude:.2f} p{a.p:.2f}" + (f" [{a.group}]" if a.group else "")
                                    for a in reg.augment],
                        "dice": reg.dice, "precision": plan.runtime.precision,
                        "channels_last": plan.runtime.channels_last,
                        "planning_s": plan.measurements.get("planning_seconds")}}


RUNNERS = {"reference": run_reference, "visiondojo": run_visiondojo}


def write_atomically(path: Path, document: dict[str, Any]) -> None:
    """Temp file + ``os.replace``: an interrupted write never leaves a truncated results file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(document, indent=2) + "\n")
    os.replace(temporary, path)


def main(argv: list[str] | None = None) -> None:
    args, sizes = scene_bench_args(__doc__, CONTENDERS, argv)
    if args.contender is not None:
        run_contender_here(args.contender, args.budget, args.seed, args.out,
                           runner=lambda name, budget, seed: RUNNERS[name](budget, seed, args))
        return
    names = chosen_contenders(args, CONTENDERS)
    for split, n in (("train", args.train), ("val", args.val), ("test", args.test)):
        check_cache(split, n)  # generated once and checked, before any clock starts
    # Resumable: contenders already in --out for the same budget, sizes and seed are kept, not rerun.
    keys = {"budget_s": args.budget, "seed": args.seed, "train_images": args.train, "val_images": args.val,
            "test_images": args.test}
    earlier = json.loads(args.out.read_text()) if args.out.is_file() else {}
    same = all(earlier.get(k) == v for k, v in keys.items())
    results = {name: earlier[name] for name in CONTENDERS if same and name in earlier}
    for name in names:
        if name in results:
            log(f"{name}: kept from {args.out}")
            continue
        results[name] = run_contender_in_child(name, args.budget, args.seed, Path(__file__), sizes)
        report: dict[str, Any] = {"benchmark": "fashion-scenes semantic segmentation", **keys, "model": MODEL,
                                  "cpu_count": len(os.sched_getaffinity(0)), "torch": torch.__version__,
                                  "date": time.strftime("%Y-%m-%d"), **results}
        if "reference" in results:
            base = results["reference"]["test_miou"]
            report["test_miou_vs_reference"] = {n: round(r["test_miou"] - base, 6) for n, r in results.items()}
        write_atomically(args.out, report)
    log(f"figures in {args.out}: " + ", ".join(f"{n} mIoU {r['test_miou']:.4f} pixel acc {r['test_pixel_acc']:.4f}"
                                               for n, r in results.items()))


if __name__ == "__main__":
    main()
