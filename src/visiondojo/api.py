"""The public surface: ``fit`` = ``find_params`` + ``train``; ``evaluate`` and ``load`` for finished runs."""

from __future__ import annotations

import dataclasses
import json
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .choose import choose_optimization, plan_length_for_budget
from .data.batches import Normalizer, make_batches
from .data.sources import DataOptions, Source, align_classes, as_source
from .data.inspect import check_geometry, check_targets
from .durations import parse_duration
from .engine.checkpoint import load_weights, previous, save_weights
from .engine.distributed import broadcast_from_main, in_process_group, is_main_process
from .launch import launched
from .engine.evaluate import Evaluation, evaluate as evaluate_batches
from .engine.loop import CHECKPOINT_EVERY_S, LAST, run_training
from .engine.progress import TrainingProgress
from .engine.runtime import Runtime, resolve_runtime
from .engine.step import eval_outputs
from .errors import ConfigError, VisionDojoError
from .models import adapt_for, build_for, check_trusted
from .plan import Plan, RegularizationParams
from .regularize.batch import BatchRegularizer, balanced_sampling, check as check_regularization
from .regularize.choose import choose_regularization, regularization_pins
from .prepare import Prepared, options_from_plan, prepare
from .report import ReportData, read_history, write_history, write_json, write_report
from .run import Run
from .rundir import (CHECKPOINTS, HISTORY, METRICS, PLAN, REPORT, WEIGHTS, check_writable, claim_run_dir,
                     default_run_dir)
from .ssl.choose import PRETRAIN_SHARE, choose_ssl
from .ssl.noisy_student import noisy_student
from .ssl.pretrain import pretrain
from .ssl.stages import check_ssl, pretrain_seconds, ssl_active, teacher_deadline
from .ssl.unlabeled import as_unlabeled, check_unlabeled, concat_sources, drop_known
from .tasks import DetectionTask, make_task

GALLERY_SIZE = 16
GALLERY_POOL = 64
"""Validation or test images a detection gallery picks its worst from (each one costs a forward)."""


