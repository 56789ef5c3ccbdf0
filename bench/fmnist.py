"""Fashion-MNIST benchmark: a plain PyTorch baseline against ``visiondojo.fit`` under one wall-clock budget.

Usage::

    python bench/fmnist.py --budget 300 --out bench/results/fmnist.json
    python bench/fmnist.py --budget 30 --out bench/results/quick.json --contenders baseline

Both contenders train the same architecture (a freshly seeded ``FMNISTResNet``) for the same
budget and are scored on the 10k test images. The baseline is the loop a typical practitioner
writes: AdamW (lr 1e-3, weight decay 1e-2), batch 64, fp32, no augmentation, constant LR, all
60k training images through a shuffled DataLoader, and as many whole epochs as fit the budget.

Each contender runs in its own child process (this script re-invoked with a hidden
``--contender`` flag) so that its peak RSS is its own and not the maximum of both.
Progress goes to stderr; the JSON with the figures goes to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from statistics import harmonic_mean
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

import visiondojo
from visiondojo.data.builtin import load_fashion_mnist
from visiondojo.plan import AugmentOp, RegularizationParams

BENCH_DIR = Path(__file__).resolve().parent
RUNS_DIR = BENCH_DIR / "results"
CONTENDERS = ("baseline", "visiondojo", "visiondojo-reg", "visiondojo-reg-adaptive")
EVAL_BATCH = 1000
EXPECTED_THROUGHPUT_RATIO = 1.8

Result = dict[str, Any]


@dataclass(frozen=True)
class BaselinePlan:
    """The baseline's hyperparameters, fixed by the benchmark spec (recorded in the JSON as its plan)."""

    model: str = "FMNISTResNet"
    optimizer: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 1e-2
    batch_size: int = 64
    precision: str = "fp32"
    augmentation: str = "none"
    schedule: str = "constant"
    mean: float = 0.2860
    std: float = 0.3530
    train_images: int = 60_000
    epochs: str = "as many whole epochs as fit the budget"


def log(message: str) -> None:
    """Progress lines go to stderr so that stdout stays free for whoever drives the script."""
    print(f"[fmnist-bench] {message}", file=sys.stderr, flush=True)


def peak_rss_mb() -> float:
    """Peak resident memory of this process; Linux reports ru_maxrss in KiB."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def cpu_seconds() -> float:
    """User + system CPU time of this process so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def overall_throughput(history: list[dict[str, Any]]) -> float:
    """Training images/s over the whole run from per-epoch figures.

    The harmonic mean of per-epoch rates is total images / total training time when the epochs
    train equally many images, so one slow or fast epoch does not skew the figure. 0 when no epoch
    finished (a budget spent before the first one ended), so such a run is still recorded.
    """
    if not history:
        return 0.0
    return round(harmonic_mean([row["train_images_per_s"] for row in history]), 1)


# --- baseline: plain PyTorch -------------------------------------------------------------------


def normalized_tensors(images: np.ndarray, labels: np.ndarray, mean: float, std: float) -> TensorDataset:
    """uint8 (N, H, W) grayscale images scaled to [0, 1] and normalized once up front, as (N, 1, H, W) float32."""
    x = torch.tensor(images, dtype=torch.float32).div_(255.0).sub_(mean).div_(std).unsqueeze(1)
    return TensorDataset(x, torch.from_numpy(labels))


def baseline_tensors(split: str, plan: BaselinePlan) -> TensorDataset:
    """A Fashion-MNIST split normalized with the plan's mean and std, as (N, 1, 28, 28) float32."""
    return normalized_tensors(*load_fashion_mnist(split), plan.mean, plan.std)


def train_one_epoch(model: nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer) -> tuple[int, float]:
    """One pass over the loader; returns (images seen, mean training loss)."""
    model.train()
    seen, loss_sum = 0, 0.0
    for images, labels in loader:
        optimizer.zero_grad()
        loss = F.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()
        seen += len(labels)
        loss_sum += loss.item() * len(labels)
    return seen, loss_sum / max(seen, 1)


@torch.no_grad()
def accuracy(model: nn.Module, data: TensorDataset) -> float:
    """Top-1 accuracy over a whole dataset."""
    model.eval()
    correct = 0
    for images, labels in DataLoader(data, batch_size=EVAL_BATCH):
        correct += int((model(images).argmax(dim=1) == labels).sum())
    return round(correct / len(data), 6)


def next_epoch_fits(history: list[dict[str, Any]], elapsed_s: float, budget_s: float) -> bool:
    """Start another epoch only if one as long as the mean epoch so far still ends within the budget.

    Nothing is known before the first epoch, so the first always runs.
    """
    if not history:
        return True
    mean_epoch_s = sum(row["epoch_s"] for row in history) / len(history)
    return elapsed_s + mean_epoch_s <= budget_s


