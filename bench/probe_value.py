"""What each optimization probe buys over its fallback: the figures behind ``choose.PROBE_GAINS``.

Usage (from the repository root)::

    python bench/probe_value.py --train 5000 --epochs 8 --seeds 0,1,2 --out bench/results/probe_value.json

Under a time budget the noise scale and the learning-rate range test run only when their expected
gain beats what their seconds would have bought as training (``learning_curve.cost_gate``). Their
expected gain is this benchmark's measurement: for each seed, ``fit`` runs on Fashion-MNIST (a
stratified draw of ``--train`` images, the 10k test images scored) with the epochs pinned and the
regularization pinned to none (so only the optimization choices differ), three ways:

- ``probes``: every probe runs (no budget, so no gate);
- ``default-lr``: the batch and optimizer that ``probes`` chose, the learning rate pinned to
  ``optimizers.default_lr`` (what a skipped range test leaves);
- ``efficient-batch``: the batch pinned to the smallest batch within 90% of the best images/s of
  ``probes``' throughput scan (what a skipped noise scale leaves); the range test still runs.
  Skipped when that is the batch ``probes`` chose.

The figure per fallback is the relative error reduction of ``probes`` over it,
``(err_fallback - err_probes) / err_fallback``, per seed, then its mean and standard deviation.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from statistics import mean, stdev
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import visiondojo  # noqa: E402
from suite import Cell, load_cell_data, machine  # noqa: E402
from visiondojo.choose import EFFICIENT  # noqa: E402
from visiondojo.optimize.optimizers import default_lr  # noqa: E402


def fit_once(data: Any, epochs: int, seed: int, pin: dict[str, Any]) -> dict[str, Any]:
    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as out:
        run = visiondojo.fit(visiondojo.FMNISTResNet(), (data.train_images, data.train_labels),
                             test_data=(data.test_images, data.test_labels), seed=seed, out=out, overwrite=True,
                             progress=False, regularization=visiondojo.RegularizationParams(),
                             pin={"optimization.epochs": epochs, **pin})
    opt = run.plan.optimization
    return {"test_acc": run.metrics["test"]["acc"], "batch_size": opt.batch_size, "lr": opt.lr,
            "optimizer": opt.optimizer, "throughput": run.plan.measurements.get("throughput", {}),
            "pin": pin}


def efficient_batch(throughput: dict[str, float]) -> int:
    best = max(throughput.values())
    return min(int(b) for b, speed in throughput.items() if speed >= EFFICIENT * best)


def relative_gain(probes: float, fallback: float) -> float:
    return ((1 - fallback) - (1 - probes)) / (1 - fallback)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", type=int, default=5000)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--out", type=Path, default=Path("bench/results/probe_value.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(torch.get_num_threads())
    data = load_cell_data(Cell(f"fmnist{args.train}", "fashion-mnist", 0, train_size=args.train))
    runs: dict[str, list[dict[str, Any]]] = {"probes": [], "default-lr": [], "efficient-batch": []}
    for seed in (int(s) for s in args.seeds.split(",")):
        probes = fit_once(data, args.epochs, seed, {})
        runs["probes"].append({"seed": seed, **probes})
        chosen = {"optimization.batch_size": probes["batch_size"], "optimization.optimizer": probes["optimizer"]}
        lr, _ = default_lr(probes["optimizer"], probes["batch_size"])
        runs["default-lr"].append({"seed": seed, **fit_once(data, args.epochs, seed, {**chosen, "optimization.lr": lr})})
        efficient = efficient_batch(probes["throughput"])
        if efficient != probes["batch_size"]:
            runs["efficient-batch"].append({"seed": seed, **fit_once(data, args.epochs, seed,
                                                                    {"optimization.batch_size": efficient})})
        print(json.dumps({name: [r["test_acc"] for r in rs] for name, rs in runs.items()}), flush=True)
    summary: dict[str, Any] = {}
    for fallback in ("default-lr", "efficient-batch"):
        by_seed = {r["seed"]: r["test_acc"] for r in runs["probes"]}
        gains = [relative_gain(by_seed[r["seed"]], r["test_acc"]) for r in runs[fallback]]
        summary[fallback] = {"relative_gain_mean": round(mean(gains), 4) if gains else None,
                             "relative_gain_sd": round(stdev(gains), 4) if len(gains) > 1 else None,
                             "seeds": len(gains)}
    document = {"args": {k: str(v) for k, v in vars(args).items()}, "machine": machine(), "runs": runs,
                "summary": summary}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(document, indent=1))
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