@in_process_group
def fit(model: nn.Module | str, train_data: Any, val_data: Any = None, test_data: Any = None, *,
        task: str | None = None, budget: str | float | None = None, out: str | Path | None = None,
        overwrite: bool = False, seed: int = 0, adapt: bool = False, num_classes: int | None = None,
        class_names: list[str] | None = None, resize: tuple[int, int] | None = None, strict: bool = True,
        val_fraction: float = 0.1, data_dir: str | None = None, box_format: str | None = None,
        device: str = "auto", precision: str = "auto",
        channels_last: bool | str = "auto", epochs: int | None = None, batch_size: int | None = None,
        lr: float | None = None, pin: dict[str, Any] | None = None, model_kwargs: dict | None = None,
        regularization: RegularizationParams | str | Path | None = None, unlabeled: Any = None,
        feature_layer: str | None = None, progress: bool | None = None) -> Run:
    """Train ``model`` on ``train_data`` with hyperparameters chosen for it, and write a run folder.

    Data: ``(images, labels)`` arrays or tensors, a Dataset or DataLoader, an image folder, a CSV
    manifest, or a built-in name (``fashion-mnist``, ``digits``; their test split is used as
    ``test_data`` unless given). Without ``val_data`` a stratified ``val_fraction`` is held out.
    Detection data: ``(images, [{"boxes", "labels"} per image])`` (``box_format`` xyxy, xywh or
    cxcywh when the boxes do not say; normalized coordinates are recognized), a Dataset yielding
    such pairs, or ``fashion-scenes[:split[:count]]``; the model is then a detector
    (``small-fcos``, ``torchvision:<detection model>`` or a module speaking torchvision's protocol).
    Segmentation data: ``(images, (N, H, W) masks)``, a Dataset yielding (image, mask) pairs, a
    folder of ``images/`` and ``masks/``, a VOC folder with ``SegmentationClass/``, or with
    ``task='segmentation'`` a COCO .json's outlines (``data.formats.masks``).
    ``budget`` ('5m', 300) bounds the whole call: the schedule is planned to end on time.
    ``epochs``, ``batch_size``, ``lr`` and ``pin`` ({'regularization.weight_decay': 0.01, ...}) pin
    plan fields that the meta-learners then leave alone. ``regularization`` (a RegularizationParams,
    or a file saved from one or a plan.yaml) is used as given, every field of it pinned. ``unlabeled``
    images (in any form ``train_data`` takes; labels, if any, are ignored) are learned from too
    (``visiondojo.ssl``: representation pretraining and/or Noisy Student, chosen for the data and
    budget); ``feature_layer`` names the module whose input is the model's feature vector when
    its classifier head is not the last Linear. The run folder (default ``runs/<timestamp>``) is
    never overwritten unless ``overwrite=True``.
    """
    start = time.perf_counter()
    budget_s = parse_duration(budget)
    options = DataOptions(task=task, num_classes=num_classes, class_names=class_names, resize=resize,
                          strict=strict, val_fraction=val_fraction, data_dir=data_dir, box_format=box_format)
    prep = prepare(model, train_data, val_data, test_data, options=options, adapt=adapt, seed=seed,
                   model_kwargs=model_kwargs)
    extra = _unlabeled_source(unlabeled, prep)
    pins = {**regularization_pins(regularization), **(pin or {}), **{k: v for k, v in (("optimization.epochs", epochs),
                                                  ("optimization.batch_size", batch_size),
                                                  ("optimization.lr", lr), ("ssl.feature_layer", feature_layer))
                                                  if v is not None}}
    # Under torchrun rank 0 plans alone (its probes are one-process trainings) and every rank follows.
    plan = _find_params(prep, budget_s=budget_s, start=start, seed=seed, device=device, precision=precision,
                        channels_last=channels_last, pins=pins, progress=progress,
                        unlabeled=extra) if is_main_process() else None
    plan = broadcast_from_main(plan)
    deadline = start + budget_s if budget_s is not None else None
    return _train(prep, plan, out=out, overwrite=overwrite, resume=False, deadline=deadline, progress=progress,
                  unlabeled=extra, started=start)


def find_params(model: nn.Module | str, train_data: Any, val_data: Any = None, *, task: str | None = None,
                budget: str | float | None = None, seed: int = 0, adapt: bool = False,
                device: str = "auto", precision: str = "auto", channels_last: bool | str = "auto",
                pin: dict[str, Any] | None = None, regularization: RegularizationParams | str | Path | None = None,
                unlabeled: Any = None, feature_layer: str | None = None, progress: bool | None = False,
                model_kwargs: dict | None = None, **data_options: Any) -> Plan:
    """Inspect the data and model and return the Plan that ``train`` would follow (nothing is trained)."""
    start = time.perf_counter()
    options = DataOptions(task=task, **data_options)
    prep = prepare(model, train_data, val_data, None, options=options, adapt=adapt, seed=seed,
                   model_kwargs=model_kwargs)
    return _find_params(prep, budget_s=parse_duration(budget), start=start, seed=seed, device=device,
                        precision=precision, channels_last=channels_last,
                        pins={**regularization_pins(regularization), **(pin or {}),
                              **({"ssl.feature_layer": feature_layer} if feature_layer is not None else {})},
                        progress=progress, unlabeled=_unlabeled_source(unlabeled, prep))


