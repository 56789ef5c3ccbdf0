"""Semi-supervised benchmark: visiondojo on few labels alone, and with the other images unlabeled.

Usage::

    python bench/ssl.py --labels 1000 --budget 900 --out bench/results/ssl.json

Fashion-MNIST: ``--labels`` training images (the same number per class, chosen by ``--seed``)
keep their labels; the other training images are passed as unlabeled data. A freshly seeded
FMNIST-ResNet, equal wall-clock per contender, scored on the 10k test images:

- ``labeled``: ``visiondojo.fit`` on the labeled images alone (its own optimization and
  regularization: the meta-learners and the policy search);
- ``semi``: the same call with ``unlabeled=`` the rest; visiondojo chooses what to do with them.

Each contender runs in its own child process (``fmnist.py``'s machinery).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import visiondojo
from fmnist import contender_parser, RUNS_DIR, log, overall_throughput, run_contender_here, run_contender_in_child
from visiondojo.data.builtin import load_fashion_mnist

CONTENDERS = ("labeled", "semi")
EXPECTED_GAIN = 0.04


def split_labels(labels: np.ndarray, count: int, seed: int) -> np.ndarray:
    """Indices of ``count`` images, the same number per class, drawn by ``seed``."""
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    per_class = count // len(classes)
    return np.sort(np.concatenate([rng.choice(np.flatnonzero(labels == k), per_class, replace=False)
                                   for k in classes]))


def make_runner(count: int):
    def run(name: str, budget_s: float, seed: int) -> dict[str, Any]:
        images, labels = load_fashion_mnist("train")
        test = load_fashion_mnist("test")
        chosen = split_labels(labels, count, seed)
        rest = np.setdiff1d(np.arange(len(labels)), chosen)
        torch.manual_seed(seed)
        run = visiondojo.fit(visiondojo.FMNISTResNet(), (images[chosen], labels[chosen]), test_data=test,
                             unlabeled=images[rest] if name == "semi" else None, budget=budget_s, seed=seed,
                             out=RUNS_DIR / f"ssl-{name}", overwrite=True, progress=True)
        plan = run.plan
        return {"test_acc": run.metrics["test"]["acc"], "labeled": int(len(chosen)),
                "unlabeled": int(len(rest)) if name == "semi" else 0, "epochs": len(run.history),
                "train_images_per_s": overall_throughput(run.history), "ssl": {
                    "choice": {k: v for k, v in plan.evidence.items() if k.startswith("ssl")},
                    "noisy_student": plan.measurements.get("noisy_student"),
                    "pretrain": plan.measurements.get("ssl_pretrain")},
                "plan": plan.to_dict(), "history": run.history,
                "run_dir": os.path.relpath(run.dir, RUNS_DIR.parent.parent)}
    return run


def main() -> None:
    parser = contender_parser(__doc__, CONTENDERS, 900.0)
    parser.add_argument("--labels", type=int, default=1000)
    args = parser.parse_args()
    if args.contender is not None:
        run_contender_here(args.contender, args.budget, args.seed, args.out, runner=make_runner(args.labels))
        return
    names = [n for n in args.contenders.split(",") if n]
    results = {name: run_contender_in_child(name, args.budget, args.seed, script=Path(__file__),
                                            extra=["--labels", str(args.labels)]) for name in names}
    summary = {name: {"test_acc": r["test_acc"], "epochs": r["epochs"]} for name, r in results.items()}
    report: dict[str, Any] = {"benchmark": "ssl", "labels": args.labels, "budget_s": args.budget, "seed": args.seed,
                              "cpu_count": len(os.sched_getaffinity(0)), "torch": torch.__version__,
                              "date": time.strftime("%Y-%m-%d"), "summary": summary, **results}
    if set(CONTENDERS) <= set(results):
        gain = round(results["semi"]["test_acc"] - results["labeled"]["test_acc"], 6)
        report["gain"] = gain
        report["meets_expectation"] = gain >= EXPECTED_GAIN
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    log(f"summary: {json.dumps(summary)}" + (f", gain {report['gain']:+.4f}" if "gain" in report else ""))


if __name__ == "__main__":
    main()
