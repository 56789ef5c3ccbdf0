"""``visiondojo`` command line: argument parsing only; the work is done by the Python API."""

from __future__ import annotations

import argparse
import csv
import json
import sys
import os
import shlex
import warnings
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from . import api
from .config import Config, load_config
from .data.images import pil_to_chw
from .engine.distributed import PeerFailed
from .engine.interrupt import Interrupted
from .launch import launched
from .errors import ConfigError, VisionDojoError
from .models import check_trusted
from .plan import Plan
from .rundir import PLAN, default_run_dir, require_run
from .tasks.detection import Detections, coco_table
from .tasks.segmentation import Masks, SegmentationTask

DEMO_BUDGET = "100s"
SCENES_DEMO_BUDGET = "4m"
SCENES_DEMO_SCENES = 2400
SCENES_DEMOS = {"detection": ("small-fcos", "the built-in SmallFCOS detector"),
                "segmentation": ("small-unet", "the built-in SmallUNet segmentation model")}
"""The demos on fashion-scenes: task -> (model, what it is)."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="visiondojo", description="Train computer-vision models automatically.")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train from a YAML config (or replay a plan.yaml)")
    train.add_argument("config", nargs="?", help="YAML config with sections data, model, training, output")
    train.add_argument("--plan", help="replay this plan.yaml instead of choosing hyperparameters")
    train.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config value, e.g. --set training.lr=0.003 (repeatable)")
    train.add_argument("--budget", help="wall-clock budget for the whole run, e.g. 90s, 5m, 1h")
    train.add_argument("--out", help="run folder (default: output.dir, else runs/<timestamp>)")
    train.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    train.add_argument("--overwrite", action="store_true", help="replace the run files in an existing --out")
    train.add_argument("--data-dir", help="folder holding a built-in dataset's files")
    train.add_argument("--regularization-params", metavar="FILE",
                       help="use this saved regularization policy (its own YAML or a plan.yaml) as given")
    _trust(train)
    _quiet(train)

    evaluate = commands.add_parser("evaluate", help="metrics of a finished run on labeled data")
    evaluate.add_argument("run_dir")
    evaluate.add_argument("--data", required=True, help="image folder, CSV manifest or built-in name")
    evaluate.add_argument("--data-dir", help="folder holding a built-in dataset's files")
    _trust(evaluate)

    predict = commands.add_parser("predict", help="predict labels for image files")
    predict.add_argument("run_dir")
    predict.add_argument("images", nargs="+")
    predict.add_argument("--out", help="write predictions to this file instead of printing them "
                         "(segmentation: a folder for palette PNG masks and their colour overlays, required)")
    predict.add_argument("--format", choices=("json", "csv"), default="json",
                         help="detection runs: COCO results JSON (default) or CSV rows")
    _trust(predict)

    demo = commands.add_parser("demo", help="train on the bundled digits data (about 2 minutes), or detect "
                                            "objects in built-in Fashion-MNIST scenes (--task detection)")
    demo.add_argument("--task", choices=("classification", *SCENES_DEMOS), default="classification")
    demo.add_argument("--budget", help=f"default {DEMO_BUDGET} (classification), {SCENES_DEMO_BUDGET} (detection, "
                      "segmentation)")
    demo.add_argument("--out", help="run folder (default: runs/demo-<timestamp>)")
    _quiet(demo)
    return parser


def _trust(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--trust-code", action="store_true",
                        help="allow a package.module:factory model named in a config or plan to be imported and run "
                             "(only for files you trust)")


def _quiet(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quiet", action="store_true", help="no progress output")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    warnings.formatwarning = lambda message, *_, **__: f"warning: {message}\n"
    # Under torchrun each process runs this; the one that failed first speaks for the job.
    rank = f" (rank {os.environ['RANK']})" if launched() else ""
    try:
        return {"train": _train, "evaluate": _evaluate, "predict": _predict, "demo": _demo}[args.command](args)
    except PeerFailed:
        return 1
    except Interrupted as exc:
        print(f"interrupted{rank}: {exc}", file=sys.stderr)
        print(f"continue with: {_resume_command(argv if argv is not None else sys.argv[1:], exc.run_dir)}",
              file=sys.stderr)
        return exc.exit_code
    except VisionDojoError as exc:
        print(f"error{rank}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # before training (planning), or a second Ctrl-C during a checkpoint
        out = getattr(args, "out", None)
        hint = (f"; if training had started, its last checkpoint continues with: "
                f"{_resume_command(argv if argv is not None else sys.argv[1:], out)}" if out else "")
        print(f"interrupted{hint}", file=sys.stderr)
        return 130


def _resume_command(argv: list[str], run_dir: str) -> str:
    """The command that continues an interrupted run: the same arguments, ``--resume`` into its
    folder, never ``--overwrite`` (which would discard it); under torchrun, the same launch."""
    kept: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--out":
            skip = True
        elif arg != "--overwrite" and not arg.startswith("--out=") and arg != "--resume":
            kept.append(arg)
    launch = (f"torchrun --nproc-per-node {os.environ.get('LOCAL_WORLD_SIZE', os.environ['WORLD_SIZE'])} -m visiondojo"
              if launched() else "visiondojo")
    return " ".join([launch, *map(shlex.quote, kept), "--resume", "--out", shlex.quote(run_dir)])


def _progress(args: argparse.Namespace) -> bool:
    return not args.quiet


def _train(args: argparse.Namespace) -> int:
    config = _config(args)
    out = args.out or (config.output.dir if config else None)
    overwrite = args.overwrite or (config.output.overwrite if config else False)
    if args.resume and not out:
        raise ConfigError("--resume needs the run folder: pass --out DIR (or output.dir in the config)")
    # A run stopped while planning left no plan: resuming it starts it (api.train restarts one
    # stopped before its first checkpoint the same way, keeping its plan).
    resumable = args.resume and (args.plan or (Path(out) / PLAN).is_file() or config is None)
    if args.resume and not resumable:
        print(f"resume: {out} holds no run yet (none was started there, or it stopped while planning); it starts",
              file=sys.stderr)
    if resumable or args.plan:
        if args.regularization_params:
            raise ConfigError("--regularization-params applies to a new run; a replayed plan keeps its own policy")
        plan_path = Path(args.plan) if args.plan else require_run(Path(out)) / PLAN
        plan = Plan.load(plan_path)
        sources = _sources(config, plan, plan_path)
        if config is not None:
            check_trusted(config.model.spec, args.config, args.trust_code)
        run = api.train(config.model.spec if config else None, sources.get("train"), sources.get("val"),
                        sources.get("test"), plan=plan_path, out=out, overwrite=overwrite, resume=args.resume,
                        budget=args.budget, unlabeled=sources.get("unlabeled"), progress=_progress(args),
                        trust_code=args.trust_code, data_dir=args.data_dir)
    else:
        if config is None:
            raise ConfigError("train needs a CONFIG.yaml (or --plan plan.yaml to replay a run)")
        data, model, training = config.data, config.model, config.training
        check_trusted(model.spec, args.config, args.trust_code)
        run = api.fit(
            model.spec, data.train, data.val, data.test, task=data.task, budget=args.budget or training.budget,
            out=out, overwrite=overwrite, seed=training.seed, adapt=model.adapt, num_classes=data.num_classes,
            class_names=data.class_names, resize=data.resize, strict=data.strict, val_fraction=data.val_fraction,
            box_format=data.box_format,
            data_dir=args.data_dir or data.data_dir, device=training.device, precision=training.precision,
            channels_last=training.channels_last, pin={**training.pins(), **config.regularization.pins()},
            model_kwargs=model.kwargs, progress=_progress(args),
            regularization=args.regularization_params or training.regularization_params,
            unlabeled=data.unlabeled, feature_layer=model.feature_layer,
        )
    _print_result(run)
    return 0


def _config(args: argparse.Namespace) -> Config | None:
    if args.config is None:
        if args.overrides:
            raise ConfigError("--set needs a CONFIG.yaml to override")
        return None
    return load_config(args.config, args.overrides)


def _sources(config: Config | None, plan: Plan, plan_path: Path) -> dict[str, Any]:
    if config is not None:
        return {"train": config.data.train, "val": config.data.val, "test": config.data.test,
                "unlabeled": config.data.unlabeled}
    if "train" not in plan.data.sources:
        raise ConfigError(
            f"{plan_path}: the plan does not say where its data came from (it was trained on data passed "
            "from Python); pass the CONFIG.yaml too"
        )
    return dict(plan.data.sources)


def _print_result(run: api.Run) -> None:
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun: rank 0 speaks for the job
        return
    for split, metrics in run.metrics.items():
        scalars = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if not isinstance(v, list))
        print(f"{split}: {scalars}")
    print(f"run folder: {run.dir}")
    print(f"report: {run.report}")


def _evaluate(args: argparse.Namespace) -> int:
    run = api.load(args.run_dir, trust_code=args.trust_code)
    metrics = api.evaluate(run, args.data, data_dir=args.data_dir)
    if "map" in metrics:  # detection: COCO's table, then the per-class figures
        print(coco_table(metrics))
        print(json.dumps({k: v for k, v in metrics.items() if isinstance(v, list)}, indent=2))
    elif "iou_per_class" in metrics:  # segmentation: the summary line, then IoU per class
        print(_iou_table(metrics, run.plan.data.class_names))
    else:
        print(json.dumps(metrics, indent=2))
    return 0


def _iou_table(metrics: dict[str, Any], class_names: list[str]) -> str:
    """mIoU, pixel accuracy (and any other scalar) on one line, then a ``class  index  IoU`` row per
    class, weakest first as in the report's table (the index is the class's value in predicted masks)."""
    named = {"miou": "mIoU", "pixel_acc": "pixel accuracy"}
    scalars = {k: v for k, v in metrics.items() if not isinstance(v, list)}
    head = [f"{named[k]} {scalars.pop(k):.4f}" for k in named if k in scalars]
    lines = ["   ".join(head + [f"{k} {v:.4f}" for k, v in scalars.items()])]
    ious = metrics["iou_per_class"]
    width = max([len("class"), *(len(name) for name in class_names)])
    lines.append(f"{'class':<{width}}  index     IoU")
    for i in sorted(range(len(ious)), key=lambda i: ious[i]):
        name = class_names[i] if i < len(class_names) else str(i)
        lines.append(f"{name:<{width}}  {i:>5}  {ious[i]:.4f}")
    if any(iou == 0 for iou in ious):
        lines.append("(IoU 0 also where a class has no pixel in the data's masks nor in the predictions)")
    return "\n".join(lines)


def _predict(args: argparse.Namespace) -> int:
    run = api.load(args.run_dir, trust_code=args.trust_code)
    predictions = run.predict(args.images)
    if isinstance(predictions, Detections):
        return _write_detections(predictions, [str(p) for p in args.images], args.out, args.format)
    if isinstance(predictions, Masks):
        return _write_masks(predictions, [Path(p) for p in args.images], args.out)
    names = predictions.names()
    rows = []
    for path, name, scores, label in zip(args.images, names, predictions.scores, predictions.labels):
        if label.ndim == 0:
            rows.append((str(path), name, f"{float(scores[label]):.4f}"))
        else:  # multi-label: every predicted label with its probability
            chosen = label.nonzero()[:, 0].tolist()
            rows.append((str(path), ";".join(name), ";".join(f"{float(scores[k]):.4f}" for k in chosen)))
    if args.out:
        with open(args.out, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["path", "prediction", "probability"])
            writer.writerows(rows)
        print(f"wrote {len(rows)} predictions to {args.out}")
    else:
        for row in rows:
            print("\t".join(row))
    return 0


def _write_masks(found: Masks, paths: list[Path], out: str | None) -> int:
    """Two PNGs per image in ``out``: ``<stem>.png``, a palette PNG whose pixels are the class
    indices and whose palette colours them, and ``<stem>_overlay.png``, the image at its own size
    with the classes' colours blended over it."""
    if not out:
        raise ConfigError("predict: segmentation writes one PNG mask per image; give a folder with --out")
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    written = [folder / f"{path.stem}.png" for path in paths]
    overlays = [folder / f"{path.stem}_overlay.png" for path in paths]
    if len(set(written + overlays)) < 2 * len(written):
        raise ConfigError("predict: two images share a file name (or one is another's <name>_overlay), and their "
                          "masks would overwrite each other in --out; predict them in separate calls")
    clashes = [p for p in written + overlays if p.exists()]
    if clashes:
        raise ConfigError(f"predict: {clashes[0]} exists; visiondojo does not overwrite files it did not write in "
                          "this call: choose another --out folder")
    for path, target, overlay, mask, labels in zip(paths, written, overlays, found.to_images(), found.labels):
        _save_new(mask, target)
        _save_new(_overlay(path, labels), overlay)
    print(f"wrote {len(written)} masks to {folder} (palette PNGs: pixel value = class index) and their colour "
          "overlays (<name>_overlay.png)")
    return 0


