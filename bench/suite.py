"""Peer benchmark suite: ``visiondojo.fit`` against fastai, a tuned plain-PyTorch recipe and the plain
baseline, over several data sizes and budgets, several seeds each.

Usage (from the repository root; resumable, so it can be stopped and rerun, or run in parts)::

    python bench/suite.py                                   # everything: 3 hours of budgets, 51 runs
    python bench/suite.py --cells digits-30 --seeds 0       # a smoke test, about 2.5 minutes
    python bench/suite.py --cells fmnist-300 --contenders visiondojo,fastai --dry-run
    python bench/suite.py --summarize                       # the table from the JSON, nothing run

One benchmark cannot tell a method from a lucky draw or from a budget that happens to suit it, so
this suite repeats every comparison over seeds and over cells (data size x budget), and scores
``visiondojo`` against each peer seed by seed (win / tie / loss at a 0.1-point margin).

Cells (``CELLS``): Fashion-MNIST's 60k training images at 120, 300 and 600 s, a stratified 5,000-image
draw of them at 120 s, and scikit-learn's 8x8 digits (``visiondojo.data.builtin``'s split, as
``visiondojo demo`` uses it) at 30 s. Test sets: Fashion-MNIST's 10k test images; the digits' own
test split. Every contender trains a freshly seeded ``visiondojo.FMNISTResNet`` (its adaptive
pooling takes 8x8 digits as well as 28x28 images, so no second architecture is needed) on the same
images, and is scored by the same top-1 accuracy.

Contenders (``CONTENDERS``), each in its own child process (``bench/fmnist.py``'s machinery, so peak
RSS and CPU utilization are its own) with ``torch.set_num_threads`` = the available CPUs:

- ``visiondojo``: ``fit`` at its defaults (policy search included);
- ``visiondojo-nosearch``: ``fit`` with ``regularization=RegularizationParams()``: every
  regularization field pinned (no augmentation, no soft labels), so no search runs; the
  optimization meta-learners still choose batch size, learning rate, optimizer and length;
- ``fastai``: what a fastai user does: ``lr_find()``, then ``fit_one_cycle`` at the ``valley``
  suggestion, fastai's defaults otherwise (batch 64, its Adam with weight decay 0.01, its one-cycle);
- ``torchvision-recipe``: a tuned plain-PyTorch recipe: SGD Nesterov, OneCycleLR sized to end with
  the budget, batch 256, pad-and-crop + horizontal flip, label smoothing 0.1 (``RecipeParams``);
- ``baseline``: ``bench/fmnist.py``'s plain loop (AdamW 1e-3, batch 64, constant LR, whole epochs).

What a budget covers: ``fit``'s covers the whole call, its test pass included. The other
contenders' covers data preparation and training (their test pass comes after, as in
``bench/fmnist.py``): a few seconds in their favour on the 10k test images. The plain contenders
run on the CPU; on a machine with a GPU ``fit`` would take it, so hide it (``CUDA_VISIBLE_DEVICES=``)
for a like-for-like comparison.

Each finished (cell, contender, seed) is appended to ``--out`` at once (atomically), and entries
already there are skipped, so an interrupted run resumes where it stopped. ``--budget-scale``
shrinks every budget for smoke tests; such results are keyed and tabulated by their own budget,
apart from full-budget ones.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from functools import cache
from pathlib import Path
from statistics import mean, stdev
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
from sklearn.model_selection import train_test_split
from torch import nn
from torch.nn import functional as F
from torch.utils.data import TensorDataset

import visiondojo
from fmnist import (RUNS_DIR, BaselinePlan, Result, accuracy, log, normalized_tensors, run_baseline,
                    run_contender_here, run_contender_in_child, visiondojo_result)
from visiondojo.data.builtin import load_digits, load_fashion_mnist

CONTENDERS = ("visiondojo", "visiondojo-nosearch", "fastai", "torchvision-recipe", "baseline")
VISIONDOJO_CONTENDERS = ("visiondojo", "visiondojo-nosearch")
DEFAULT_OUT = RUNS_DIR / "suite.json"
RUN_FOLDERS = RUNS_DIR / "suite-runs"
TIE_POINTS = 0.1
"""Per seed, ``visiondojo`` wins when ahead by more than this many accuracy points, ties within it."""
BUSY_MACHINE = 0.9
"""A contender whose CPU utilization (CPU seconds / (wall seconds x threads)) is below this shared the machine."""
SUBSET_SEED = 0
"""Seed of the stratified 5,000-image draw: fixed, so every contender and seed sees the same images."""


# --- cells -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cell:
    """One comparison: a training set, a budget, the seeds it is repeated over, who competes."""

    name: str
    dataset: str
    """``fashion-mnist`` or ``digits`` (``visiondojo.data.builtin``)."""
    budget_s: float
    train_size: int | None = None
    """A stratified draw of this many training images (``SUBSET_SEED``); None: the whole split."""
    seeds: tuple[int, ...] = (0, 1)
    contenders: tuple[str, ...] = CONTENDERS


CELLS: tuple[Cell, ...] = (
    Cell("fmnist-120", "fashion-mnist", 120),
    Cell("fmnist-300", "fashion-mnist", 300, seeds=(0, 1, 2)),
    # At 600 s only the automatic contenders run: the plain ones' figures at 120 and 300 s already
    # place them, and this cell alone costs an hour per seed for three contenders on 2 cores.
    Cell("fmnist-600", "fashion-mnist", 600, contenders=("visiondojo", "visiondojo-nosearch", "fastai")),
    Cell("fmnist5k-120", "fashion-mnist", 120, train_size=5000),
    Cell("digits-30", "digits", 30),
)
CELLS_BY_NAME = {cell.name: cell for cell in CELLS}


@dataclass(frozen=True)
class CellData:
    """A cell's uint8 (N, H, W) images and int64 labels, and the normalization the plain contenders use.

    The mean and std are the whole training split's (Fashion-MNIST's are ``BaselinePlan``'s
    constants), so the 5k draw is normalized exactly as the full set is.
    """

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    mean: float
    std: float

    def tensors(self, split: str) -> TensorDataset:
        """The split as normalized (N, 1, H, W) float32 tensors, exactly as the baseline prepares them."""
        images, labels = ((self.train_images, self.train_labels) if split == "train"
                          else (self.test_images, self.test_labels))
        return normalized_tensors(images, labels, self.mean, self.std)


def load_cell_data(cell: Cell) -> CellData:
    """Read a cell's images from the built-in datasets (no downloads) and draw its training subset."""
    if cell.dataset == "fashion-mnist":
        (train_x, train_y), (test_x, test_y) = load_fashion_mnist("train"), load_fashion_mnist("test")
        plan = BaselinePlan()
        mean, std = plan.mean, plan.std
    elif cell.dataset == "digits":
        (train_x, train_y), (test_x, test_y) = load_digits("train"), load_digits("test")
        pixels = train_x.astype(np.float64) / 255.0
        mean, std = round(float(pixels.mean()), 4), round(float(pixels.std()), 4)
    else:
        raise ValueError(f"{cell.name}: unknown dataset {cell.dataset!r}")
    if cell.train_size is not None and cell.train_size < len(train_y):
        chosen, _ = train_test_split(np.arange(len(train_y)), train_size=cell.train_size, stratify=train_y,
                                     random_state=SUBSET_SEED)
        chosen = np.sort(chosen)
        train_x, train_y = train_x[chosen], train_y[chosen]
    return CellData(train_x, train_y, test_x, test_y, mean, std)