@in_process_group
def train(model: nn.Module | str | None, train_data: Any, val_data: Any = None, test_data: Any = None, *,
          plan: Plan | str | Path, out: str | Path | None = None, overwrite: bool = False, resume: bool = False,
          budget: str | float | None = None, unlabeled: Any = None, progress: bool | None = None,
          trust_code: bool = False, **data_options: Any) -> Run:
    """Train exactly as ``plan`` says (a Plan or a plan.yaml path). ``model`` None builds ``plan.model.spec``
    (a ``package.module:factory`` spec read from a file only with ``trust_code=True``).

    A plan that learns from unlabeled images (``plan.ssl``) needs the same ``unlabeled`` data again.

    ``resume=True`` continues the run in ``out`` from its last checkpoint. ``budget`` (not the
    plan's) makes the run respect a new wall-clock limit, re-planning its remaining epochs.
    """
    start = time.perf_counter()
    if not isinstance(plan, Plan):
        source = str(plan)
        plan = Plan.load(plan)
        if model is None:
            check_trusted(plan.model.spec, source, trust_code)
    options = options_from_plan(plan.data, DataOptions(**data_options))
    prep = prepare(model, train_data, val_data, test_data, options=options, adapt=plan.model.adapt, seed=plan.seed,
                   model_kwargs=plan.model.kwargs, known=plan.data, spec=plan.model.spec)
    # A replay trains the plan's epochs as they are; the clock only rules when given a budget here
    # (the plan's own budget was spent on planning those epochs, on that machine).
    budget_s = parse_duration(budget)
    deadline = start + budget_s if budget_s is not None else None
    extra = _unlabeled_source(unlabeled, prep)
    if extra is None and ssl_active(plan.ssl):
        raise VisionDojoError("this plan learns from unlabeled images (its ssl section); pass them again as "
                              "unlabeled=... (CLI: data.unlabeled in the config)")
    return _train(prep, plan, out=out, overwrite=overwrite, resume=resume, deadline=deadline, progress=progress,
                  unlabeled=extra, started=start)


def _restart(run_dir: Path, plan: Plan) -> tuple[Plan, str] | None:
    """For ``resume``: None when ``run_dir`` holds a run to continue; when it holds one stopped
    before its first checkpoint, or nothing yet, the plan to start it with and what is done. A
    folder holding anything else is left to ``claim_run_dir`` to refuse (``RunExistsError``)."""
    checkpoints = run_dir / CHECKPOINTS / LAST
    if (run_dir / WEIGHTS).exists() or checkpoints.exists() or previous(checkpoints).exists():
        return None
    if (run_dir / PLAN).is_file():
        return Plan.load(run_dir / PLAN), (f"{run_dir} has no checkpoint yet (the run stopped before its first); "
                                           "it starts from its first step with the plan it had made")
    if not run_dir.exists() or not any(run_dir.iterdir()):
        return plan, f"{run_dir} holds no run yet; it starts"
    return None


def _unlabeled_source(unlabeled: Any, prep: Prepared) -> Source | None:
    if unlabeled is None:
        return None
    if launched():
        raise ConfigError("unlabeled: semi-supervised learning under torchrun is not supported yet (its pretraining "
                          "and pseudo-labelling run in one process); train in one process, or without unlabeled "
                          "images")
    if prep.data.task in ("detection", "segmentation"):
        needs = "box" if prep.data.task == "detection" else "mask"
        raise VisionDojoError(f"unlabeled: semi-supervised learning is not available for {prep.data.task} yet (Noisy "
                              f"Student needs {needs} pseudo-labels); train without unlabeled images")
    source = as_unlabeled(unlabeled, prep.options)
    check_unlabeled(source, prep.data, prep.train)
    source = drop_known(source, {"training": prep.train, "validation": prep.val, "test": prep.test})
    if isinstance(unlabeled, (str, Path)):
        prep.data.sources["unlabeled"] = str(unlabeled)  # so a replay from the plan finds them again
    return source


