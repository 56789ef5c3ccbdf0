"""Detection benchmark on ``fashion-scenes``: torchvision's reference recipe, Ultralytics YOLO and
``visiondojo.fit``, each with the same wall-clock budget, scored by the same COCO evaluator.

Usage (from the repository root)::

    python bench/detection.py --budget 600 --out bench/results/detection.json
    python bench/detection.py --budget 60 --train 800 --test 200 --out bench/results/detection-smoke.json

Resumable: contenders already in ``--out`` for the same budget, sizes and seed are kept, not rerun.

Data: ``fashion-scenes`` (``visiondojo.data.scenes``): ``--train`` training scenes (default 8,000),
``--val`` validation scenes (1,000) and ``--test`` test scenes (1,000), 128x128, 10 classes, generated
once per (split, count, seed) and cached under ``bench/results/``. Every contender is scored on the
test scenes by torchmetrics' ``MeanAveragePrecision`` (faster-coco-eval backend, COCO's rules):
mAP@[.5:.95] and mAP@.5.

Contenders, each in its own child process (peak RSS its own):

- ``reference``: torchvision's ``references/detection`` recipe on the built-in SmallFCOS, written
  plainly below: SGD momentum 0.9, weight decay 1e-4, learning rate 0.02 x batch / 16 at batch 16,
  linear warmup from 1/1000 over the first min(1000, steps per epoch - 1) steps, the step schedule
  (x0.1 at epochs 16 and 22 of 26, scaled to the epochs the budget affords), horizontal flips only;
  the epochs are planned from the measured speed of the first steps to fill the budget;
- ``ultralytics``: YOLO from its smallest current model YAML (``yolo26n.yaml``), no pretrained
  weights, trained with its own defaults and ``time=`` budget on the scenes exported to YOLO
  folders; offline it needs ``amp=False``, ``plots=False`` and a font where it looks for
  ``Arial.ttf`` (a bench-owned config folder gets matplotlib's DejaVu Sans under that name). Its
  predictions on the test images (``conf=0.001``, up to 100 per image) go through the same
  evaluator. Its ``optimizer=auto`` picks MuSGD (Muon) for a run of more than 10,000 iterations,
  as its default 100 epochs of these scenes are; Muon's Newton-Schulz orthogonalization costs
  seconds per step on a CPU, so ``ultralytics-adamw`` pins what ``auto`` picks for short runs
  (AdamW, its learning rate then set by Ultralytics' rule for the class count). Ultralytics sets
  torch to CPU count - 1 threads (on import and when it selects the CPU); the bench gives it all
  the cores like the others;
- ``visiondojo``: ``visiondojo.fit("small-fcos", train, val, test, budget=...)`` at its defaults;
- ``visiondojo-sgd``: the same with the optimizer pinned to SGD (batch, learning rate from its own
  range test, schedule and augmentation still planned): what the optimizer rule for detection
  rests on.

What a budget covers: ``fit``'s covers the whole call, its test pass included; the reference's
covers its training (its test pass comes after); Ultralytics' ``time=`` covers its training and
per-epoch validation.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torchmetrics.detection import MeanAveragePrecision

import visiondojo
from fmnist import RUNS_DIR, log, run_contender_here, run_contender_in_child, visiondojo_result
from visiondojo.data.scenes import Scenes, fashion_scenes
from visiondojo.models import small_fcos

CONTENDERS = ("reference", "ultralytics", "ultralytics-adamw", "visiondojo", "visiondojo-sgd")
BATCH = 16
SIZE = 128


def scenes(split: str, n: int, seed: int) -> Scenes:
    """``fashion_scenes`` cached on disk: generating 8,000 scenes takes a minute."""
    path = RUNS_DIR / f"scenes-{split}-{n}-{seed}.pt"
    if path.is_file():
        return torch.load(path, weights_only=False)
    made = fashion_scenes(split, n, seed=seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(made, path)
    return made


def per_image(s: Scenes) -> list[dict[str, torch.Tensor]]:
    return [{"boxes": t["boxes"], "labels": t["labels"]} for t in s.targets.gather(slice(None)).per_image()]


def score(predictions: list[dict[str, torch.Tensor]], truth: list[dict[str, torch.Tensor]]) -> dict[str, float]:
    metric = MeanAveragePrecision(box_format="xyxy", iou_type="bbox", backend="faster_coco_eval")
    metric.update(predictions, truth)
    values = metric.compute()
    return {"test_map": round(float(values["map"]), 5), "test_map_50": round(float(values["map_50"]), 5)}


# --- (a) torchvision's reference recipe ------------------------------------------------------------


def run_reference(budget_s: float, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    start = time.perf_counter()
    train, test = scenes("train", args.train, 0), scenes("test", args.test, 0)
    torch.manual_seed(seed)
    images = train.images.float() / 255
    mean, std = float(images.mean()), float(images.std())
    inputs = (images - mean) / std
    targets = [{"boxes": t["boxes"], "labels": t["labels"] + 1} for t in per_image(train)]
    model = small_fcos(len(train.class_names) + 1, 1, (SIZE, SIZE))
    lr = 0.02 * BATCH / 16
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4)
    steps_per_epoch = len(train.images) // BATCH
    warmup = min(1000, steps_per_epoch - 1)
    generator = torch.Generator().manual_seed(seed)
    epochs, step, epoch = None, 0, 0
    model.train()
    while epochs is None or epoch < epochs:
        order = torch.randperm(len(inputs), generator=generator)
        for i in range(steps_per_epoch):
            index = order[i * BATCH:(i + 1) * BATCH]
            flip = torch.rand(len(index), generator=generator) < 0.5
            batch = inputs[index].clone()
            batch[flip] = batch[flip].flip(-1)
            batch_targets = []
            for j, k in enumerate(index.tolist()):
                boxes = targets[k]["boxes"].clone()
                if flip[j]:
                    boxes[:, [0, 2]] = SIZE - boxes[:, [2, 0]]
                batch_targets.append({"boxes": boxes, "labels": targets[k]["labels"]})
            factor = 1.0
            if step < warmup:
                factor = 1e-3 + (1 - 1e-3) * step / warmup
            if epochs is not None:
                factor *= 0.1 ** sum(epoch >= round(epochs * m / 26) for m in (16, 22))
            for group in optimizer.param_groups:
                group["lr"] = lr * factor
            loss = sum(model(list(batch), batch_targets).values())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
            if epochs is None and step == 30:  # plan the epochs from the measured speed
                per_step = (time.perf_counter() - start) / step
                epochs = max(1, math.floor(budget_s / (per_step * steps_per_epoch)))
                log(f"reference: {per_step * 1000:.0f} ms per step: {epochs} epochs of {steps_per_epoch} steps")
        epoch += 1
    trained_s = time.perf_counter() - start
    model.eval()
    with torch.no_grad():
        test_inputs = (test.images.float() / 255 - mean) / std
        found = [d for chunk in test_inputs.split(64) for d in model(list(chunk))]
    predictions = [{"boxes": d["boxes"], "scores": d["scores"], "labels": d["labels"] - 1} for d in found]
    return {**score(predictions, per_image(test)), "epochs": epochs, "steps": step,
            "train_images_per_s": round(step * BATCH / trained_s, 1), "train_s": round(trained_s, 1),
            "plan": {"optimizer": "sgd", "momentum": 0.9, "weight_decay": 1e-4, "lr": lr, "batch_size": BATCH,
                     "warmup_steps": warmup, "schedule": "x0.1 at 16/26 and 22/26 of the epochs",
                     "augmentation": "horizontal flip"}}


# --- (b) Ultralytics YOLO ---------------------------------------------------------------------------


def run_ultralytics(budget_s: float, seed: int, args: argparse.Namespace, optimizer: str = "auto") -> dict[str, Any]:
    config = RUNS_DIR / "ultralytics-config"
    config.mkdir(parents=True, exist_ok=True)
    os.environ["YOLO_CONFIG_DIR"] = str(config)
    os.environ["YOLO_OFFLINE"] = "1"
    import matplotlib

    font = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    for name in ("Arial.ttf", "Arial.Unicode.ttf"):
        if not (config / name).exists():
            shutil.copy(font, config / name)
    from ultralytics import YOLO

    import ultralytics.utils.torch_utils as ultralytics_torch

    # Ultralytics sets torch to CPU count - 1 threads (1 on 2 cores) on import and again when it picks
    # the CPU for training (its NUM_THREADS); every contender gets all the cores.
    ultralytics_torch.NUM_THREADS = len(os.sched_getaffinity(0))
    torch.set_num_threads(ultralytics_torch.NUM_THREADS)

    from visiondojo.data.formats import export_yolo

    root = RUNS_DIR / f"scenes-yolo-{args.train}-{args.val}"
    if not (root / "data.yaml").is_file():
        train, val = scenes("train", args.train, 0), scenes("val", args.val, 0)
        export_yolo(train.images, per_image(train), train.class_names, root, split="train")
        export_yolo(val.images, per_image(val), val.class_names, root, split="val")
    test = scenes("test", args.test, 0)
    start = time.perf_counter()
    model = YOLO("yolo26n.yaml")
    model.train(data=str(root / "data.yaml"), time=budget_s / 3600, imgsz=SIZE, amp=False, optimizer=optimizer,
                plots=False, device="cpu", workers=0, seed=seed, pretrained=False, verbose=False,
                project=str(RUNS_DIR / "ultralytics-runs"), name=f"seed{seed}", exist_ok=True)
    trained_s = time.perf_counter() - start
    epochs = int(model.trainer.epoch) + 1 if getattr(model, "trainer", None) else None
    images = [img[0].numpy() for img in test.images]
    predictions = []
    for chunk in range(0, len(images), 64):
        for result in model.predict([im[:, :, None].repeat(3, axis=2) for im in images[chunk:chunk + 64]],
                                    imgsz=SIZE, conf=0.001, max_det=100, device="cpu", verbose=False):
            boxes = result.boxes
            predictions.append({"boxes": boxes.xyxy.cpu().float(), "scores": boxes.conf.cpu().float(),
                                "labels": boxes.cls.cpu().long()})
    seen = args.train * (epochs or 0)
    return {**score(predictions, per_image(test)), "epochs": epochs, "train_s": round(trained_s, 1),
            "train_images_per_s": round(seen / trained_s, 1) if epochs else None,
            "plan": {"model": "yolo26n.yaml", "pretrained": False, "imgsz": SIZE, "amp": False, "optimizer": optimizer,
                     "time_h": round(budget_s / 3600, 4), "defaults": "Ultralytics' own otherwise (mosaic, ...)"}}


# --- (c) visiondojo ---------------------------------------------------------------------------------


def run_visiondojo(budget_s: float, seed: int, args: argparse.Namespace, optimizer: str | None = None) -> dict[str, Any]:
    """``fit`` as a user calls it; ``optimizer`` pins the optimizer (everything else still planned):
    the measurement behind the optimizer rule for detection."""
    train, val, test = scenes("train", args.train, 0), scenes("val", args.val, 0), scenes("test", args.test, 0)
    name = "visiondojo" + (f"-{optimizer}" if optimizer else "")
    run = visiondojo.fit("small-fcos", (train.images, per_image(train)), (val.images, per_image(val)),
                         (test.images, per_image(test)), class_names=train.class_names, budget=budget_s, seed=seed,
                         out=RUNS_DIR / "detection-runs" / f"{name}-{args.train}-{int(budget_s)}-{seed}",
                         pin={"optimization.optimizer": optimizer} if optimizer else None,
                         overwrite=True, progress=False)
    return {**visiondojo_result(run, metric="map"), "test_map_50": run.metrics["test"]["map_50"]}


RUNNERS = {"reference": run_reference, "ultralytics": run_ultralytics, "visiondojo": run_visiondojo,
           "ultralytics-adamw": lambda budget, seed, args: run_ultralytics(budget, seed, args, optimizer="AdamW"),
           "visiondojo-sgd": lambda budget, seed, args: run_visiondojo(budget, seed, args, optimizer="sgd")}


def scene_bench_args(doc: str, contenders: tuple[str, ...], argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    """The command line of the benchmarks on ``fashion-scenes`` (this one and segmentation's): the
    parsed arguments, and the size flags a contender's child process is given."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--budget", type=float, default=600.0, help="wall-clock seconds per contender")
    parser.add_argument("--out", type=Path, required=True, help="JSON file for the figures")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--contenders", default=",".join(contenders))
    parser.add_argument("--train", type=int, default=8000)
    parser.add_argument("--val", type=int, default=1000)
    parser.add_argument("--test", type=int, default=1000)
    parser.add_argument("--contender", choices=contenders, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    return args, ["--train", str(args.train), "--val", str(args.val), "--test", str(args.test)]


def chosen_contenders(args: argparse.Namespace, contenders: tuple[str, ...]) -> list[str]:
    """The ``--contenders`` list, checked against the benchmark's (exits naming the unknown ones)."""
    names = [n.strip() for n in args.contenders.split(",") if n.strip()]
    unknown = sorted(set(names) - set(contenders))
    if unknown or not names:
        sys.exit(f"unknown contenders {unknown}; choose from {', '.join(contenders)}")
    return names


def main(argv: list[str] | None = None) -> None:
    args, sizes = scene_bench_args(__doc__, CONTENDERS, argv)
    if args.contender is not None:
        run_contender_here(args.contender, args.budget, args.seed, args.out,
                           runner=lambda name, budget, seed: RUNNERS[name](budget, seed, args))
        return
    names = chosen_contenders(args, CONTENDERS)
    for split, n in (("train", args.train), ("val", args.val), ("test", args.test)):
        scenes(split, n, 0)  # generated once, before any clock starts
    # Resumable: contenders already in --out for the same budget, sizes and seed are kept, not rerun.
    keys = {"budget_s": args.budget, "seed": args.seed, "train_images": args.train, "test_images": args.test}
    earlier = json.loads(args.out.read_text()) if args.out.is_file() else {}
    same = all(earlier.get(k) == v for k, v in keys.items())
    results = {name: earlier[name] for name in CONTENDERS if same and name in earlier}
    for name in names:
        if name not in results:
            results[name] = run_contender_in_child(name, args.budget, args.seed, Path(__file__), sizes)
    report: dict[str, Any] = {"benchmark": "fashion-scenes detection", "budget_s": args.budget, "seed": args.seed,
                              "train_images": args.train, "val_images": args.val, "test_images": args.test,
                              "cpu_count": len(os.sched_getaffinity(0)), "torch": torch.__version__,
                              "date": time.strftime("%Y-%m-%d"), **results}
    if "reference" in results:
        base = results["reference"]["test_map"]
        report["test_map_vs_reference"] = {n: round(r["test_map"] - base, 5) for n, r in results.items()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    log(f"figures written to {args.out}: " + ", ".join(f"{n} mAP {r['test_map']:.4f}" for n, r in results.items()))


if __name__ == "__main__":
    main()