# --- contenders: visiondojo ---------------------------------------------------------------------


def run_visiondojo(data: CellData, budget_s: float, seed: int, run_dir: Path,
                   regularization: visiondojo.RegularizationParams | None = None) -> Result:
    """``fit`` on the cell's arrays with its own test split; it holds out its own validation images.

    The full plan stays in the run folder (``plan.yaml``); the JSON keeps what the suite compares:
    the optimization choices, the chosen augment and soft-label fields, and the evidence for the
    augmentation choice (why the search chose it, or that it was pinned).
    """
    torch.manual_seed(seed)
    run = visiondojo.fit(visiondojo.FMNISTResNet(), (data.train_images, data.train_labels),
                         test_data=(data.test_images, data.test_labels), budget=budget_s, seed=seed,
                         out=run_dir, overwrite=True, progress=False, regularization=regularization)
    result = visiondojo_result(run)
    plan = result.pop("plan")
    trained = sum(row["train_images_per_s"] * row["train_s"] for row in result["history"])
    result["epochs"] = round(trained / max(plan["data"]["train_size"], 1), 2)
    optimization, reg = plan["optimization"], plan["regularization"]
    result["plan"] = {
        **{key: optimization.get(key) for key in ("batch_size", "lr", "optimizer", "schedule", "epochs")},
        "precision": plan["runtime"].get("precision"),
        "augment": reg["augment"],
        **{key: reg[key] for key in ("label_smoothing", "mixup", "cutmix")},
        "augment_evidence": plan["evidence"].get("regularization.augment"),
        "train_size": plan["data"]["train_size"], "val_size": plan["data"]["val_size"],
    }
    return result


