"""Do the policy search's proxies rank policies as the real run does?

Usage::

    python bench/proxy_agreement.py --train 5000 --epochs 10 --out bench/results/proxy_agreement.json

Fashion-MNIST, a freshly seeded FMNIST-ResNet. ``--train`` training images and a separate
5,000-image validation set are drawn by ``--seed``; the 10k test images score the real runs.
One ``find_params`` call picks the optimization (batch, learning rate, optimizer, warmup) for
``--epochs`` epochs, and every run below reuses it, so only the regularization policy differs.

For each policy in ``POLICIES``:

- **full run**: ``visiondojo.fit`` on all ``--train`` images for ``--epochs`` epochs with the
  policy pinned; its gain is its test accuracy minus the no-augmentation run's;
- **proxies**: the policy search's own ``Proxy`` (same epochs, same optimizer) on a subset of
  ``--proxy`` images and on half of it, scored on the validation set; its gain is the paired
  effect against the no-augmentation proxy at the same size, and the two sizes' gains are
  extrapolated to ``--train`` images (``regularize.extrapolate``) as the search does.

Reported: Spearman's rank correlation of the full-run gains with the proxy gains at the larger
size and with the extrapolated gains, over the policies.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.stats import spearmanr

import visiondojo
from fmnist import log
from visiondojo.augment import trivial_augment
from visiondojo.data.batches import Normalizer
from visiondojo.data.builtin import load_fashion_mnist
from visiondojo.data.sources import DataOptions, as_source
from visiondojo.engine.runtime import Runtime
from visiondojo.paired import paired_test
from visiondojo.plan import AugmentOp, RegularizationParams
from visiondojo.regularize.extrapolate import extrapolate_gain
from visiondojo.regularize.search import Proxy, target_fields
from visiondojo.tasks import make_task

BENCH_DIR = Path(__file__).resolve().parent
VAL_IMAGES = 5000
OFF = {"label_smoothing": 0.0, "mixup": 0.0, "cutmix": 0.0}
POLICIES: dict[str, dict[str, Any]] = {
    "none": {"augment": [], **OFF},
    "label smoothing": {"augment": [], **OFF, "label_smoothing": 0.1},
    "label smoothing + mixup": {"augment": [], **OFF, "label_smoothing": 0.1, "mixup": 0.2},
    "flip + translate": {"augment": [AugmentOp("hflip", 1.0), AugmentOp("translate", 1 / 3)], **OFF},
    "trivial": {"augment": trivial_augment(channels=1), **OFF},
    "trivial + label smoothing": {"augment": trivial_augment(channels=1), **OFF, "label_smoothing": 0.1},
}
OPTIMIZATION_PINS = ("batch_size", "lr", "optimizer", "warmup_epochs", "bn_momentum", "schedule", "keep")


def policy_params(fields: dict[str, Any], base: RegularizationParams) -> RegularizationParams:
    """The base plan's regularization (weight decay, class balance) with this policy's fields."""
    values = {**vars(base), **fields}
    return RegularizationParams(**values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", type=int, default=5000)
    parser.add_argument("--proxy", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "results" / "proxy_agreement.json")
    args = parser.parse_args()
    torch.set_num_threads(len(os.sched_getaffinity(0)))

    images, labels = load_fashion_mnist("train")
    order = np.random.default_rng(args.seed).permutation(len(images))
    train_idx, val_idx = order[:args.train], order[args.train:args.train + VAL_IMAGES]
    train, val = (images[train_idx], labels[train_idx]), (images[val_idx], labels[val_idx])
    test = load_fashion_mnist("test")

    pins = {"optimization.epochs": args.epochs, **{f"regularization.{k}": v for k, v in POLICIES["none"].items()}}
    plan = visiondojo.find_params(visiondojo.FMNISTResNet(), train, val, seed=args.seed, pin=pins)
    fixed = {f"optimization.{name}": getattr(plan.optimization, name) for name in OPTIMIZATION_PINS}
    fixed["regularization.weight_decay"] = plan.regularization.weight_decay
    log(f"optimization for every run: {fixed}")

    runtime = Runtime(plan.runtime)
    task = make_task(plan.data)
    normalizer = Normalizer(plan.data, runtime.device, plan.runtime.channels_last)
    sources = [as_source(data, DataOptions(), role=role) for data, role in ((train, "train"), (val, "val"))]
    torch.manual_seed(args.seed)
    initial = visiondojo.FMNISTResNet()
    order_t = torch.randperm(args.train, generator=torch.Generator().manual_seed(args.seed + 4242))
    proxy = Proxy(plan, initial, task, sources[0].subset(order_t[:args.proxy]), sources[1], runtime, normalizer,
                  args.epochs, target_fields(task))
    proxies = {"large": proxy, "small": proxy.on_fewer(args.proxy // 2)}

    results: dict[str, dict[str, Any]] = {}
    for name, fields in POLICIES.items():
        policy = policy_params(fields, plan.regularization)
        row: dict[str, Any] = {}
        for size, runner in proxies.items():
            start = time.perf_counter()
            outcome, _ = runner.run(policy.augment, {name: getattr(policy, name) for name in target_fields(task)})
            row[f"proxy_{size}"] = {"score": outcome.score, "correct": outcome.correct,
                                    "seconds": round(time.perf_counter() - start, 1)}
        start = time.perf_counter()
        run = visiondojo.fit(visiondojo.FMNISTResNet(), train, val, test, seed=args.seed, progress=False,
                             out=BENCH_DIR / "results" / "proxy-agreement-runs" / f"s{args.seed}-{name.replace(' ', '_')}",
                             overwrite=True, pin={**fixed, "optimization.epochs": args.epochs},
                             regularization=policy)
        row["full"] = {"test_acc": run.metrics["test"]["acc"], "seconds": round(time.perf_counter() - start, 1)}
        log(f"{name}: proxy {row['proxy_large']['score']:.4f} / {row['proxy_small']['score']:.4f}, "
            f"full test {row['full']['test_acc']:.4f}")
        results[name] = row

    base = results["none"]
    table = []
    for name, row in results.items():
        gains = [paired_test(base[f"proxy_{size}"]["correct"], row[f"proxy_{size}"]["correct"]).effect
                 for size in ("small", "large")]
        extrapolated = extrapolate_gain([args.proxy // 2, args.proxy], gains, args.train)
        table.append({"policy": name, "proxy_small_gain": round(gains[0], 5), "proxy_large_gain": round(gains[1], 5),
                      "extrapolated_gain": round(extrapolated, 5),
                      "full_gain": round(row["full"]["test_acc"] - base["full"]["test_acc"], 5),
                      "full_test_acc": row["full"]["test_acc"],
                      "proxy_scores": [row["proxy_small"]["score"], row["proxy_large"]["score"]]})
    full = [r["full_gain"] for r in table]
    agreement = {"spearman_proxy_large": float(spearmanr([r["proxy_large_gain"] for r in table], full).statistic),
                 "spearman_proxy_small": float(spearmanr([r["proxy_small_gain"] for r in table], full).statistic),
                 "spearman_extrapolated": float(spearmanr([r["extrapolated_gain"] for r in table], full).statistic)}
    out = {"args": {k: str(v) for k, v in vars(args).items()}, "optimization": fixed, "policies": table,
           "agreement": agreement, "torch": torch.__version__}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2, default=str))
    print("| policy | proxy gain (small) | proxy gain (large) | extrapolated | full-run gain | full test acc |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in table:
        print(f"| {r['policy']} | {r['proxy_small_gain']:+.2%} | {r['proxy_large_gain']:+.2%} | "
              f"{r['extrapolated_gain']:+.2%} | {r['full_gain']:+.2%} | {r['full_test_acc']:.4f} |")
    print(json.dumps(agreement, indent=2))


if __name__ == "__main__":
    main()