def _find_params(prep: Prepared, *, budget_s: float | None, start: float, seed: int, device: str, precision: str,
                 channels_last: bool | str, pins: dict[str, Any], progress: bool | None = False,
                 unlabeled: Source | None = None) -> Plan:
    runtime_params, runtime_evidence = resolve_runtime(prep.model, device, precision, channels_last)
    plan = Plan(data=prep.data, model=prep.model_params, runtime=runtime_params, seed=seed,
                monitor=prep.task.monitor, evidence={**prep.evidence, **runtime_evidence})
    plan.optimization.budget_s = budget_s
    if prep.model_params.changes:
        plan.evidence["model.changes"] = "; ".join(prep.model_params.changes)
    for dotted, value in pins.items():
        plan.set(dotted, value)
        plan.evidence[dotted] = "pinned by the user"
    check_regularization(plan.regularization, prep.task)  # a bad policy fails before any time is spent
    check_ssl(plan, prep.model)
    deadline = start + budget_s if budget_s is not None else None
    runtime = Runtime(runtime_params, local=True)
    meta_start = time.perf_counter()
    choose_ssl(plan, prep, unlabeled, runtime, deadline=deadline)
    deadline = teacher_deadline(plan, deadline, pretrain_seconds(plan))
    speed = choose_optimization(plan, prep, runtime, deadline=deadline)
    searched = choose_regularization(plan, prep, runtime, speed, deadline=deadline,
                                     log=TrainingProgress(progress).log)
    if searched and deadline is not None and not plan.is_pinned("optimization.epochs"):
        plan_length_for_budget(plan, prep, speed, deadline, 0.0)  # the search's time is spent too
    now = time.perf_counter()
    # Where the time before training went: reading and checking the data and the model, then every
    # meta-learner (SSL choice, batch size, learning rate, run length, policy search) together.
    plan.measurements["planning_seconds"] = {"data_and_model": round(meta_start - start, 2),
                                             "meta_learning": round(now - meta_start, 2)}
    return plan