# --- contenders: fastai -------------------------------------------------------------------------


@dataclass(frozen=True)
class FastaiParams:
    """fastai's defaults where fastai has one; the rest is how the epochs are fitted to the budget."""

    batch_size: int = 64
    """``DataLoaders``' default ``bs``."""
    lr_find_iterations: int = 100
    """``lr_find``'s default ``num_it``."""
    timed_batches: int = 100
    """Batches timed after ``lr_find`` (from saved weights, restored afterwards) to estimate an epoch's time."""
    untimed_batches: int = 5
    """Batches before the timed ones, left out of the estimate (the first steps allocate memory)."""


def run_fastai(data: CellData, budget_s: float, seed: int, params: FastaiParams = FastaiParams()) -> Result:
    """``lr_find`` then ``fit_one_cycle(epochs, lr_max=valley)``, as a fastai user trains, epochs fitted to the budget.

    fastai is imported here, before the clock starts (``visiondojo`` too is imported before its
    clock), and only here: it is an optional ``bench`` dependency the package never needs.
    Deviations from fastai's defaults, all in the plumbing: the loaders run in this process
    (``num_workers=0``; worker processes would only copy in-memory tensors and share the cores with
    training), on the CPU like the other plain contenders; per-epoch validation is cancelled
    (nothing here selects on it, and the other contenders do not spend time on it either); the test
    set only fills the ``valid`` slot ``Learner`` requires, and is scored after training by the same
    function as every contender's. ``fit_one_cycle`` takes whole epochs, so the run ends up to an
    epoch before the budget, and always trains at least one.
    """
    try:
        from fastai.callback.core import Callback, CancelFitException, CancelValidException
        from fastai.callback.progress import ProgressCallback
        from fastai.callback.schedule import fit_one_cycle, lr_find  # noqa: F401  (patch them onto Learner)
        from fastai.data.core import DataLoaders
        from fastai.learner import Learner
        from fastai.losses import CrossEntropyLossFlat
        from fastai.torch_core import set_seed
    except ImportError as exc:
        raise SystemExit(f"the fastai contender needs fastai: pip install -e '.[bench]' ({exc})") from None

    class SkipValidation(Callback):
        def before_validate(self) -> None:
            raise CancelValidException()

    class BatchClock(Callback):
        """Stamps the end of every batch and stops the fit after ``stop_after`` of them."""

        def __init__(self, stop_after: int):
            self.stop_after, self.stamps = stop_after, []

        def after_batch(self) -> None:
            self.stamps.append(time.perf_counter())
            if len(self.stamps) >= self.stop_after:
                raise CancelFitException()

    start = time.perf_counter()
    set_seed(seed)
    model = visiondojo.FMNISTResNet()
    train, test = data.tensors("train"), data.tensors("test")
    dls = DataLoaders.from_dsets(train, test, bs=params.batch_size, num_workers=0, device=torch.device("cpu"))
    history: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as folder:  # lr_find saves and restores the weights through learn.path
        learn = Learner(dls, model, loss_func=CrossEntropyLossFlat(), path=folder, cbs=[SkipValidation()])
        learn.remove_cb(ProgressCallback)
        # Recorder's row per epoch: [epoch, train loss, (valid figures, skipped here), time].
        learn.logger = lambda row: history.append({"epoch": row[0] + 1, "train_loss": round(float(row[1]), 6)})
        lr = float(learn.lr_find(num_it=params.lr_find_iterations, show_plot=False).valley)
        lr_find_s = time.perf_counter() - start

        epoch_s = None
        if time.perf_counter() - start < budget_s:  # else one epoch, whatever an epoch costs
            epoch_s = fastai_batch_seconds(learn, lr, BatchClock(params.untimed_batches + params.timed_batches),
                                           params.untimed_batches) * len(dls.train)
        left_s = budget_s - (time.perf_counter() - start)
        epochs = max(1, int(left_s // epoch_s)) if epoch_s else 1
        history.clear()  # rows of the timing fit's whole epochs (small data), not of the real one
        log(f"fastai: lr_find valley {lr:.3g} ({lr_find_s:.1f}s); epoch ~{epoch_s or float('nan'):.1f}s, "
            f"{left_s:.0f}s left: {epochs} epochs")
        fit_start = time.perf_counter()
        learn.fit_one_cycle(epochs, lr_max=lr)
        fit_s = time.perf_counter() - fit_start
    images = epochs * len(dls.train) * params.batch_size
    return {"test_acc": accuracy(learn.model, test), "epochs": epochs, "train_images_per_s": round(images / fit_s, 1),
            "plan": {**asdict(params), "lr_max": lr, "estimated_epoch_s": round(epoch_s, 2) if epoch_s else None,
                     "lr_find_s": round(lr_find_s, 2), "fit_s": round(fit_s, 2)},
            "history": history}


def fastai_batch_seconds(learn: Any, lr: float, clock: Any, untimed: int) -> float:
    """Seconds per training batch through ``fit_one_cycle`` (its scheduler, callbacks and loader included).

    ``clock`` stamps each batch and cancels the fit after enough of them; the weights are restored
    and the optimizer dropped afterwards, so the real ``fit_one_cycle`` starts where it would have
    without this measurement. On small data the timed batches span several epochs, so the cost of
    starting an epoch is included in proportion.
    """
    weights = copy.deepcopy(learn.model.state_dict())
    learn.fit_one_cycle(math.ceil(clock.stop_after / len(learn.dls.train)), lr_max=lr, cbs=[clock])
    learn.model.load_state_dict(weights)
    learn.opt = None
    skip = min(untimed, len(clock.stamps) - 2)
    return (clock.stamps[-1] - clock.stamps[skip]) / (len(clock.stamps) - 1 - skip)


# --- contenders: a tuned plain-PyTorch recipe --------------------------------------------------


@dataclass(frozen=True)
class RecipeParams:
    """A standard tuned recipe for small ResNets, applied unchanged to every cell.

    ``max_lr`` 0.1 at batch 256 is the torchvision classification reference's rate (0.1 per 256
    images, the linear-scaling rule of Goyal et al. 2017), used as OneCycleLR's peak. OneCycleLR's
    momentum cycling is off, so SGD's momentum is the recipe's 0.9 throughout. The crop pads by an
    eighth of the image side (4 px on 28x28, CIFAR's 4 px on 32x32; 1 px on 8x8 digits) with black.
    The flip is part of the generic recipe, kept on the digits too (it does not change their class,
    but it is not a symmetry of the data): the recipe is not tuned per cell.
    """

    batch_size: int = 256
    max_lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    label_smoothing: float = 0.1
    pad_fraction: float = 1 / 8
    hflip: bool = True
    timed_steps: int = 20
    """Steps timed on a throwaway copy of the model to size the schedule (counted in the budget)."""
    untimed_steps: int = 5
    """Steps before the timed ones, left out of the estimate."""
    margin: float = 0.98
    """Share of the time left that the schedule is planned to fill, so that it ends on time."""


def pad_crop_flip(images: torch.Tensor, pad: int, fill: float, hflip: bool) -> torch.Tensor:
    """Random pad-and-crop and horizontal flip of a (N, C, H, W) batch, with one draw per image.

    One gather on the whole batch (the flip is folded into the column indices): no per-image Python
    or PIL, so augmentation takes little from the CPU time the training competes for.
    """
    n, c, h, w = images.shape
    padded = F.pad(images, (pad, pad, pad, pad), value=fill)
    rows = torch.randint(0, 2 * pad + 1, (n, 1)) + torch.arange(h)
    cols = torch.randint(0, 2 * pad + 1, (n, 1)) + torch.arange(w)
    if hflip:
        cols = torch.where((torch.rand(n) < 0.5)[:, None], cols.flip(1), cols)
    index = (rows[:, :, None] * (w + 2 * pad) + cols[:, None, :]).view(n, 1, h * w).expand(n, c, h * w)
    return padded.flatten(2).gather(2, index).view(n, c, h, w)


def recipe_step(model: nn.Module, optimizer: torch.optim.Optimizer, images: torch.Tensor, labels: torch.Tensor,
                params: RecipeParams, pad: int, fill: float) -> torch.Tensor:
    """One training step of the recipe (augment, forward, label-smoothed loss, backward, update); returns the loss."""
    loss = F.cross_entropy(model(pad_crop_flip(images, pad, fill, params.hflip)), labels,
                           label_smoothing=params.label_smoothing)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()


def recipe_optimizer(model: nn.Module, params: RecipeParams) -> torch.optim.SGD:
    return torch.optim.SGD(model.parameters(), lr=params.max_lr, momentum=params.momentum,
                           nesterov=params.nesterov, weight_decay=params.weight_decay)


def seconds_per_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, params: RecipeParams, pad: int,
                     fill: float) -> float:
    """Seconds per full-batch step of the recipe, timed on a copy of the model, so the schedule's
    length can be fixed up front."""
    probe = copy.deepcopy(model)
    probe.train()
    optimizer = recipe_optimizer(probe, params)
    stamps = []
    for _ in range(params.untimed_steps + params.timed_steps):
        index = torch.randint(0, len(x), (params.batch_size,))
        recipe_step(probe, optimizer, x[index], y[index], params, pad, fill)
        stamps.append(time.perf_counter())
    return (stamps[-1] - stamps[params.untimed_steps - 1]) / params.timed_steps


def run_recipe(data: CellData, budget_s: float, seed: int, params: RecipeParams = RecipeParams()) -> Result:
    """The recipe with OneCycleLR planned in steps from a timed warmup, so the cycle ends when the budget does.

    The last epoch may be partial (the schedule is counted in steps, not whole epochs). If the
    machine slows down after the warmup, training stops at the budget, mid-cycle (``cut_short``).
    """
    start = time.perf_counter()
    torch.manual_seed(seed)
    model = visiondojo.FMNISTResNet()
    x, y = data.tensors("train").tensors
    pad = max(1, round(params.pad_fraction * x.shape[-1]))
    fill = (0.0 - data.mean) / data.std
    step_s = seconds_per_step(model, x, y, params, pad, fill)
    steps_per_epoch = math.ceil(len(x) / params.batch_size)
    # An epoch's last batch is partial: on small data (6 steps an epoch on the digits) counting it
    # as a full step would end the schedule early. A step's time is taken as proportional to its images.
    epoch_s = step_s * len(x) / params.batch_size
    left_s = params.margin * (budget_s - (time.perf_counter() - start))
    total_steps = max(1, int(left_s / epoch_s * steps_per_epoch))
    log(f"torchvision-recipe: {step_s * 1000:.0f} ms/step: {total_steps} steps "
        f"({total_steps / steps_per_epoch:.2f} epochs)")
    optimizer = recipe_optimizer(model, params)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=params.max_lr, total_steps=total_steps,
                                                   cycle_momentum=False)
    model.train()
    history: list[dict[str, Any]] = []
    step, trained, cut_short, train_s = 0, 0, False, 0.0
    while step < total_steps and not cut_short:
        epoch_start, seen, loss_sum = time.perf_counter(), 0, torch.zeros(())
        for batch in torch.randperm(len(x)).split(params.batch_size):
            if step == total_steps:
                break
            if time.perf_counter() - start > budget_s:
                cut_short = True
                break
            loss_sum += recipe_step(model, optimizer, x[batch], y[batch], params, pad, fill) * len(batch)
            schedule.step()
            step, seen = step + 1, seen + len(batch)
        epoch_s = time.perf_counter() - epoch_start
        train_s, trained = train_s + epoch_s, trained + seen
        if seen:
            history.append({"epoch": len(history) + 1, "train_loss": round(float(loss_sum) / seen, 6),
                            "epoch_s": round(epoch_s, 3), "train_images_per_s": round(seen / epoch_s, 1)})
    return {"test_acc": accuracy(model, data.tensors("test")), "epochs": round(step / steps_per_epoch, 2),
            "train_images_per_s": round(trained / max(train_s, 1e-9), 1),
            "plan": {**asdict(params), "crop_pad": pad, "estimated_step_s": round(step_s, 4),
                     "planned_steps": total_steps, "steps": step, "cut_short": cut_short},
            "history": history}