def _overlay(path: Path, labels: torch.Tensor) -> Image.Image:
    """The image read at its own size, with the (H, W) mask's class colours blended over it
    (``SegmentationTask.overlay``); a mask of another size is scaled to the image's (nearest)."""
    with Image.open(path) as picture:
        pixels = pil_to_chw(picture, 3).float() / 255
    size = tuple(pixels.shape[1:])
    mask = labels.long()
    if tuple(mask.shape) != size:
        mask = torch.nn.functional.interpolate(mask[None, None].float(), size=size, mode="nearest")[0, 0].long()
    blended = SegmentationTask.overlay(pixels, mask)
    return Image.fromarray((blended * 255).round().to(torch.uint8).permute(1, 2, 0).numpy())


def _save_new(image: Image.Image, target: Path) -> None:
    """Save ``image`` as a PNG at ``target``, refusing a file that appeared there since the check."""
    try:
        with open(target, "xb") as handle:
            image.save(handle, format="PNG")
    except FileExistsError:
        raise ConfigError(f"predict: {target} appeared while the masks were written; visiondojo does not "
                          "overwrite it: choose another --out folder") from None


def _write_detections(found: Detections, paths: list[str], out: str | None, fmt: str) -> int:
    """COCO results JSON (image ids are the paths as given), or CSV rows of path, class, score, x1, y1, x2, y2."""
    if fmt == "json":
        text = json.dumps(found.to_coco(paths), indent=1)
    else:
        lines = ["path,class,score,x1,y1,x2,y2"]
        for path, boxes, scores, names in zip(paths, found.boxes, found.scores, found.names()):
            lines += [",".join([path, name, f"{score:.4f}", *(f"{v:.1f}" for v in box)])
                      for box, score, name in zip(boxes.tolist(), scores.tolist(), names)]
        text = "\n".join(lines) + "\n"
    if out:
        Path(out).write_text(text)
        print(f"wrote {sum(len(b) for b in found.boxes)} detections in {len(paths)} images to {out}")
    else:
        print(text)
    return 0


def _demo(args: argparse.Namespace) -> int:
    out = args.out or default_run_dir(Path("runs"), prefix="demo-")
    if args.task in SCENES_DEMOS:
        model, what = SCENES_DEMOS[args.task]
        budget = args.budget or SCENES_DEMO_BUDGET
        print(f"visiondojo demo: {what} on {SCENES_DEMO_SCENES} fashion-scenes (Fashion-MNIST items on textured "
              f"128x128 canvases), budget {budget}", flush=True)
        n = SCENES_DEMO_SCENES
        run = api.fit(model, f"fashion-scenes:train:{n}", f"fashion-scenes:val:{n // 8}", f"fashion-scenes:test:{n // 8}",
                      task=args.task, budget=budget, out=out, progress=_progress(args))
    else:
        budget = args.budget or DEMO_BUDGET
        print(f"visiondojo demo: FMNIST-ResNet on the bundled digits data, budget {budget}", flush=True)
        run = api.fit("fmnist-resnet", "digits", budget=budget, out=out, progress=_progress(args))
    _print_result(run)
    print(f"open {run.report} in a browser to see what the run did and why")
    return 0


if __name__ == "__main__":
    sys.exit(main())