def _train(prep: Prepared, plan: Plan, *, out: str | Path | None, overwrite: bool, resume: bool,
           deadline: float | None, progress: bool | None, unlabeled: Source | None = None,
           started: float | None = None) -> Run:
    """Train per ``plan`` into a run folder. ``started`` (a ``time.perf_counter()`` value: when the
    call began) dates the run's ``timing`` record in metrics.json."""
    started = time.perf_counter() if started is None else started
    train_start = time.perf_counter()
    check_regularization(plan.regularization, prep.task)  # before the run folder is claimed
    check_ssl(plan, prep.model)
    if resume and unlabeled is not None and ssl_active(plan.ssl):
        raise VisionDojoError("resuming a run that learns from unlabeled images is not supported yet; "
                              "start it again without --resume (in a new run folder)")
    runtime = Runtime(plan.runtime)
    run_dir = Path(out) if out is not None else default_run_dir()
    restart = None
    if resume:
        if out is None:
            raise ConfigError("resume=True needs the run folder: pass out=... (CLI: --out DIR)")
        restart = broadcast_from_main(_restart(run_dir, plan))
        if restart is not None:
            plan, resume, overwrite = restart[0], False, True  # overwrite: only the stopped run's own files
    if runtime.is_main:  # every write of the run folder is the main process's
        run_dir = claim_run_dir(run_dir, overwrite=overwrite, resume=resume)
        check_writable(run_dir, sum(t.numel() * t.element_size() for t in prep.model.state_dict().values()))
    runtime.barrier()
    if resume:
        plan = Plan.load(run_dir / PLAN)
        runtime = Runtime(plan.runtime)
    elif runtime.is_main:
        plan.save(run_dir / PLAN)
    bar = TrainingProgress(progress if runtime.is_main else False)  # one progress display, rank 0's
    bar.log(f"visiondojo: run folder {run_dir}")
    if restart is not None:
        bar.log(f"resume: {restart[1]}")
    for change in plan.model.changes:
        bar.log(f"adapt: {change}")
    model = runtime.prepare_model(prep.model)
    normalizer = Normalizer(plan.data, runtime.device, plan.runtime.channels_last)
    semi = unlabeled is not None and ssl_active(plan.ssl)
    if semi and plan.ssl.pretrain != "none":
        _pretrain(model, prep, plan, unlabeled, runtime, normalizer, deadline, bar)
    students = semi and plan.ssl.noisy_student_rounds > 0
    initial_state = ({k: v.clone() for k, v in model.state_dict().items()}
                     if students and plan.ssl.student_init == "scratch" else None)
    opt = plan.optimization
    workers = plan.runtime.num_workers or None
    shard = (runtime.rank, runtime.world_size)  # this process's part of every split
    train_batches = make_batches(prep.train, opt.batch_size, runtime.device, train=True, seed=plan.seed,
                                 num_workers=workers, shard=shard,
                                 sample_weights=balanced_sampling(plan.regularization, prep.train,
                                                                  plan.data.class_counts))
    eval_batch = max(opt.batch_size, 256)
    val_batches = make_batches(prep.val, eval_batch, runtime.device, train=False, num_workers=workers, shard=shard)
    test_size = len(prep.test) if prep.test is not None else 0
    final_eval_ratio = 1 + test_size / len(prep.val)
    result = run_training(model, prep.task, plan, train_batches, val_batches, runtime, normalizer,
                          run_dir / CHECKPOINTS, deadline=teacher_deadline(plan, deadline) if semi else deadline,
                          final_eval_ratio=final_eval_ratio, resume=resume, progress=bar,
                          final_eval_s=plan.measurements.get("final_evaluation_s", 0.0) if deadline else 0.0,
                          interruptible=True, checkpoint_every_s=CHECKPOINT_EVERY_S)
    history, notes = result.history, result.notes
    if students:
        assert unlabeled is not None
        rounds = noisy_student(model, initial_state, result.kept_metric, prep.task, plan, prep.train, prep.val,
                                 unlabeled, val_batches, runtime, normalizer, run_dir / CHECKPOINTS,
                                 deadline=deadline, final_eval_ratio=final_eval_ratio, progress=bar)
        plan.measurements["noisy_student"] = rounds.summary()
        history = [{"stage": "teacher", **row} for row in result.history] + rounds.history
        notes = [*notes, f"noisy student: {rounds.stopped}"]
        result = rounds.result or result
    if semi and runtime.is_main:
        plan.save(run_dir / PLAN)  # with the SSL stages' measurements
    if runtime.is_main:
        save_weights(model, run_dir / WEIGHTS)
    evaluations = {"val": evaluate_batches(model, prep.task, val_batches, normalizer, runtime, collect=True)}
    if prep.test is not None:
        test_batches = make_batches(prep.test, eval_batch, runtime.device, train=False, num_workers=workers,
                                    shard=shard)
        evaluations["test"] = evaluate_batches(model, prep.task, test_batches, normalizer, runtime, collect=True)
    metrics = {split: e.metrics for split, e in evaluations.items()}
    if not runtime.is_main:
        return Run(model=model, plan=plan, metrics=metrics, history=history, dir=run_dir)
    evaluated = time.perf_counter()
    outcome = {**metrics, "kept_epoch": result.kept_epoch, "best_epoch": result.best_epoch,
               "stop_reason": result.stop_reason, "notes": notes}
    write_json(run_dir / METRICS, outcome)  # before the report, so a failing report loses no result
    write_history(run_dir / HISTORY, history)
    summary = [f"stopped: {result.stop_reason}; returned the weights of epoch {result.kept_epoch} "
               f"(val {plan.monitor} {result.kept_metric:.4f}; the best was epoch {result.best_epoch})", *notes,
               *[f"adapt: {c}" for c in plan.model.changes]]
    report = _report_data(plan, prep, history, evaluations, summary, model, normalizer, runtime)
    report.augmented = _augmented_sample(plan, prep, normalizer, runtime.device)
    write_report(run_dir / REPORT, report)
    # Again, with the timing of the whole call now that the report is written: what a budget bounds.
    timing = {"budget_s": None if deadline is None else round(deadline - started, 2),
              **{f"{k}_s": v for k, v in plan.measurements.get("planning_seconds", {}).items()},
              "training_s": round(evaluated - train_start, 2), "report_s": round(time.perf_counter() - evaluated, 2),
              "total_s": round(time.perf_counter() - started, 2)}
    if timing["budget_s"] is not None and timing["total_s"] > 2 * timing["budget_s"]:
        note = (f"the budget of {timing['budget_s']:g} s was too short for this data and model: the run took "
                f"{timing['total_s']:g} s, the least it can do (reading the data, one training step, the final "
                "evaluation and the report); give a longer budget")
        outcome["notes"] = [*notes, note]
        warnings.warn(note)
    write_json(run_dir / METRICS, {**outcome, "timing": timing})
    bar.log("visiondojo: done; " + ", ".join(f"{s} {plan.monitor} {m[plan.monitor]:.4f}" for s, m in metrics.items())
            + f"; report: {run_dir / REPORT}")
    return Run(model=model, plan=plan, metrics=metrics, history=history, dir=run_dir)