# --- contenders: the plain baseline -------------------------------------------------------------


def run_plain_baseline(data: CellData, budget_s: float, seed: int) -> Result:
    """``bench/fmnist.py``'s baseline loop unchanged, on the cell's images and normalization."""
    plan = replace(BaselinePlan(), mean=data.mean, std=data.std, train_images=len(data.train_labels))
    return run_baseline(budget_s, seed, plan=plan, data=data.tensors)


Runner = Callable[[CellData, float, int, Path], Result]
RUNNERS: dict[str, Runner] = {
    "visiondojo": lambda data, budget, seed, run_dir: run_visiondojo(data, budget, seed, run_dir),
    "visiondojo-nosearch": lambda data, budget, seed, run_dir: run_visiondojo(
        data, budget, seed, run_dir, regularization=visiondojo.RegularizationParams()),
    "fastai": lambda data, budget, seed, run_dir: run_fastai(data, budget, seed),
    "torchvision-recipe": lambda data, budget, seed, run_dir: run_recipe(data, budget, seed),
    "baseline": lambda data, budget, seed, run_dir: run_plain_baseline(data, budget, seed),
}


@cache
def machine() -> dict[str, Any]:
    """The CPU's model name and whether it has bf16 units (they double visiondojo's throughput), and torch's version.

    Figures from machines with and without bf16 are not comparable, so every result says which it had.
    """
    model_name, flags = "unknown", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model_name == "unknown":
                model_name = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    return {"cpu_model": model_name, "cpu_bf16": bool(flags & {"avx512_bf16", "amx_bf16"}), "torch": torch.__version__}


