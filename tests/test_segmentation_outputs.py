"""What a segmentation run hands back: the report's per-class IoU table, ``visiondojo evaluate``'s
text table, and ``visiondojo predict``'s index and colour-overlay PNGs (never overwriting a file)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import visiondojo
from test_segmentation import TINY, blob_scenes
from visiondojo import api
from visiondojo.cli import _write_masks, main
from visiondojo.errors import ConfigError
from visiondojo.report.html import ReportData, render
from visiondojo.tasks import Masks, SegmentationTask

NAMES = ["background", "bright", "grey"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A few epochs on small blob scenes, with val and test splits: quick, and good enough to see classes."""
    train, val, test = blob_scenes(96, size=16), blob_scenes(24, size=16, seed=1), blob_scenes(24, size=16, seed=2)
    return visiondojo.fit("small-unet", train, val, test, out=tmp_path_factory.mktemp("seg") / "run", epochs=3,
                          batch_size=32, lr=3e-3, class_names=NAMES, pin={"regularization.augment": []},
                          model_kwargs=TINY, progress=False)


def test_the_report_has_a_per_class_iou_table_and_the_miou_curve(run):
    report = (run.dir / "report.html").read_text()
    assert "Per-class IoU" in report and "sorted by test IoU, weakest first" in report
    table = report.split("Per-class IoU", 1)[1].split("</table>", 1)[0]
    assert "<th>IoU (val)</th><th>IoU (test)</th><th>train pixels</th>" in table
    rows = re.findall(r"<tr><td>(\w+)</td><td>(\d+)</td><td>([\d.]+)</td><td>([\d.]+)</td><td>([\d.]+)%</td></tr>",
                      table)
    assert sorted(name for name, *_ in rows) == sorted(NAMES)
    tests = [float(r[3]) for r in rows]
    assert tests == sorted(tests)  # weakest first
    assert {name: int(index) for name, index, *_ in rows} == {name: i for i, name in enumerate(NAMES)}
    for split, column in (("val", 2), ("test", 3)):
        ious = run.metrics[split]["iou_per_class"]
        assert {r[0]: float(r[column]) for r in rows} == {n: pytest.approx(ious[i], abs=1e-4)
                                                          for i, n in enumerate(NAMES)}
    counts = run.plan.data.class_counts
    shares = {r[0]: float(r[4]) for r in rows}
    assert shares == {n: pytest.approx(100 * counts[i] / sum(counts), rel=1e-2) for i, n in enumerate(NAMES)}
    # The monitored metric's history is what the learning curves plot on their right axis.
    assert all(isinstance(row.get("val_miou"), float) for row in run.history)
    assert "Learning curves" in report


def test_a_class_absent_from_the_shown_split_reads_absent_and_sorts_last(run):
    data = ReportData(plan=run.plan, history=[], confusion_split="test",
                      metrics={"val": {"miou": 0.5, "iou_per_class": [0.9, 0.2, 0.4]},
                               "test": {"miou": 0.6, "iou_per_class": [0.8, 0.4, 0.0]}},
                      confusion=np.array([[5, 1, 0], [1, 3, 0], [0, 0, 0]]))
    table = render(data).split("Per-class IoU", 1)[1].split("</table>", 1)[0]
    names = re.findall(r"<tr><td>(\w+)</td>", table)
    assert names == ["bright", "background", "grey"]
    assert "<td>grey</td><td>2</td><td>0.4000</td><td>absent</td>" in table