def run_baseline(budget_s: float, seed: int, plan: BaselinePlan = BaselinePlan(),
                 data: Callable[[str], TensorDataset] | None = None) -> Result:
    """The practitioner's loop; the budget clock starts before the data is loaded, as fit's does.

    ``data`` maps ``"train"`` / ``"test"`` to normalized tensors (default: Fashion-MNIST with the
    plan's mean and std), so other benchmarks run the same loop on other data.
    """
    start = time.perf_counter()
    torch.manual_seed(seed)
    load = data if data is not None else (lambda split: baseline_tensors(split, plan))
    train = load("train")
    model = visiondojo.FMNISTResNet()
    optimizer = torch.optim.AdamW(model.parameters(), lr=plan.lr, weight_decay=plan.weight_decay)
    loader = DataLoader(train, batch_size=plan.batch_size, shuffle=True)
    history: list[dict[str, Any]] = []
    while next_epoch_fits(history, time.perf_counter() - start, budget_s):
        epoch_start = time.perf_counter()
        seen, train_loss = train_one_epoch(model, loader, optimizer)
        epoch_s = time.perf_counter() - epoch_start
        history.append({"epoch": len(history) + 1, "train_loss": round(train_loss, 6), "epoch_s": round(epoch_s, 3),
                        "train_images_per_s": round(seen / epoch_s, 1)})
        log(f"baseline epoch {len(history)}  train_loss {train_loss:.4f}  {seen / epoch_s:,.0f} img/s  "
            f"{epoch_s:.1f}s  ({time.perf_counter() - start:.0f}/{budget_s:.0f}s)")
    test_acc = accuracy(model, load("test"))
    return {"test_acc": test_acc, "epochs": len(history), "train_images_per_s": overall_throughput(history),
            "plan": asdict(plan), "history": history}


# --- visiondojo --------------------------------------------------------------------------------


FIXED_REGULARIZATION = RegularizationParams(
    augment=[AugmentOp("hflip", 1.0), AugmentOp("translate", 1 / 3), AugmentOp("zoom", 0.25)],
    label_smoothing=0.1,
)
"""``visiondojo-reg``: a fixed, reasonable policy for Fashion-MNIST: flip (p 0.5), translate +-10 %,
zoom 0.9-1.1, label smoothing 0.1; the weight decay rate stays visiondojo's choice."""


def run_visiondojo(budget_s: float, seed: int, name: str = "visiondojo",
                   regularization: dict[str, Any] | None = None) -> Result:
    """``fit`` on the built-in dataset name: it holds out validation from the 60k and tests on the 10k.

    ``regularization`` pins regularization fields (the fixed-policy contenders).
    """
    torch.manual_seed(seed)
    pins = {f"regularization.{k}": v for k, v in (regularization or {}).items()}
    run = visiondojo.fit(visiondojo.FMNISTResNet(), "fashion-mnist", budget=budget_s, seed=seed,
                         out=RUNS_DIR / f"fmnist-{name}", overwrite=True, progress=True, pin=pins)
    return visiondojo_result(run)


def visiondojo_result(run: visiondojo.Run, metric: str = "acc") -> Result:
    """The figures every benchmark records for a ``fit`` run (its whole plan included)."""
    return {f"test_{metric}": run.metrics["test"][metric], "epochs": len(run.history),
            "train_images_per_s": overall_throughput(run.history), "plan": run.plan.to_dict(), "history": run.history,
            "run_dir": os.path.relpath(run.dir, BENCH_DIR.parent) if run.dir is not None else None}


def fixed_policy(adaptive_decay: bool) -> dict[str, Any]:
    fields = {"augment": FIXED_REGULARIZATION.augment, "label_smoothing": FIXED_REGULARIZATION.label_smoothing}
    return {**fields, "adaptive_decay": adaptive_decay}


RUNNERS: dict[str, Callable[[float, int], Result]] = {
    "baseline": run_baseline,
    "visiondojo": run_visiondojo,
    "visiondojo-reg": lambda budget, seed: run_visiondojo(budget, seed, "visiondojo-reg", fixed_policy(False)),
    "visiondojo-reg-adaptive": lambda budget, seed: run_visiondojo(budget, seed, "visiondojo-reg-adaptive",
                                                                   fixed_policy(True)),
}


# --- orchestration -----------------------------------------------------------------------------


