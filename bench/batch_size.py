"""Time to 90% Fashion-MNIST test accuracy: the usual batch and learning rate against visiondojo's choice.

Usage::

    python bench/batch_size.py --out bench/results/batch_size.json

Contenders, both FMNIST-ResNet trained by visiondojo's engine (same precision, device-side
batching and loop, so only the optimization choices differ):

- ``default``: batch 64, AdamW lr 1e-3, constant learning rate, no warmup, ``--epochs`` epochs;
- ``visiondojo``: ``fit`` with a time budget equal to the default's time to 90%, all its
  overheads included (meta-learning, validation passes, final evaluation): it chooses the batch
  size, learning rate, optimizer, warmup, BatchNorm momentum and a cosine schedule sized to
  that budget.

The 10k test images serve as the validation data, so the loop scores test accuracy after
every epoch; the time to 90% is the training time (validation excluded) summed up to the
first epoch that reaches it, plus, for visiondojo, its meta-learning time.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

import visiondojo
from visiondojo.data.builtin import load_fashion_mnist

RESULTS = Path(__file__).resolve().parent / "results"
TARGET = 0.90
NO_POLICY = {"regularization.augment": [], "regularization.label_smoothing": 0.0, "regularization.mixup": 0.0,
             "regularization.cutmix": 0.0}
"""Pinned for both contenders, so only the optimization choices differ: ``fit`` would otherwise run
its policy search (for the default contender without a budget, up to 10 epochs' time that its
time to 90% does not count) and pick a different policy for each."""


def log(message: str) -> None:
    print(f"[batch-size-bench] {message}", file=sys.stderr, flush=True)


def data() -> tuple[tuple[Any, Any], tuple[Any, Any]]:
    return load_fashion_mnist("train"), load_fashion_mnist("test")


def time_to_target(history: list[dict[str, Any]], target: float) -> tuple[float | None, int | None]:
    """Training seconds (validation excluded) until the first epoch with val_acc >= target."""
    spent = 0.0
    for row in history:
        spent += row["train_s"]
        if row["val_acc"] >= target:
            return round(spent, 1), row["epoch"]
    return None, None


def run(name: str, epochs: int, seed: int, budget: float | None = None) -> dict[str, Any]:
    train, test = data()
    torch.manual_seed(seed)
    model = visiondojo.FMNISTResNet()
    out = RESULTS / f"batch-size-{name}"
    if name == "default":
        pins = {"optimization.batch_size": 64, "optimization.lr": 1e-3, "optimization.optimizer": "adamw",
                "optimization.schedule": "constant", "optimization.warmup_epochs": 0.0,
                "regularization.weight_decay": 0.01, "optimization.epochs": epochs,
                "optimization.early_stopping_patience": None, "optimization.bn_momentum": None, **NO_POLICY}
        result = visiondojo.fit(model, train, test, seed=seed, pin=pins, out=out, overwrite=True, progress=True)
    else:
        result = visiondojo.fit(model, train, test, seed=seed, budget=budget, pin=NO_POLICY, out=out, overwrite=True,
                                progress=True)
    plan = result.plan
    meta_s = plan.measurements.get("meta_seconds", {}).get("total", 0.0) if name != "default" else 0.0
    reached_s, epoch = time_to_target(result.history, TARGET)
    total = round(reached_s + meta_s, 1) if reached_s is not None else None
    log(f"{name}: batch {plan.optimization.batch_size}, {plan.optimization.optimizer} lr {plan.optimization.lr:g}; "
        f"{TARGET:.0%} after {reached_s}s of training (epoch {epoch}), {total}s with {meta_s:.1f}s of meta-learning")
    return {"time_to_target_s": total, "train_s_to_target": reached_s, "meta_learning_s": meta_s,
            "epoch_reached": epoch, "budget_s": budget, "batch_size": plan.optimization.batch_size,
            "lr": plan.optimization.lr, "optimizer": plan.optimization.optimizer,
            "test_acc_per_epoch": [r["val_acc"] for r in result.history],
            "train_s_per_epoch": [r["train_s"] for r in result.history],
            "train_images_per_s": [r["train_images_per_s"] for r in result.history],
            "evidence": {k: v for k, v in plan.evidence.items() if k.startswith(("optimization", "meta"))}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--epochs", type=int, default=5, help="epochs of the default contender (it must reach 90%%)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    results = {"default": run("default", args.epochs, args.seed)}
    a = results["default"]["time_to_target_s"]
    if a is None:
        raise SystemExit(f"the default contender did not reach {TARGET:.0%} in {args.epochs} epochs; raise --epochs")
    results["visiondojo"] = run("visiondojo", args.epochs, args.seed, budget=a)
    b = results["visiondojo"]["time_to_target_s"]
    report = {"benchmark": "time to 90% Fashion-MNIST test accuracy", "date": time.strftime("%Y-%m-%d"),
              "torch": torch.__version__, "threads": torch.get_num_threads(), **results,
              "ratio_visiondojo_to_default": round(b / a, 3) if a and b else None}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    log(f"ratio visiondojo / default: {report['ratio_visiondojo_to_default']}; figures in {args.out}")


if __name__ == "__main__":
    main()