def test_evaluate_prints_miou_pixel_accuracy_and_a_class_table(run, monkeypatch, capsys):
    # The CLI reads segmentation data only from built-in scenes; hand it arrays instead.
    real = api.evaluate
    monkeypatch.setattr(api, "evaluate", lambda loaded, data, **options: real(loaded, blob_scenes(24, size=16, seed=2)))
    assert main(["evaluate", str(run.dir), "--data", "unused"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    test = run.metrics["test"]
    assert lines[0].startswith(f"mIoU {test['miou']:.4f}   pixel accuracy {test['pixel_acc']:.4f}")
    assert lines[1].split() == ["class", "index", "IoU"]
    rows = [line.split() for line in lines[2:5]]
    assert sorted(r[0] for r in rows) == sorted(NAMES)
    assert [float(r[2]) for r in rows] == sorted(float(r[2]) for r in rows)  # weakest first
    for name, index, iou in rows:
        assert NAMES[int(index)] == name and float(iou) == pytest.approx(test["iou_per_class"][int(index)], abs=1e-4)


def _scene_files(folder: Path, count: int, size: int = 16) -> tuple[list[str], torch.Tensor]:
    images, masks = blob_scenes(count, size=size, seed=9)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, image in enumerate(images):
        path = folder / f"scene{i}.png"
        Image.fromarray(image[0].numpy()).save(path)
        paths.append(str(path))
    return paths, masks


def test_predict_writes_an_index_and_an_overlay_png_and_never_overwrites(run, tmp_path, capsys):
    paths, _ = _scene_files(tmp_path / "images", 2)
    out = tmp_path / "masks"
    assert main(["predict", str(run.dir), *paths, "--out", str(out)]) == 0
    assert "wrote 2 masks" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["scene0.png", "scene0_overlay.png", "scene1.png",
                                                     "scene1_overlay.png"]
    index = Image.open(out / "scene0.png")
    overlay = Image.open(out / "scene0_overlay.png")
    assert index.mode == "P" and overlay.mode == "RGB" and overlay.size == Image.open(paths[0]).size
    # Background pixels keep the image's grey; labelled ones take half their class's VOC colour.
    labels = torch.as_tensor(np.array(index))
    image = torch.as_tensor(np.array(Image.open(paths[0]))).float()
    expected = SegmentationTask.overlay(image.expand(3, -1, -1) / 255, labels.long())
    assert torch.allclose(torch.as_tensor(np.array(overlay)).permute(2, 0, 1).float(), expected * 255, atol=1)

    # A second call refuses, whichever of the two files is in the way, and writes nothing.
    (out / "scene0.png").unlink()
    (out / "scene1.png").unlink()
    before = (out / "scene0_overlay.png").read_bytes()
    assert main(["predict", str(run.dir), *paths, "--out", str(out)]) == 2
    assert "scene0_overlay.png exists; visiondojo does not overwrite" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["scene0_overlay.png", "scene1_overlay.png"]
    assert (out / "scene0_overlay.png").read_bytes() == before


def test_overlays_are_drawn_at_each_images_own_size(tmp_path, capsys):
    """Masks as a list of per-image (H, W) tensors of different sizes, or at another size than the
    image (the trained size): each overlay has its image's size."""
    folder = tmp_path / "images"
    folder.mkdir()
    sizes = [(20, 12), (9, 14)]  # (width, height)
    paths = []
    for i, (w, h) in enumerate(sizes):
        Image.fromarray(np.full((h, w, 3), 200, dtype=np.uint8)).save(folder / f"photo{i}.png")
        paths.append(folder / f"photo{i}.png")
    ones = [torch.ones(h, w, dtype=torch.long) for w, h in sizes]
    found = Masks(ones, [m.float() for m in ones], NAMES)
    assert _write_masks(found, paths, str(tmp_path / "listed")) == 0
    smaller = Masks(torch.ones(2, 4, 4, dtype=torch.long), torch.ones(2, 4, 4), NAMES)
    assert _write_masks(smaller, paths, str(tmp_path / "stacked")) == 0
    for out in ("listed", "stacked"):
        for i, size in enumerate(sizes):
            overlay = Image.open(tmp_path / out / f"photo{i}_overlay.png")
            assert overlay.size == size
            assert np.array(overlay)[0, 0].tolist() == [164, 100, 100]  # half grey 200, half VOC class 1 (128, 0, 0)
    capsys.readouterr()


def test_an_image_named_like_anothers_overlay_is_refused(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    paths = [folder / "a.png", folder / "a_overlay.png"]
    for path in paths:
        Image.fromarray(np.zeros((4, 4), dtype=np.uint8)).save(path)
    found = Masks(torch.zeros(2, 4, 4, dtype=torch.long), torch.ones(2, 4, 4), NAMES)
    with pytest.raises(ConfigError, match="share a file name"):
        _write_masks(found, paths, str(tmp_path / "out"))
    assert not any((tmp_path / "out").iterdir())
