"""A run folder or config from someone else never runs code unless the user opts in."""

from __future__ import annotations

import sys
import textwrap

import pytest

import visiondojo
from visiondojo.cli import main
from visiondojo.errors import ModelError
from visiondojo.models import imports_code

from conftest import FAST, make_problem

PAYLOAD = textwrap.dedent("""
    import pathlib
    from torch import nn

    def build(**kwargs):
        pathlib.Path("ran.txt").write_text("the factory ran")
        return nn.Sequential(nn.Flatten(), nn.Linear(64, 4))
""")


@pytest.fixture()
def foreign_run(tmp_path, monkeypatch):
    """A finished run whose plan names a module factory (as a stranger's run folder would)."""
    (tmp_path / "vd_payload.py").write_text(PAYLOAD)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    run = visiondojo.fit("vd_payload:build", make_problem(96, seed=1), out=tmp_path / "run", **FAST)
    (tmp_path / "ran.txt").unlink()  # fit from Python is the user's own choice: it ran
    sys.modules.pop("vd_payload", None)
    return run


def test_which_specs_import_code() -> None:
    assert imports_code("mypkg.models:build") and imports_code("os:system")
    assert not any(imports_code(s) for s in ("fmnist-resnet", "torchvision:resnet18", "timm:resnet18",
                                             "smp:Unet", "python:conftest.TinyNet"))


def test_loading_a_run_folder_does_not_import_the_model_it_names(foreign_run, tmp_path) -> None:
    with pytest.raises(ModelError, match=r"plan.yaml: the model is 'vd_payload:build', code that building it would "
                                         r"import and run.*trust_code=True \(CLI: --trust-code\)"):
        visiondojo.load(foreign_run.dir)
    with pytest.raises(ModelError, match="trust_code=True"):
        visiondojo.evaluate(foreign_run.dir, make_problem(32, seed=2))
    with pytest.raises(ModelError, match="trust_code=True"):
        visiondojo.train(None, make_problem(96, seed=1), plan=foreign_run.dir / "plan.yaml", out=tmp_path / "replay")
    assert main(["evaluate", str(foreign_run.dir), "--data", "digits"]) == 2
    assert not (tmp_path / "ran.txt").exists() and "vd_payload" not in sys.modules
    loaded = visiondojo.load(foreign_run.dir, trust_code=True)  # the user opted in
    assert (tmp_path / "ran.txt").exists() and loaded.plan.model.spec == "vd_payload:build"


def test_a_config_naming_a_module_factory_needs_trust_code(tmp_path, monkeypatch, capsys) -> None:
    (tmp_path / "vd_payload.py").write_text(PAYLOAD)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cfg.yaml").write_text("data:\n  train: digits\nmodel:\n  spec: vd_payload:build\n"
                                       "training:\n  epochs: 1\n  batch_size: 64\n  lr: 0.01\n")
    assert main(["train", "cfg.yaml", "--out", "run", "--quiet"]) == 2
    assert "--trust-code" in capsys.readouterr().err and not (tmp_path / "ran.txt").exists()


def test_listed_paths_outside_the_data_folder_are_reported(tmp_path) -> None:
    from PIL import Image

    from visiondojo.errors import DataError

    data, outside = tmp_path / "data", tmp_path / "elsewhere"
    for folder in (data, outside):
        folder.mkdir()
        for i in range(4):
            Image.new("L", (8, 8), 40 * i).save(folder / f"{i}.png")
    rows = [f"{i}.png,{'ab'[i % 2]}" for i in range(4)] + ["../elsewhere/0.png,a", f"{outside / '1.png'},b"]
    (data / "list.csv").write_text("path,labels\n" + "\n".join(rows) + "\n")
    with pytest.raises(DataError, match=r"list.csv:6: .*elsewhere/0.png is outside the data folder .*strict: false"):
        visiondojo.find_params("fmnist-resnet", str(data / "list.csv"))
    with pytest.warns(UserWarning, match="outside the data folder .*kept: strict is false"):
        from visiondojo.data.files import scan_manifest

        files = scan_manifest(data / "list.csv", resize=None, strict=False)
    assert len(files.paths) == 6
    coco = {"images": [{"id": 1, "file_name": "../elsewhere/2.png"}], "categories": [{"id": 1, "name": "x"}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 3, 3]}]}
    import json

    (data / "boxes.json").write_text(json.dumps(coco))
    from visiondojo.data.formats import read_detection_files

    with pytest.raises(DataError, match=r"boxes.json, image 1 \(../elsewhere/2.png\): .* is outside the data folder"):
        read_detection_files(data / "boxes.json")