def _pretrain(model: nn.Module, prep: Prepared, plan: Plan, unlabeled: Source, runtime: Runtime,
              normalizer: Normalizer, deadline: float | None, bar: TrainingProgress) -> None:
    """Representation pretraining of ``model`` in place on the labeled + unlabeled images."""
    ssl = plan.ssl
    limit = None if deadline is None else time.perf_counter() + PRETRAIN_SHARE * (deadline - time.perf_counter())
    bar.log(f"ssl: {ssl.pretrain} pretraining, {ssl.pretrain_epochs} epochs over {len(prep.train) + len(unlabeled)} "
            "images")
    result = pretrain(model, concat_sources(prep.train, unlabeled), ssl, normalizer, runtime,
                      channels=plan.data.channels, height=plan.data.height, width=plan.data.width, seed=plan.seed,
                      deadline=limit, progress=bar)
    plan.measurements["ssl_pretrain"] = dataclasses.asdict(result)


def _report_data(plan: Plan, prep: Prepared, history: list[dict], evaluations: dict[str, Evaluation],
                 summary: list[str], model: nn.Module, normalizer: Normalizer, runtime: Runtime) -> ReportData:
    split = "test" if "test" in evaluations else "val"
    evaluation = evaluations[split]
    source = prep.test if split == "test" else prep.val
    data = ReportData(plan=plan, history=history, metrics={s: e.metrics for s, e in evaluations.items()},
                      summary=summary, confusion_split=split, mistakes_split=split)
    if isinstance(prep.task, DetectionTask):
        data.mistakes = _box_gallery(prep.task, model, source, plan, normalizer, runtime)
        return data
    if evaluation.scores is None:  # a task without collected scores has no sections of its own
        return data
    review = prep.task.review(evaluation.scores, evaluation.targets, evaluation.losses, plan.data.class_names,
                              GALLERY_SIZE)
    data.confusion = review.confusion
    if review.mistakes:
        order = torch.tensor([i for i, _ in review.mistakes])
        shown = (source.images_at(order).float() * plan.data.pixel_scale + plan.data.pixel_offset).clamp(0, 1)
        data.mistakes = [(prep.task.draw_mistake(img, evaluation.scores[i], evaluation.targets[i], plan.data.class_names),
                          caption) for img, (i, caption) in zip(shown, review.mistakes)]
    return data


