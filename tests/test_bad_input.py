"""The bad-input catalogue: each case is a malformed input a practitioner could pass, with the clear
visiondojo error it must get (what, where, how to fix) or the documented recovery it must make.
Nothing here may surface as a bare IndexError or RuntimeError from deep inside torch."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import Dataset

import visiondojo
from visiondojo.cli import main
from visiondojo.errors import VisionDojoError
from visiondojo.plan import Plan, RegularizationParams

from conftest import TinyNet, make_problem, write_png

PINS = {"optimization.epochs": 1, "optimization.batch_size": 8, "optimization.lr": 0.01}


def plan_for(data: Any, val: Any = None, model: Any = "fmnist-resnet", **options: Any) -> Plan:
    """Read, check and plan ``data`` (everything pinned, so only the data handling runs) for a
    built-in model, which is built for whatever channels and classes the data has."""
    kwargs = {"model_kwargs": {"width": 4}} if model == "fmnist-resnet" else {}
    return visiondojo.find_params(model, data, val, pin=PINS, regularization=RegularizationParams(),
                                  **kwargs, **options)


def arrays(n: int = 40, **kwargs: Any) -> tuple[np.ndarray, np.ndarray]:
    return make_problem(n, **kwargs)


class Items(Dataset):
    """A Dataset over a list of (image, label) items."""

    def __init__(self, items: list[Any]):
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Any:
        return self.items[index]


class Broken(Dataset):
    """A Dataset whose 5th item raises (a bug in the user's loader)."""

    def __len__(self) -> int:
        return 20

    def __getitem__(self, index: int) -> Any:
        if index == 5:
            raise KeyError("missing annotation")
        return torch.rand(1, 8, 8), index % 2


def folder(tmp: Path, images: dict[str, Any]) -> Path:
    """A class-folder data set: ``{"cls/name.png": array | bytes}``."""
    root = tmp / "data"
    for name, content in images.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        elif isinstance(content, Image.Image):
            content.save(path)
        else:
            write_png(path, content)
    return root


def stripes(n: int = 6, size: int = 8) -> dict[str, Any]:
    images, labels = make_problem(n, classes=2, size=size, dtype="uint8")
    return {f"{'ab'[label]}/{i}.png": image for i, (image, label) in enumerate(zip(images, labels))}


def png_bytes(size: int = 8) -> bytes:
    import io

    buffer = io.BytesIO()
    Image.new("L", (size, size), 128).save(buffer, format="PNG")
    return buffer.getvalue()


def manifest(tmp: Path, text: str) -> Path:
    root = folder(tmp, stripes())
    (root / "list.csv").write_text(text)
    return root / "list.csv"


def cli(tmp: Path, config: str, *extra: str) -> int:
    (tmp / "cfg.yaml").write_text(config)
    return main(["train", str(tmp / "cfg.yaml"), "--out", str(tmp / "run"), "--quiet", *extra])


def expect(condition: bool) -> None:
    """A recovery's check: 7 images in a folder leave 5 for training (2 held out for validation)."""
    assert condition


def too_short(tmp: Path) -> visiondojo.Run:
    with pytest.warns(UserWarning, match="budget of 0.01 s was too short"):
        return visiondojo.fit(TinyNet(), arrays(), budget=0.01, out=tmp / "run", progress=False)


GOOD_CONFIG = "data:\n  train: digits\nmodel:\n  spec: fmnist-resnet\n  kwargs: {width: 4}\n"


@dataclass
class Case:
    name: str
    run: Callable[[Path], Any]
    error: str | None = None
    """A regex the visiondojo error must match; None: the input is recovered from (``check``)."""
    check: Callable[[Any, Path], None] | None = None


def _one_class(plan: Plan, tmp: Path) -> None:
    assert plan.data.num_classes == 1 or plan.data.task == "binary"


CASES = [
    # --- arrays
    Case("empty arrays", lambda t: plan_for((np.zeros((0, 8, 8), np.float32), np.zeros(0, np.int64))), r"empty"),
    Case("counts differ", lambda t: plan_for((arrays()[0], arrays()[1][:30])), r"40 images? .*30 labels?|30 labels"),
    Case("NaN pixel", lambda t: plan_for((np.where(np.arange(40)[:, None, None] == 7, np.nan, arrays()[0]),
                                          arrays()[1])), r"sample 7.*(NaN|not finite)"),
    Case("infinite pixel", lambda t: plan_for((np.where(np.arange(40)[:, None, None] == 3, np.inf, arrays()[0]),
                                               arrays()[1])), r"sample 3"),
    Case("fractional labels", lambda t: plan_for((arrays()[0], arrays()[1] + 0.5)), r"label"),
    Case("labels of wrong shape", lambda t: plan_for((arrays()[0], np.zeros((40, 2, 2, 2)))), r"label"),
    Case("label beyond num_classes", lambda t: plan_for(arrays(), num_classes=2), r"label .*3|classes"),
    Case("negative label", lambda t: plan_for((arrays()[0], np.where(np.arange(40) == 9, -1, arrays()[1]))),
         r"sample 9|index 9|-1"),
    Case("labels that are neither ids nor names", lambda t: plan_for((arrays()[0], np.array([{"x": 1}] * 40,
                                                                                              dtype=object))),
         r"label 0 is a dict; labels are class ids, class names"),
    Case("5-D images", lambda t: plan_for((np.zeros((40, 1, 1, 8, 8), np.float32), arrays()[1])), r"shape"),
    Case("a class in validation only", lambda t: plan_for(arrays(classes=2), (arrays(classes=3)[0], np.full(40, 2))),
         r"class|label"),
    Case("a single class", lambda t: plan_for((arrays()[0], np.zeros(40, np.int64))),
         r"every training sample has the same class \(0\).*at least two classes"),
    Case("a single class, the others declared", lambda t: plan_for((arrays()[0], np.zeros(40, np.int64)),
                                                                   num_classes=3), None,
         lambda plan, t: expect(plan.data.task == "multiclass" and plan.data.num_classes == 3)),
    Case("images of 1x1 pixel (the model pools adaptively: they train)",
         lambda t: plan_for((np.random.rand(40, 1, 1).astype(np.float32), arrays()[1])), None,
         lambda plan, t: expect((plan.data.height, plan.data.width) == (1, 1))),
    Case("images of mixed sizes in a list", lambda t: plan_for(([np.zeros((8, 8), np.float32)] * 20 +
                                                                [np.zeros((9, 9), np.float32)] * 20, arrays()[1])),
         r"got list: np.stack .* Dataset or a folder \(with resize\)"),
    Case("boolean images", lambda t: plan_for((arrays()[0] > 0.5, arrays()[1])), None,
         lambda plan, t: expect(plan.data.channels == 1 and plan.data.train_size == 36)),
    Case("integer images beyond 255", lambda t: plan_for(((arrays()[0] * 4000).astype(np.int32), arrays()[1])),
         None, lambda plan, t: expect(plan.data.pixel_scale < 1 / 255)),
    # --- Datasets
    Case("empty Dataset", lambda t: plan_for(Items([])), r"empty"),
    Case("Dataset yielding bare tensors", lambda t: plan_for(Items([torch.rand(1, 8, 8)] * 10)),
         r"\(image, target\)|pairs?"),
    Case("Dataset raising on an item", lambda t: plan_for(Broken()),
         r"reading item 5 raised KeyError: 'missing annotation'"),
    Case("Dataset of mixed channel counts", lambda t: plan_for(Items([(torch.rand(1, 8, 8), 0)] * 5 +
                                                                    [(torch.rand(3, 8, 8), 1)] * 5)),
         r"channel|shape"),
    Case("Dataset with None labels", lambda t: plan_for(Items([(torch.rand(1, 8, 8), None)] * 10)), r"label|target"),
    # --- folders
    Case("empty folder", lambda t: plan_for(str(folder(t, {"a/notes.txt": b"x"}))), r"empty"),
    Case("folder of one class", lambda t: plan_for(str(folder(t, {f"a/{i}.png": np.zeros((8, 8), np.uint8)
                                                                  for i in range(6)}))),
         r"same class .*one subfolder per class"),
    Case("zero-byte image file", lambda t: plan_for(str(folder(t, {**stripes(), "a/empty.png": b""}))),
         r"empty.png"),
    Case("truncated PNG", lambda t: plan_for(str(folder(t, {**stripes(), "b/cut.png": png_bytes()[:30]}))),
         r"cut.png"),
    Case("random bytes named .jpg", lambda t: plan_for(str(folder(t, {**stripes(), "a/x.jpg": os.urandom(200)}))),
         r"x.jpg"),
    Case("unreadable files skipped with strict false",
         lambda t: plan_for(str(folder(t, {**stripes(), "a/empty.png": b""})), strict=False), None,
         lambda plan, t: expect(plan.data.train_size == 4)),
    Case("grey and colour images mixed", lambda t: plan_for(str(folder(t, {**stripes(), "a/rgb.png":
                                                                           Image.new("RGB", (8, 8), (9, 99, 199))}))),
         None, lambda plan, t: expect(plan.data.channels == 3 and plan.data.train_size == 5)),
    Case("16-bit PNG", lambda t: plan_for(str(folder(t, {**stripes(), "a/deep.png":
                                                         Image.fromarray(np.full((8, 8), 40000, np.uint16))}))),
         None, lambda plan, t: expect(plan.data.channels == 1 and plan.data.train_size == 5)),
    Case("images of 1x1 pixel in a folder", lambda t: plan_for(str(folder(t, {f"{'ab'[i % 2]}/{i}.png":
                                                                               np.zeros((1, 1), np.uint8)
                                                                               for i in range(6)}))), None,
         lambda plan, t: expect((plan.data.height, plan.data.width) == (1, 1))),
    Case("a non-UTF-8 file name", lambda t: plan_for(str(folder(t, {**stripes(), os.fsdecode(b"a/caf\xe9.png"):
                                                                    np.zeros((8, 8), np.uint8)}))),
         None, lambda plan, t: expect(plan.data.train_size == 5)),
    # --- manifests
    Case("manifest without a labels column", lambda t: plan_for(str(manifest(t, "a/0.png\n"))), r"path,labels"),
    Case("empty manifest", lambda t: plan_for(str(manifest(t, "path,labels\n"))), r"empty"),
    Case("manifest naming a missing file", lambda t: plan_for(str(manifest(t, "a/0.png,a\nb/nope.png,b\n"))),
         r"nope.png"),
    Case("manifest listing a file twice", lambda t: plan_for(str(manifest(t, "a/0.png,a\nb/1.png,b\na/0.png,a\n"))),
         r"list.csv:3: a/0.png is listed again \(first on line 1\)"),
    Case("manifest path outside its folder", lambda t: plan_for(str(manifest(t, "a/0.png,a\n/etc/hostname,b\n"))),
         r"outside the data folder"),
    # --- configs and the command line
    Case("config with an unknown key", lambda t: cli(t, GOOD_CONFIG + "training:\n  epochz: 3\n"), r"exit 2"),
    Case("config with a wrong type", lambda t: cli(t, GOOD_CONFIG + "training:\n  epochs: many\n"), r"exit 2"),
    Case("config that is not a mapping", lambda t: cli(t, "- data\n- model\n"), r"exit 2"),
    Case("config that is not YAML", lambda t: cli(t, "data: [unclosed\n"), r"exit 2"),
    Case("negative budget", lambda t: plan_for(arrays(), budget=-5), r"budget"),
    Case("zero budget", lambda t: plan_for(arrays(), budget=0), r"budget"),
    Case("budget that is not a duration", lambda t: plan_for(arrays(), budget="soon"), r"budget|duration"),
    Case("budget too short for one step (one step, then a note that says so)", lambda t: too_short(t), None,
         lambda run, t: expect("too short" in " ".join(json.loads((run.dir / "metrics.json").read_text())["notes"]))),
    Case("unknown precision", lambda t: plan_for(arrays(), precision="fp8"), r"precision"),
    Case("unknown model name", lambda t: plan_for(arrays(), model="resnet-9000"), r"model spec|resnet-9000"),
]


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_bad_input(case: Case, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    if case.error is None:
        assert case.check is not None
        case.check(case.run(tmp_path), tmp_path)
        return
    try:
        result = case.run(tmp_path)
    except VisionDojoError as error:
        assert re.search(case.error, str(error)), f"{case.name}: {error}"
        return
    if isinstance(result, int):  # the command line: an exit code and an error line
        assert re.search(case.error, f"exit {result}"), f"{case.name}: exit {result}"
        assert "error:" in capsys.readouterr().err
        return
    pytest.fail(f"{case.name}: no error; got {type(result).__name__}")


def test_the_catalogue_is_at_least_forty_cases() -> None:
    assert len(CASES) >= 40
