"""Bad input fails early with a visiondojo error that says what is wrong, where, and how to fix it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

import visiondojo
from visiondojo import DataError, ModelError, RunExistsError, VisionDojoError

from conftest import write_png


def test_error_hierarchy():
    for error in (DataError, ModelError, RunExistsError, visiondojo.ConfigError):
        assert issubclass(error, VisionDojoError)
    assert issubclass(VisionDojoError, ValueError)


# ---------------------------------------------------------------- empty data

def test_empty_arrays(tiny_net):
    empty = (np.zeros((0, 8, 8), np.float32), np.zeros(0, np.int64))
    with pytest.raises(DataError, match=r"^train_data: the dataset is empty \(0 samples\); pass at least one image"):
        visiondojo.find_params(tiny_net(), empty)
    with pytest.raises(DataError, match=r"^train_data: the dataset is empty"):
        visiondojo.fit(tiny_net(), empty, val_data=empty)  # with validation data too, and through fit


def test_a_single_sample_is_too_few_to_split(tiny_net, problem):
    images, labels = problem(1)
    with pytest.raises(DataError, match=r"^train_data: 1 sample is too few to hold out validation data; .*val_data"):
        visiondojo.find_params(tiny_net(), (images, labels))


def test_empty_validation_data(tiny_net, problem):
    images, labels = problem(40)
    with pytest.raises(DataError, match=r"^val_data: the dataset is empty"):
        visiondojo.find_params(tiny_net(), (images, labels), (images[:0], labels[:0]))


def test_empty_dataset(tiny_net):
    class Empty(Dataset):
        def __len__(self):
            return 0

        def __getitem__(self, index):
            raise IndexError(index)

    with pytest.raises(DataError, match=r"^train_data: the dataset is empty"):
        visiondojo.find_params(tiny_net(), Empty())


def test_empty_image_folder(tmp_path, tiny_net):
    (tmp_path / "data" / "cats").mkdir(parents=True)
    (tmp_path / "data" / "cats" / "notes.txt").write_text("not an image")
    with pytest.raises(DataError, match=r"data: the image folder is empty: no image files found in the class "
                                        r"subfolders .*; put each class's images in .*/<class name>/"):
        visiondojo.find_params(tiny_net(), tmp_path / "data")
    with pytest.raises(DataError, match=r"needs one subfolder per class, found none"):
        visiondojo.find_params(tiny_net(), tmp_path / "data" / "cats")
    (tmp_path / "nothing").mkdir()
    with pytest.raises(DataError, match=r"nothing: the folder is empty; an image folder needs one subfolder"):
        visiondojo.find_params(tiny_net(), tmp_path / "nothing")


def test_empty_manifest(tmp_path, tiny_net):
    (tmp_path / "train.csv").write_text("path,labels\n")
    with pytest.raises(DataError, match=r"train.csv: the manifest is empty: it lists no images"):
        visiondojo.find_params(tiny_net(), tmp_path / "train.csv")


# ---------------------------------------------------------------- labels

def test_label_out_of_range_names_the_users_index(tiny_net, problem):
    images, labels = problem(100)
    labels[17] = 7
    with pytest.raises(DataError) as caught, pytest.warns(UserWarning, match="fewer than 2 samples"):
        visiondojo.find_params(tiny_net(), (images, labels), num_classes=4)
    message = str(caught.value)
    assert message.startswith("train_data: label 7 at index 17 is outside 0..3")
    assert "1 labels out of range" in message and "num_classes" in message


def test_label_out_of_range_in_validation_data(tiny_net, problem):
    images, labels = problem(60)
    bad = labels.copy()
    bad[5] = 4
    with pytest.raises(DataError, match=r"^val_data: label 4 at index 5 is outside 0\.\.3"):
        visiondojo.find_params(tiny_net(), (images, labels), (images, bad))


def test_negative_label_names_the_index(tiny_net, problem):
    images, labels = problem(100)
    labels[17] = -1
    with pytest.raises(DataError, match=r"^train_data labels: label -1 at index 17 is negative"):
        visiondojo.find_params(tiny_net(), (images, labels))


def test_fractional_label(tiny_net, problem):
    images, labels = problem(20)
    labels = labels.astype(np.float32)
    labels[3] = 1.5
    with pytest.raises(DataError, match=r"label 3 is 1\.5; class labels must be whole numbers"):
        visiondojo.find_params(tiny_net(), (images, labels))


@pytest.mark.parametrize("shape", [(40, 1, 1, 1), (40, 2, 2, 2, 2)])
def test_labels_of_wrong_shape(tiny_net, problem, shape):
    images, _ = problem(40)
    with pytest.raises(DataError, match=rf"labels must be shaped \(N,\).*got shape {re_shape(shape)}"):
        visiondojo.find_params(tiny_net(), (images, np.zeros(shape, np.int64)))


def test_three_dimensional_labels_are_masks_and_must_match_the_images(tiny_net, problem):
    images, _ = problem(40)
    with pytest.raises(DataError, match=r"masks are 2x2 but the images \d+x\d+; each mask must have its image's size"):
        visiondojo.find_params(tiny_net(), (images, np.zeros((40, 2, 2), np.int64)))


def re_shape(shape):
    return r"\(" + r", ".join(str(s) for s in shape) + r"\)"


def test_multi_hot_labels_with_other_values(tiny_net, problem):
    images, labels = problem(40, task="multilabel", classes=3)
    labels[9, 1] = 2
    with pytest.raises(DataError, match=r"row 9 of the \(N, K\) labels holds values other than 0 and 1"):
        visiondojo.find_params(tiny_net(outputs=3), (images, labels))


def test_class_index_task_with_multi_hot_labels(tiny_net, problem):
    images, labels = problem(40, task="multilabel", classes=3)
    with pytest.raises(DataError, match=r"task multiclass needs \(N,\) class-index labels, got shape \(36, 3\)"):
        visiondojo.find_params(tiny_net(outputs=3), (images, labels), task="multiclass")


def test_image_and_label_counts_differ(tiny_net, problem):
    images, labels = problem(40)
    with pytest.raises(DataError, match=r"^train_data: 40 images but 39 labels"):
        visiondojo.find_params(tiny_net(), (images, labels[:-1]))


def test_unknown_task(tiny_net, problem):
    with pytest.raises(DataError, match=r"unknown task 'regression'; allowed: binary, multiclass, multilabel"):
        visiondojo.find_params(tiny_net(), problem(40), task="regression")


def test_unusable_data_type(tiny_net):
    with pytest.raises(DataError, match=r"^train_data: cannot use a dict as data"):
        visiondojo.find_params(tiny_net(), {"images": []})


# ---------------------------------------------------------------- images

def test_nan_pixels_name_the_sample(tiny_net, problem):
    images, labels = problem(50)
    images[23, 4, 4] = np.nan
    images[31, 0, 0] = np.inf
    with pytest.raises(DataError, match=r"^train_data: sample 23 has NaN or infinite pixels \(2 samples in all\)"):
        visiondojo.find_params(tiny_net(), (images, labels))


def test_inf_pixels_in_test_data(tiny_net, problem, quick_fit):
    images, labels = problem(50)
    test_images = images.copy()
    test_images[8, 1, 1] = -np.inf
    with pytest.raises(DataError, match=r"^test_data: sample 8 has NaN or infinite pixels"):
        quick_fit(tiny_net(), (images, labels), test_data=(test_images, labels))


def test_mixed_image_sizes_offer_resize(image_folder, tiny_net, quick_fit):
    root = image_folder(30, classes=3, size=9)
    odd = root / "class_b" / "bigger.png"
    write_png(odd, np.full((12, 10), 200, np.uint8))
    with pytest.raises(DataError) as caught:
        visiondojo.find_params(tiny_net(outputs=3), root)
    message = str(caught.value)
    assert "2 different sizes" in message and "9x9" in message and "12x10 (e.g. bigger.png)" in message
    assert "resize=(H, W)" in message
    run = quick_fit(tiny_net(outputs=3), root, resize=(8, 8), epochs=1)
    assert (run.plan.data.height, run.plan.data.width, run.plan.data.resize) == (8, 8, [8, 8])
    assert run.plan.data.train_size + run.plan.data.val_size == 31


def test_validation_images_of_another_size(tiny_net, problem):
    images, labels = problem(40)
    other, _ = problem(40, size=12)
    with pytest.raises(DataError, match=r"^val_data: images are 1x12x12 .* training images are 1x8x8; set resize"):
        visiondojo.find_params(tiny_net(), (images, labels), (other, labels))


def test_unreadable_image_files_are_listed_and_can_be_skipped(image_folder, tiny_net):
    root = image_folder(30, classes=3, size=9)
    broken = [root / "class_a" / "broken.png", root / "class_c" / "empty.jpg"]
    broken[0].write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    broken[1].write_bytes(b"")
    with pytest.raises(DataError) as caught:
        visiondojo.find_params(tiny_net(outputs=3), root)
    message = str(caught.value)
    assert "2 unreadable image file(s)" in message
    assert str(broken[0]) in message and str(broken[1]) in message
    assert "strict: false" in message
    with pytest.warns(UserWarning, match=r"skipped 2 unreadable image file\(s\)"):
        plan = visiondojo.find_params(tiny_net(outputs=3), root, strict=False)
    assert plan.data.train_size + plan.data.val_size == 30


# ---------------------------------------------------------------- models

def test_model_output_size_offers_adapt(tiny_net, problem, quick_fit):
    images, labels = problem(200)
    with pytest.raises(ModelError) as caught:
        visiondojo.find_params(tiny_net(outputs=3), (images, labels))
    message = str(caught.value)
    assert "outputs (2, 3)" in message and "needs (2, 4)" in message and "adapt=True" in message
    with pytest.warns(UserWarning, match=r"adapt: classifier head 4: 3 -> 4 outputs"):
        run = quick_fit(tiny_net(outputs=3), (images, labels), adapt=True)
    assert run.plan.model.adapt is True
    assert run.plan.model.changes == ["classifier head 4: 3 -> 4 outputs"]
    assert "classifier head 4: 3 -> 4 outputs" in run.plan.evidence["model.changes"]
    assert run.model[4].out_features == 4
    assert run.metrics["val"]["acc"] >= 0.9


def test_model_that_fails_on_the_input(problem):
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(100, 4))  # expects 10x10 images
    with pytest.raises(ModelError, match=r"the model fails on 1x8x8 inputs .*adapt.*resize"):
        visiondojo.find_params(model, problem(40))


def test_model_of_the_wrong_type(problem):
    with pytest.raises(ModelError, match="expected an nn.Module or a spec string, got int"):
        visiondojo.find_params(42, problem(40))


# ---------------------------------------------------------------- run folders

def test_existing_run_is_never_overwritten_silently(tmp_path, tiny_net, problem, quick_fit):
    data = problem(80)
    out = tmp_path / "out"
    first = quick_fit(tiny_net(), data, out=out, epochs=1)
    (out / "notes.txt").write_text("my notes")
    weights = (out / "model.safetensors").read_bytes()
    with pytest.raises(RunExistsError, match=r"already holds a run.*overwrite=True"):
        quick_fit(tiny_net(), data, out=out, epochs=1)
    assert (out / "model.safetensors").read_bytes() == weights  # untouched by the refused run

    second = quick_fit(tiny_net(seed=5), data, out=out, epochs=2, overwrite=True)
    assert second.dir == first.dir
    assert (out / "notes.txt").read_text() == "my notes"
    assert (out / "model.safetensors").read_bytes() != weights
    assert len(visiondojo.load(out, model=tiny_net()).history) == 2


def test_non_empty_folder_without_a_run_is_refused(tmp_path, tiny_net, problem, quick_fit):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "data.csv").write_text("x")
    with pytest.raises(RunExistsError, match="is not empty"):
        quick_fit(tiny_net(), problem(40), out=tmp_path / "mine")


def test_resuming_where_no_run_got_going_starts_one(tmp_path, tiny_net, problem, capsys):
    """A preempted job relaunched with resume=True before its run wrote anything starts the run."""
    plan = visiondojo.find_params(tiny_net(), problem(40))
    run = visiondojo.train(tiny_net(), problem(40), plan=plan, out=tmp_path / "nothing", resume=True, progress=True)
    assert "nothing holds no run yet; it starts" in capsys.readouterr().err
    assert (run.dir / "model.safetensors").exists()
    with pytest.raises(visiondojo.ConfigError, match="resume=True needs the run folder: pass out="):
        visiondojo.train(tiny_net(), problem(40), plan=plan, resume=True)


def test_load_of_an_unfinished_run(tmp_path, tiny_net, problem):
    plan = visiondojo.find_params(tiny_net(), problem(40))
    (tmp_path / "run").mkdir()
    plan.save(tmp_path / "run" / "plan.yaml")
    with pytest.raises(VisionDojoError, match="no model.safetensors; the run did not finish"):
        visiondojo.load(tmp_path / "run", model=tiny_net())