def _box_gallery(task: DetectionTask, model: nn.Module, source: Source, plan: Plan, normalizer: Normalizer,
                 runtime: Runtime) -> list[tuple[torch.Tensor, str]]:
    """The report's detection gallery: of the first ``GALLERY_POOL`` images of ``source``, those with
    the most missed or false boxes, drawn with their true and predicted boxes."""
    index = torch.arange(min(GALLERY_POOL, len(source)))
    images = source.images_at(index)
    was_training = model.training
    model.eval()
    outputs = [eval_outputs(model, task, runtime, normalizer(chunk.to(runtime.device))) for chunk in images.split(16)]
    model.train(was_training)
    found = [d for chunk in outputs for d in chunk]
    truth = source.targets.gather(index).per_image()
    pixels = (images.float() * plan.data.pixel_scale + plan.data.pixel_offset).clamp(0, 1)
    return [(task.draw(pixels[i], found[i], truth[i], plan.data.class_names), caption)
            for i, caption in task.box_errors(found, truth, GALLERY_SIZE)]


def _augmented_sample(plan: Plan, prep: Prepared, normalizer: Normalizer, device: torch.device) -> torch.Tensor | None:
    """A few training images through the run's augmentation and mixing, for the report."""
    regularizer = BatchRegularizer(plan.regularization, prep.task, normalizer, device, seed=plan.seed)
    if not regularizer.active:
        return None
    index = torch.arange(min(GALLERY_SIZE, len(prep.train)))
    images = prep.train.images_at(index).to(device)
    targets = prep.train.targets.gather(index).to(device)
    pixels, _ = regularizer.regularize(normalizer.unit(images), targets)
    return pixels.clamp(0, 1).cpu()


def evaluate(run: Run | str | Path, data: Any, *, model: nn.Module | None = None, trust_code: bool = False,
             **data_options: Any) -> dict[str, Any]:
    """Metrics of a finished run (a Run or a run folder: see ``load``) on labeled ``data``."""
    if not isinstance(run, Run):
        run = load(run, model=model, trust_code=trust_code)
    plan = run.plan
    options = options_from_plan(plan.data, DataOptions(**data_options))
    source = align_classes(as_source(data, options, role="data", default_split="test"), plan.data.class_names)
    check_targets(source, plan.data.task, plan.data.num_classes)
    check_geometry(source, plan.data)
    runtime = run.inference_runtime()
    model_on_device = runtime.prepare_model(run.model)
    batches = make_batches(source, 256, runtime.device, train=False, shard=(runtime.rank, runtime.world_size))
    normalizer = Normalizer(plan.data, runtime.device, plan.runtime.channels_last)
    return evaluate_batches(model_on_device, make_task(plan.data), batches, normalizer, runtime).metrics


def load(run_dir: str | Path, *, model: nn.Module | None = None, trust_code: bool = False) -> Run:
    """Load a finished run. Runs made with a module passed from Python need that ``model`` (same architecture).

    A run folder may come from someone else, so loading one never runs code: the weights are
    safetensors, the plan is read with YAML's safe loader, and a ``package.module:factory`` model
    it names is imported only with ``trust_code=True`` (or given as ``model``).
    """
    run_dir = Path(run_dir)
    plan = Plan.load(run_dir / PLAN)
    if model is None:
        check_trusted(plan.model.spec, str(run_dir / PLAN), trust_code)
    weights = run_dir / WEIGHTS
    if not weights.is_file():
        raise VisionDojoError(f"{run_dir}: no {WEIGHTS}; the run did not finish (continue it with --resume)")
    if model is None:
        if plan.model.spec.startswith("python:"):
            raise VisionDojoError(
                f"{run_dir}: the run trained a model passed from Python ({plan.model.spec[7:]}); "
                "pass an instance of it: load(run_dir, model=MyModel())"
            )
        model = build_for(plan.model.spec, plan.data, plan.model.kwargs)
    if plan.model.adapt:
        adapt_for(model, plan.data)
    load_weights(model, weights)
    metrics_path = run_dir / METRICS
    metrics = {}
    if metrics_path.is_file():
        saved = json.loads(metrics_path.read_text())
        metrics = {k: v for k, v in saved.items() if isinstance(v, dict)}
    return Run(model=model.eval(), plan=plan, metrics=metrics, history=read_history(run_dir / HISTORY), dir=run_dir)
