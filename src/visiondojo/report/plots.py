"""Report figures, rendered with matplotlib's Agg backend to PNG bytes (no display needed)."""

from __future__ import annotations

import io
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402


def _png(fig: Any) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def learning_curves(history: list[dict[str, Any]], monitor: str) -> bytes:
    """Losses, the monitored metric and the learning rate per epoch; runs in stages (teacher,
    students) are drawn one after the other with a dotted line where each stage begins."""
    staged = any("stage" in row for row in history)
    epochs = list(range(1, len(history) + 1)) if staged else [row["epoch"] for row in history]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.5))
    if staged:
        for i, row in enumerate(history):
            if i and row.get("stage") != history[i - 1].get("stage"):
                for axis in (left, right):
                    axis.axvline(i + 0.5, color="tab:gray", linestyle=":", linewidth=1)
    left.plot(epochs, [row["train_loss"] for row in history], label="train loss")
    if all("val_loss" in row for row in history):
        left.plot(epochs, [row["val_loss"] for row in history], label="val loss")
    terms = [k for k in history[0] if k.startswith("train_") and k not in ("train_loss", "train_s",
                                                                            "train_images_per_s")]
    for name in terms:  # a detector's loss terms, thinner, under their sum
        left.plot(epochs, [row[name] for row in history], linewidth=1, alpha=0.7, label=name[len("train_"):])
    left.set_xlabel("epoch")
    left.set_yscale("log")
    left.legend()
    validated = [(e, row[f"val_{monitor}"]) for e, row in zip(epochs, history) if row.get(f"val_{monitor}") != ""
                 and f"val_{monitor}" in row]
    right.plot([e for e, _ in validated], [v for _, v in validated], color="tab:green", marker=".",
               label=f"val {monitor}")
    right.set_xlabel("epoch")
    right.legend(loc="lower right")
    lr_axis = right.twinx()
    lr_axis.plot(epochs, [row["lr"] for row in history], color="tab:gray", linestyle=":", label="lr")
    lr_axis.set_ylabel("learning rate", color="tab:gray")
    return _png(fig)


def confusion_matrix(matrix: np.ndarray, class_names: Sequence[str]) -> bytes:
    size = max(4.0, 0.45 * len(class_names) + 2)
    fig, axis = plt.subplots(figsize=(size, size))
    rows = matrix.sum(axis=1, keepdims=True).clip(min=1)
    axis.imshow(matrix / rows, cmap="Blues", vmin=0, vmax=1)
    ticks = range(len(class_names))
    axis.set_xticks(ticks, class_names, rotation=60, ha="right")
    axis.set_yticks(ticks, class_names)
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    if len(class_names) <= 20:
        for i in range(matrix.shape[0]):
            for j in range(matrix.shape[1]):
                if matrix[i, j]:
                    axis.text(j, i, int(matrix[i, j]), ha="center", va="center", fontsize=7,
                              color="white" if matrix[i, j] / rows[i, 0] > 0.5 else "black")
    return _png(fig)


def gallery(images: torch.Tensor, captions: Sequence[str], columns: int = 8) -> bytes:
    """Images (N, C, H, W) in [0, 1] with a caption each."""
    rows = -(-len(images) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(columns * 1.5, rows * 1.8), squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    for axis, image, caption in zip(axes.flat, images, captions):
        array = image.permute(1, 2, 0).numpy()
        axis.imshow(array[:, :, 0] if array.shape[2] == 1 else array[:, :, :3], cmap="gray", vmin=0, vmax=1)
        axis.set_title(caption, fontsize=7)
    return _png(fig)


def lr_finder(lrs: Sequence[float], losses: Sequence[float], smoothed: Sequence[float], suggestion: float) -> bytes:
    fig, axis = plt.subplots(figsize=(6, 3.5))
    axis.plot(lrs, losses, color="tab:gray", alpha=0.4, label="loss")
    axis.plot(lrs[: len(smoothed)], smoothed, color="tab:blue", label="smoothed")
    axis.axvline(suggestion, color="tab:red", linestyle="--", label=f"chosen lr {suggestion:.3g}")
    axis.set_xscale("log")
    axis.set_xlabel("learning rate")
    axis.set_ylabel("training loss")
    finite = [v for v in smoothed if np.isfinite(v)]
    if finite:
        axis.set_ylim(min(finite) * 0.9, max(finite[0], min(finite)) * 1.5)
    axis.legend()
    return _png(fig)


def noise_scale(trajectory: Sequence[float], batch_size: int, at: Sequence[int] | None = None,
                unit: str = "probe step") -> bytes:
    """B_noise estimates (the batch-size probe's per step, or the ranks' per epoch ``at``) against the batch."""
    fig, axis = plt.subplots(figsize=(6, 3.5))
    at = range(1, len(trajectory) + 1) if at is None else at
    axis.plot(at, trajectory, marker="o", label="B_noise estimate (EMA)")
    axis.axhline(batch_size, color="tab:red", linestyle="--", label=f"chosen batch {batch_size}")
    axis.set_xlabel(unit)
    axis.set_ylabel("batch size")
    axis.legend()
    return _png(fig)


def augment_distances(distances: Sequence[dict[str, Any]], groups: Sequence[dict[str, Any]]) -> bytes:
    """Distance of every (op, magnitude) pair, one row per op, marked by the group it fell into."""
    group_of = {(op, magnitude): g["name"] for g in groups for op, magnitude in g["pairs"]}
    names = sorted({g["name"] for g in groups})
    colors = {name: plt.cm.tab20(i % 20) for i, name in enumerate(names)}
    ops = list(dict.fromkeys(d["op"] for d in distances))
    fig, axis = plt.subplots(figsize=(8, 0.3 * len(ops) + 1.5))
    for row, op in enumerate(ops):
        for d in (d for d in distances if d["op"] == op):
            name = group_of.get((op, d["magnitude"]))
            axis.scatter(max(d["distance"], 1e-4), row, s=20 + 60 * d["magnitude"],
                         color=colors[name] if name else "lightgray", edgecolors="black", linewidths=0.3)
    axis.set_yticks(range(len(ops)), ops)
    axis.set_xscale("log")
    axis.set_xlabel("distance from clean data (diagonal Fréchet / clean variance); marker size = magnitude")
    handles = [plt.Line2D([], [], marker="o", linestyle="", color=colors[n], label=n) for n in names]
    axis.legend(handles=handles, fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return _png(fig)


def pr_curves(curves: Sequence[Sequence[float]], class_names: Sequence[str]) -> bytes:
    """Precision against recall per class (COCO's 101 recall points at IoU 0.5); -1 rows (absent classes) skipped."""
    fig, axis = plt.subplots(figsize=(6, 4))
    recall = np.linspace(0, 1, len(curves[0])) if curves else []
    for name, curve in zip(class_names, curves):
        if min(curve) < 0 and max(curve) < 0:
            continue
        values = np.asarray(curve, dtype=float)
        values[values < 0] = np.nan  # recall the detector never reached
        axis.plot(recall, values, linewidth=1, label=name)
    axis.set_xlabel("recall")
    axis.set_ylabel("precision")
    axis.set_xlim(0, 1)
    axis.set_ylim(0, 1.02)
    axis.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return _png(fig)