def run_in_child_process(cell: Cell, contender: str, budget_s: float, seed: int, run_dir: Path) -> Result:
    """Child-process side: load the cell's images (before the contender's clock starts) and train one contender."""
    data = load_cell_data(cell)
    return {**RUNNERS[contender](data, budget_s, seed, run_dir), **machine()}


# --- the suite: entries, resumable results ------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    """One result to produce: a contender on a cell with one seed, at the (possibly scaled) budget."""

    cell: Cell
    contender: str
    seed: int
    budget_s: float

    @property
    def key(self) -> tuple[str, str, int, float]:
        return (self.cell.name, self.contender, self.seed, float(self.budget_s))

    def run_dir(self, out: Path) -> Path:
        """``fit``'s run folder: one per entry and results file, replaced if an interrupted attempt left one."""
        return RUN_FOLDERS / out.stem / f"{self.cell.name}-{self.budget_s:g}s" / f"{self.contender}-seed{self.seed}"

    def __str__(self) -> str:
        return f"{self.cell.name} ({self.budget_s:g}s) {self.contender} seed {self.seed}"


def result_key(result: Result) -> tuple[str, str, int, float]:
    return (result["cell"], result["contender"], int(result["seed"]), float(result["budget_s"]))


def planned_entries(cells: Sequence[Cell], contenders: Sequence[str], seeds: Sequence[int] | None,
                    budget_scale: float) -> list[Entry]:
    """Every (cell, contender, seed) the filters keep, in cell order, seed-major so that partial runs pair up."""
    return [Entry(cell, contender, seed, round(cell.budget_s * budget_scale, 3))
            for cell in cells
            for seed in cell.seeds if seeds is None or seed in seeds
            for contender in cell.contenders if contender in contenders]