def contender_parser(doc: str, contenders: Sequence[str], budget_s: float) -> argparse.ArgumentParser:
    """The arguments every multi-contender benchmark takes (``--contender`` is the child-process side)."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--budget", type=float, default=budget_s)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--contenders", default=",".join(contenders))
    parser.add_argument("--contender", choices=contenders, help=argparse.SUPPRESS)
    return parser


def run_contender_here(name: str, budget_s: float, seed: int, out: Path,
                       runner: Callable[[str, float, int], Result] | None = None) -> None:
    """Child-process side: train one contender and write its figures, including this process's peak RSS.

    ``cpu_utilization`` (CPU seconds / (wall seconds x threads)) shows whether the contender had the
    cores to itself: well below 1 means other load on the machine skewed its timings.
    """
    threads = len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)
    log(f"{name}: start (budget {budget_s:g}s, seed {seed}, {threads} torch threads)")
    start, cpu_start = time.perf_counter(), cpu_seconds()
    result = runner(name, budget_s, seed) if runner is not None else RUNNERS[name](budget_s, seed)
    wall_s = time.perf_counter() - start
    result["wall_s"] = round(wall_s, 1)
    result["peak_rss_mb"] = peak_rss_mb()
    result["torch_threads"] = threads
    result["cpu_utilization"] = round((cpu_seconds() - cpu_start) / (wall_s * threads), 3)
    out.write_text(json.dumps(result, indent=2))
    scored = next(k for k in result if k.startswith("test_"))
    log(f"{name}: {scored} {result[scored]:.4f}, {result['epochs']} epochs, {result['wall_s']}s, "
        f"{result['train_images_per_s'] or 0:,.0f} img/s, peak RSS {result['peak_rss_mb']:.0f} MB, "
        f"CPU utilization {result['cpu_utilization']:.2f}")


def run_contender_in_child(name: str, budget_s: float, seed: int, script: Path | None = None,
                           extra: Sequence[str] = ()) -> Result:
    """Re-invoke ``script`` (default: this one) for one contender, so each gets a fresh process and
    its own peak RSS; the script runs ``run_contender_here`` for ``--contender NAME`` (plus ``extra``
    arguments of its own)."""
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / f"{name}.json"
        command = [sys.executable, str((script or Path(__file__)).resolve()), "--contender", name, "--budget", str(budget_s),
                   "--seed", str(seed), "--out", str(out), *extra]
        subprocess.run(command, check=True)
        return json.loads(out.read_text())


def comparison(results: dict[str, Result]) -> dict[str, Any]:
    """visiondojo relative to the baseline, and whether the figures meet this stage's expectations."""
    base, vd = results["baseline"], results["visiondojo"]
    acc_diff = round(vd["test_acc"] - base["test_acc"], 6)
    throughput = round(vd["train_images_per_s"] / base["train_images_per_s"], 3)
    return {
        "test_acc_diff": acc_diff,
        "throughput_ratio": throughput,
        "meets_expectations": {"test_acc_at_least_baseline": acc_diff >= 0,
                               f"throughput_at_least_{EXPECTED_THROUGHPUT_RATIO}x": throughput >= EXPECTED_THROUGHPUT_RATIO},
    }


def parse_contenders(text: str) -> list[str]:
    """``--contenders baseline,visiondojo``: reject unknown names up front, not after a 5-minute baseline."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = sorted(set(names) - set(CONTENDERS))
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"{text!r}: choose a comma-separated subset of {','.join(CONTENDERS)}")
    return names


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", type=float, default=300.0, help="wall-clock seconds per contender (default 300)")
    parser.add_argument("--out", type=Path, required=True, help="JSON file for the figures")
    parser.add_argument("--contenders", type=parse_contenders, default=list(CONTENDERS),
                        help="comma-separated subset of: " + ",".join(CONTENDERS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--contender", choices=CONTENDERS, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Parent: run each contender in a child and write the figures. Child (``--contender``): run one."""
    args = parse_args(argv)
    if args.contender is not None:
        run_contender_here(args.contender, args.budget, args.seed, args.out)
        return
    results = {name: run_contender_in_child(name, args.budget, args.seed) for name in args.contenders}
    report: dict[str, Any] = {"benchmark": "fashion-mnist", "budget_s": args.budget, "seed": args.seed,
                              "cpu_count": len(os.sched_getaffinity(0)), "torch": torch.__version__,
                              "date": time.strftime("%Y-%m-%d"), **results}
    if {"baseline", "visiondojo"} <= results.keys():
        report["visiondojo_vs_baseline"] = comparison(results)
        log(f"visiondojo vs baseline: {report['visiondojo_vs_baseline']}")
    if "baseline" in results:
        base = results["baseline"]["test_acc"]
        report["test_acc_vs_baseline"] = {name: round(r["test_acc"] - base, 6) for name, r in results.items()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    log(f"figures written to {args.out}")


if __name__ == "__main__":
    main()
