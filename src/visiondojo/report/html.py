"""report.html: one self-contained file (figures inlined as base64 PNG) that renders offline."""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from ..augment.policy import describe
from ..plan import Plan
from . import plots
from .files import write_text_atomic

_STYLE = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{margin-bottom:0}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ddd;padding:.25em .6em;text-align:right}
th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}
pre{background:#f7f7f7;padding:1em;overflow-x:auto;font-size:.85em}img{max-width:100%}
.muted{color:#777}
"""


@dataclass
class ReportData:
    plan: Plan
    history: list[dict[str, Any]]
    metrics: dict[str, dict[str, Any]]
    """Split name ('val', 'test') -> metrics."""
    confusion: np.ndarray | None = None
    confusion_split: str = ""
    mistakes: list[tuple[torch.Tensor, str]] = field(default_factory=list)
    """(image in [0, 1] as (C, H, W), caption) of the highest-loss errors."""
    mistakes_split: str = ""
    summary: list[str] = field(default_factory=list)
    augmented: torch.Tensor | None = None
    """(N, C, H, W) training images in [0, 1] as the model saw them (augmented, mixed)."""


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def _table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in row) + "</tr>" for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _class_table(label: str, names: Sequence[str], columns: dict[str, Sequence[Any]],
                 order: Iterable[int] | None = None) -> str:
    """The one builder of the per-class tables (detection's AP, classification's precision and
    recall, segmentation's IoU): a row per class, in ``order`` (default: the class order), holding
    its name under ``label`` and then each column's value for it; a column shorter than the class
    list (a plan without ``class_counts``) leaves its cells empty."""
    order = range(len(names)) if order is None else order
    return _table([label, *columns], [[names[i], *(c[i] if i < len(c) else "" for c in columns.values())]
                                      for i in order])


def _class_iou(data: ReportData) -> list[str]:
    """Segmentation: IoU per class on every evaluated split, with the class's share of the
    training pixels (``plan.data.class_counts``).

    The rows are sorted by IoU, weakest first, on the split the confusion matrix and gallery show
    (test when there is test data). The question a practitioner brings to this table is which
    classes fail, and whether those are the rare ones; sorted, the answer is in the first rows
    whatever the number of classes, where a colour mark in class order gets lost down a table of
    the 19 to 150 classes of common segmentation data. The class index (the pixel value in
    ``predict``'s masks, and the confusion matrix's order) stays as a column. torchmetrics gives
    IoU 0 to a class with no pixel in a split's truth nor its predictions; in the split the
    confusion matrix counts, such a class reads "absent" and sorts last, as it failed nothing.
    """
    names = data.plan.data.class_names
    splits = {split: m["iou_per_class"] for split, m in data.metrics.items()
              if isinstance(m.get("iou_per_class"), list)}
    if not splits:
        return []
    key = data.confusion_split if data.confusion_split in splits else next(iter(splits))
    absent: set[int] = set()
    if data.confusion is not None and data.confusion_split in splits:
        pixels = data.confusion.sum(axis=0) + data.confusion.sum(axis=1)
        absent = {i for i, count in enumerate(pixels.tolist()) if count == 0}
    columns: dict[str, Sequence[Any]] = {"index": range(len(names))}
    for split, ious in splits.items():
        columns[f"IoU ({split})"] = ["absent" if split == data.confusion_split and i in absent else iou
                                     for i, iou in enumerate(ious)]
    counts = data.plan.data.class_counts
    if sum(counts) > 0:
        columns["train pixels"] = [f"{100 * c / sum(counts):.3g}%" for c in counts]
    order = sorted(range(len(names)), key=lambda i: (i in absent, splits[key][i] if i < len(splits[key]) else 0.0))
    return [f"<h2>Per-class IoU</h2><p class=muted>sorted by {html.escape(key)} IoU, weakest first; index: the "
            "class's pixel value in predicted masks; train pixels: the class's share of the training data's "
            "labelled pixels</p>" + _class_table("class", names, columns, order)]


GALLERY_CAPTIONS = {
    "detection": "images: true boxes green, predicted boxes (score 0.5 and up) red; the images with the most "
                 "missed or false boxes first</p>",
    "segmentation": "images of lowest IoU first: the image, its true mask, the predicted mask (VOC colours, "
                    "background clear)</p>",
}


def render(data: ReportData) -> str:
    plan = data.plan
    names = plan.data.class_names
    kind = {"detection": "object detection", "segmentation": "semantic segmentation"}.get(
        plan.data.task, f"{plan.data.task} classification")
    parts = [f"<h1>visiondojo run report</h1><p class=muted>{html.escape(kind)}, "
             f"{plan.data.num_classes} classes, model {html.escape(plan.model.spec)}</p>"]
    if data.summary:
        parts.append("<ul>" + "".join(f"<li>{html.escape(s)}</li>" for s in data.summary) + "</ul>")
    scalar_names = sorted({k for m in data.metrics.values() for k, v in m.items() if not isinstance(v, list)})
    parts.append("<h2>Metrics</h2>" + _table(
        ["split", *scalar_names], [[split, *[m.get(k, "") for k in scalar_names]] for split, m in data.metrics.items()]
    ))
    # Per-class numbers come from the split the confusion matrix and gallery show (test when there
    # is test data), so the report's per-class views agree with each other.
    shown_first = data.confusion_split or data.mistakes_split
    ordered = sorted(data.metrics.items(), key=lambda item: item[0] != shown_first)
    parts += _class_iou(data)
    for split, metrics in ordered:
        if isinstance(metrics.get("map_per_class"), list):
            parts.append(f"<h2>Per-class average precision ({split})</h2><p class=muted>COCO AP@[.5:.95] and "
                         "AR@100 per class; -1: no object of the class in the split</p>"
                         + _class_table("class", names, {"AP": metrics["map_per_class"],
                                                         "AR@100": metrics["mar_100_per_class"],
                                                         "train objects": plan.data.class_counts}))
            if metrics.get("pr_50_per_class"):
                parts.append(f"<h2>Precision-recall curves ({split})</h2><p class=muted>at IoU 0.5, per class</p>"
                             + _img(plots.pr_curves(metrics["pr_50_per_class"], names), "precision-recall curves"))
            break
        if isinstance(metrics.get("precision"), list):
            label = "label" if plan.data.task == "multilabel" else "class"
            parts.append(f"<h2>Per-{label} precision and recall ({split})</h2>"
                         + _class_table(label, names, {"precision": metrics["precision"], "recall": metrics["recall"],
                                                       "train count": plan.data.class_counts}))
            break
    if data.history:
        parts.append("<h2>Learning curves</h2>" + _img(plots.learning_curves(data.history, plan.monitor), "learning curves"))
    measured = [(row["epoch"], float(row["noise_scale"])) for row in data.history
                if row.get("noise_scale") not in (None, "")]
    if measured:
        parts.append("<h2>Gradient noise scale</h2><p class=muted>measured during data-parallel training from each "
                     "rank's gradient against the all-reduced one (McCandlish et al. 2018): batches well beyond it "
                     "stop saving steps, batches well below it use the hardware poorly</p>"
                     + _img(plots.noise_scale([b for _, b in measured], plan.optimization.batch_size,
                                          at=[e for e, _ in measured], unit="epoch"), "gradient noise scale"))
    if data.confusion is not None:
        parts.append(f"<h2>Confusion matrix ({data.confusion_split})</h2>"
                     + _img(plots.confusion_matrix(data.confusion, names), "confusion matrix"))
    if data.mistakes:
        images = torch.stack([m[0] for m in data.mistakes])
        parts.append(f"<h2>Worst mistakes ({data.mistakes_split})</h2><p class=muted>"
                     + GALLERY_CAPTIONS.get(plan.data.task, "highest-loss misclassified images: true label, then "
                                            "prediction</p>")
                     + _img(plots.gallery(images, [m[1] for m in data.mistakes]), "worst mistakes"))
    parts += _regularization(plan, data.augmented)
    parts += _augment_search(plan)
    parts += _semi_supervised(plan)
    parts += _meta_learning(plan)
    if plan.evidence:
        parts.append("<h2>Why these choices</h2>" + _table(
            ["setting", "evidence"], [[k, v] for k, v in plan.evidence.items()]
        ))
    parts.append("<h2>Plan</h2><pre>" + html.escape(plan.to_yaml()) + "</pre>")
    return (f"<!doctype html><html><head><meta charset=utf-8><title>visiondojo report</title>"
            f"<style>{_STYLE}</style></head><body>{''.join(parts)}</body></html>")


def _regularization(plan: Plan, augmented: torch.Tensor | None) -> list[str]:
    """The regularization policy in physical units, and a sample of what the model saw."""
    reg = plan.regularization
    rows = [[f"augment: {op.name}", f"magnitude {op.magnitude:.2f}, p {op.p:.2f}: {describe(op)}"] for op in reg.augment]
    if plan.data.task == "detection":
        rows += [["mosaic (probability)", reg.mosaic], ["box mixup (probability)", reg.box_mixup]]
    else:
        rows += [["label smoothing", reg.label_smoothing], ["mixup (Beta a)", reg.mixup], ["cutmix (Beta a)", reg.cutmix]]
        if plan.data.task == "segmentation":
            rows.append(["Dice loss weight", reg.dice])
    rows += [["weight decay", f"{reg.weight_decay:g}" + (" (adaptive per layer)" if reg.adaptive_decay else "")],
             ["dropout", "model's own" if reg.dropout is None else reg.dropout],
             ["stochastic depth", "model's own" if reg.stochastic_depth is None else reg.stochastic_depth],
             ["class balance", reg.class_balance]]
    parts = ["<h2>Regularization</h2>" + _table(["part", "setting"], rows)]
    if augmented is not None and len(augmented):
        parts.append("<p class=muted>training images as the model saw them (augmented and mixed)</p>"
                     + _img(plots.gallery(augmented, [""] * len(augmented)), "augmented training images"))
    return parts


def _augment_search(plan: Plan) -> list[str]:
    """The policy search's evidence: distances and groups, and every proxy training it ran."""
    search = plan.measurements.get("augment_search")
    if not search:
        return []
    space = search["space"]
    parts = [f"<h2>Augmentation search</h2><p class=muted>{space['proxy_trainings']} proxy trainings of "
             f"{search['subset_size']} images x {search['proxy_epochs']} epochs ({search['seconds']:.0f} s) over "
             f"{space['groups']} groups of {space['pairs']} (op, magnitude) pairs; the full space holds "
             f"{html.escape(str(space['policies']))} policies. {html.escape(search['stopped'])}.</p>",
             _img(plots.augment_distances(search["distances"], search["groups"]), "augmentation distances and groups"),
             _table(["group", "distance", "choices (op, magnitude)"],
                    [[g["name"], g["distance"], ", ".join(f"{op} {m:g}" for op, m in g["pairs"])]
                     for g in search["groups"]])]
    rows = [[", ".join(f"{k} {v}" for k, v in t["groups"].items()) or "none",
             ", ".join(f"{k} {v:g}" for k, v in t.get("target_options", t.get("soft", {})).items()) or "none", t["score"],
             _verdict(t.get("test")), t["seconds"]]
            for t in search["trials"]]
    parts.append(_table(["augmentation groups", "target options", f"proxy {plan.monitor}",
                         "against the best so far (paired sign test)", "seconds"], rows))
    extrapolation = search.get("extrapolation")
    if extrapolation:
        parts.append(f"<p class=muted>Gain at the training set's size: {html.escape(extrapolation['why'])}.</p>")
    return parts


def _verdict(test: dict | None) -> str:
    """A trial's paired test in a table cell: verdict, gain and p-value."""
    if not test:
        return "baseline"
    return f"{test['verdict']}: {test['effect']:+.2%}, p = {test['p_value']:.3g}"


def _semi_supervised(plan: Plan) -> list[str]:
    """What was learned from unlabeled images: the choice, pretraining, and every Noisy Student round."""
    measured, ssl = plan.measurements, plan.ssl
    if "ssl_choice" not in measured:
        return []
    choice = measured["ssl_choice"]
    parts = [f"<h2>Semi-supervised learning</h2><p class=muted>{choice['labeled']} labeled and "
             f"{choice['unlabeled']} unlabeled training images; the reasons for each choice are under "
             "'Why these choices' (ssl.*).</p>",
             _table(["stage", "setting"], [
                 ["representation pretraining", ssl.pretrain if ssl.pretrain == "none" else
                  f"{ssl.pretrain}, {ssl.pretrain_epochs} epochs, batch {ssl.pretrain_batch_size}"],
                 ["noisy student", f"up to {ssl.noisy_student_rounds} round(s) of {ssl.student_epochs} epochs, "
                                   f"{ssl.labeled_share:.0%} labeled images per batch, dropout {ssl.student_dropout:g}"
                  if ssl.noisy_student_rounds else "off"]])]
    pretrained = measured.get("ssl_pretrain")
    if pretrained:
        parts.append(f"<p class=muted>pretraining: {pretrained['epochs']} epochs, {pretrained['steps']} steps in "
                     f"{pretrained['seconds']:.0f} s ({html.escape(pretrained['stopped'])}); loss per epoch "
                     + ", ".join(f"{loss:.3f}" for loss in pretrained["losses"]) + "</p>")
    students = measured.get("noisy_student")
    if students:
        rows = [[r["round"], r["threshold"], r["kept"], ", ".join(map(str, r["counts"])), r["epochs"],
                 r["teacher_metric"], r["student_metric"],
                 ("yes" if r["accepted"] else "no") + (f": {r['verdict']}" if "verdict" in r else ""), r["seconds"]]
                for r in students["rounds"]]
        parts.append(_table(["round", "confidence threshold", "pseudo-labels", "per class", "epochs",
                             f"teacher val {plan.monitor}", f"student val {plan.monitor}", "accepted", "seconds"], rows)
                     + f"<p class=muted>{html.escape(students['stopped'])}</p>")
    return parts


def _meta_learning(plan: Plan) -> list[str]:
    """Sections for the optimization meta-learners' evidence, where they ran."""
    measured = plan.measurements
    parts = []
    if "meta_seconds" in measured:
        seconds = measured["meta_seconds"]
        parts.append("<h2>Meta-learning time</h2>" + _table(["meta-learner", "seconds"], [[k, v] for k, v in seconds.items()]))
    if "noise_scale" in measured:
        noise = measured["noise_scale"]
        parts.append(f"<h2>Gradient noise scale</h2><p class=muted>B_noise from micro-batches of {noise['b_small']} "
                     f"within batches of {noise['b_big']}</p>"
                     + _img(plots.noise_scale(noise["trajectory"], plan.optimization.batch_size), "noise scale"))
    if "throughput" in measured:
        parts.append("<h2>Training throughput by batch size</h2>" + _table(
            ["batch", "images/s"], [[k, v] for k, v in measured["throughput"].items()]))
    if "lr_finder" in measured:
        test = measured["lr_finder"]
        parts.append(f"<h2>Learning-rate range test</h2><p class=muted>batch {test['batch_size']}, "
                     f"{len(test['lrs'])} steps</p>"
                     + _img(plots.lr_finder(test["lrs"], test["losses"], test["smoothed"], plan.optimization.lr),
                            "learning-rate range test"))
    return parts


def write_report(path: Path, data: ReportData) -> None:
    write_text_atomic(path, render(data))