def read_results(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {"benchmark": "visiondojo-suite", "results": []}
    return json.loads(path.read_text())


def write_atomically(path: Path, document: dict[str, Any]) -> None:
    """Temp file + ``os.replace``: an interrupted write never leaves a truncated results file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(document, indent=2) + "\n")
    os.replace(temporary, path)


def append_result(path: Path, result: Result) -> None:
    """Re-read the file and add one result, so parts of the suite run side by side lose nothing in between."""
    document = read_results(path)
    document["results"] = [r for r in document["results"] if result_key(r) != result_key(result)] + [result]
    document["summary"] = summarize(document["results"])
    write_atomically(path, document)


# --- summary ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ContenderStats:
    """A contender's figures in one cell over its seeds."""

    n: int
    mean_acc: float
    sd_acc: float | None
    """Sample standard deviation over seeds; None with one seed."""
    mean_epochs: float
    max_wall_s: float
    """Wall seconds of the slowest run: far above the budget means a contender overran it."""
    min_cpu_utilization: float


def head_to_head(ours: dict[int, float], theirs: dict[int, float]) -> dict[str, Any]:
    """Wins, ties and losses of visiondojo per seed (margin ``TIE_POINTS``), and the mean of visiondojo's
    test accuracy minus the other's, in points, over the seeds both have."""
    seeds = sorted(ours.keys() & theirs.keys())
    diffs = [round(100 * (ours[s] - theirs[s]), 6) for s in seeds]  # 0.1 exactly is a tie, not float noise
    return {"wins": sum(d > TIE_POINTS for d in diffs), "ties": sum(abs(d) <= TIE_POINTS for d in diffs),
            "losses": sum(d < -TIE_POINTS for d in diffs),
            "mean_diff_points": round(mean(diffs), 3) if diffs else None, "paired_seeds": seeds}


def summarize(results: Iterable[Result]) -> list[dict[str, Any]]:
    """Per cell and budget: each contender's mean and sd of test accuracy (``contenders``), and
    visiondojo's record against each of the others (``visiondojo_vs``)."""
    groups: dict[tuple[str, float], dict[str, dict[int, Result]]] = {}
    for result in results:
        cell, contender, seed, budget = result_key(result)
        groups.setdefault((cell, budget), {}).setdefault(contender, {})[seed] = result
    order = {name: i for i, name in enumerate(CELLS_BY_NAME)}
    summary = []
    for (cell, budget), by_contender in sorted(groups.items(), key=lambda item: (order.get(item[0][0], 99), item[0][1])):
        ours = {seed: r["test_acc"] for seed, r in by_contender.get("visiondojo", {}).items()}
        contenders, versus = {}, {}
        for name in sorted(by_contender, key=lambda n: CONTENDERS.index(n) if n in CONTENDERS else 99):
            runs = by_contender[name]
            accs = [r["test_acc"] for r in runs.values()]
            contenders[name] = asdict(ContenderStats(
                n=len(accs), mean_acc=round(mean(accs), 5), sd_acc=round(stdev(accs), 5) if len(accs) > 1 else None,
                mean_epochs=round(mean(float(r["epochs"]) for r in runs.values()), 2),
                max_wall_s=max(r["wall_s"] for r in runs.values()),
                min_cpu_utilization=min(r["cpu_utilization"] for r in runs.values())))
            if name != "visiondojo" and ours:
                versus[name] = head_to_head(ours, {seed: r["test_acc"] for seed, r in runs.items()})
        summary.append({"cell": cell, "budget_s": budget, "contenders": contenders, "visiondojo_vs": versus})
    return summary


def markdown_table(summary: list[dict[str, Any]]) -> str:
    """One row per (cell, contender); the W/T/L and difference columns are visiondojo's, against that row."""
    lines = ["| cell | contender | n | test acc % (mean ± sd) | visiondojo W/T/L | visiondojo − it (points) "
             "| epochs | max wall s | min CPU util |",
             "|---|---|---:|---|---:|---:|---:|---:|---:|"]
    skewed = []
    for group in summary:
        cell = CELLS_BY_NAME.get(group["cell"])
        label = group["cell"] if cell is not None and cell.budget_s == group["budget_s"] \
            else f"{group['cell']} @ {group['budget_s']:g}s"
        for name, s in group["contenders"].items():
            spread = f" ± {100 * s['sd_acc']:.2f}" if s["sd_acc"] is not None else ""
            record = diff = ""
            versus = group["visiondojo_vs"].get(name)
            if versus and versus["paired_seeds"]:
                record = f"{versus['wins']}/{versus['ties']}/{versus['losses']}"
                diff = f"{versus['mean_diff_points']:+.2f}"
            lines.append(f"| {label} | {name} | {s['n']} | {100 * s['mean_acc']:.2f}{spread} | {record} | {diff} "
                         f"| {s['mean_epochs']:g} | {s['max_wall_s']:g} | {s['min_cpu_utilization']:.2f} |")
            if s["min_cpu_utilization"] < BUSY_MACHINE:
                skewed.append(f"{label} {name}")
    if skewed:
        lines.append(f"\nCPU utilization below {BUSY_MACHINE} (another load on the machine; timings and "
                     f"budgets skewed, rerun on an idle machine): {', '.join(skewed)}")
    return "\n".join(lines)


# --- command line -------------------------------------------------------------------------------


def comma_list(choices: Sequence[str]) -> Callable[[str], list[str]]:
    """An argparse type for a comma-separated subset of ``choices``, rejecting unknown names up front."""
    def parse(text: str) -> list[str]:
        names = [name.strip() for name in text.split(",") if name.strip()]
        unknown = sorted(set(names) - set(choices))
        if unknown or not names:
            raise argparse.ArgumentTypeError(f"{text!r}: choose a comma-separated subset of {','.join(choices)}")
        return names
    return parse


def seed_list(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results JSON, read to resume (default %(default)s)")
    parser.add_argument("--cells", type=comma_list(list(CELLS_BY_NAME)), default=list(CELLS_BY_NAME),
                        help="comma-separated subset of: " + ",".join(CELLS_BY_NAME))
    parser.add_argument("--contenders", type=comma_list(CONTENDERS), default=list(CONTENDERS),
                        help="comma-separated subset of: " + ",".join(CONTENDERS))
    parser.add_argument("--seeds", type=seed_list, default=None,
                        help="comma-separated seeds to keep from each cell's own (default: all of them)")
    parser.add_argument("--budget-scale", type=float, default=1.0,
                        help="multiply every cell's budget (smoke tests; results are keyed by the budget used)")
    parser.add_argument("--dry-run", action="store_true", help="list what would run and what is already done")
    parser.add_argument("--summarize", action="store_true", help="only print the table from --out")
    # Child-process side (bench/fmnist.py's run_contender_in_child passes --contender, --budget, --seed, --out).
    parser.add_argument("--contender", choices=CONTENDERS, help=argparse.SUPPRESS)
    parser.add_argument("--cell", choices=list(CELLS_BY_NAME), help=argparse.SUPPRESS)
    parser.add_argument("--budget", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--run-dir", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def run_entries(entries: Sequence[Entry], out: Path) -> list[Entry]:
    """Run each entry in its own child process and record it as soon as it finishes; returns the failures.

    A failed child (a missing optional dependency, a crash) is reported and skipped, not recorded,
    so that rerunning the suite retries it.
    """
    failures = []
    for i, entry in enumerate(entries, 1):
        log(f"[{i}/{len(entries)}] {entry}")
        try:
            result = run_contender_in_child(entry.contender, entry.budget_s, entry.seed, script=Path(__file__),
                                            extra=["--cell", entry.cell.name, "--run-dir", str(entry.run_dir(out))])
        except subprocess.CalledProcessError as exc:
            log(f"{entry}: FAILED (exit status {exc.returncode}); not recorded, a rerun retries it")
            failures.append(entry)
            continue
        cell, contender, seed, budget = entry.key
        append_result(out, {"cell": cell, "contender": contender, "seed": seed, "budget_s": budget,
                            "date": time.strftime("%Y-%m-%d %H:%M"), **result})
    return failures


def main(argv: list[str] | None = None) -> None:
    """Parent: run what is missing, then print the table. Child (``--contender``): run one entry."""
    args = parse_args(argv)
    if args.contender is not None:
        cell = CELLS_BY_NAME[args.cell]
        run_contender_here(args.contender, args.budget, args.seed, args.out,
                           runner=lambda name, budget, seed: run_in_child_process(cell, name, budget, seed, args.run_dir))
        return
    if args.summarize:
        print(markdown_table(summarize(read_results(args.out)["results"])))
        return
    entries = planned_entries([CELLS_BY_NAME[name] for name in args.cells], args.contenders, args.seeds,
                              args.budget_scale)
    done = {result_key(r) for r in read_results(args.out)["results"]}
    todo = [entry for entry in entries if entry.key not in done]
    if args.dry_run:
        for entry in entries:
            print(f"{'done' if entry.key in done else 'run '}  {entry}")
        print(f"{len(todo)} to run, about {sum(e.budget_s for e in todo) / 60:.0f} min of budgets; "
              f"{len(entries) - len(todo)} already in {args.out}")
        return
    log(f"{len(todo)} to run ({len(entries) - len(todo)} already in {args.out})")
    failures = run_entries(todo, args.out)
    document = read_results(args.out)
    document["summary"] = summarize(document["results"])
    if document["results"]:
        write_atomically(args.out, document)
    print(markdown_table(document["summary"]))
    if failures:
        log(f"{len(failures)} failed: " + "; ".join(map(str, failures)))
        sys.exit(1)


if __name__ == "__main__":
    main()
