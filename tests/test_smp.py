"""segmentation-models-pytorch models by name (the ``smp`` extra): built offline for the data's
classes and channels, trained through ``fit``, and clear errors for what cannot be built."""

from __future__ import annotations

import pytest
import torch

import visiondojo
from visiondojo.errors import ModelError
from visiondojo.models import build_for
from visiondojo.plan import DataParams

pytest.importorskip("segmentation_models_pytorch")

DATA = DataParams(task="segmentation", num_classes=3, channels=1, height=32, width=32)


def test_smp_architectures_build_offline_for_the_masks():
    for spec in ("smp:Unet", "smp:FPN", "smp:DeepLabV3Plus"):
        model = build_for(spec, DATA, {"encoder_name": "resnet18"}).eval()
        with torch.no_grad():
            out = model(torch.randn(2, 1, 32, 32))
        assert out.shape == (2, 3, 32, 32), spec


def test_smp_refuses_unknown_architectures_and_downloads():
    with pytest.raises(ModelError, match="no architecture 'Nope'; choose one of .*unet"):
        build_for("smp:Nope", DATA)
    with pytest.raises(ModelError, match="would download weights"):
        build_for("smp:Unet", DATA, {"encoder_weights": "imagenet"})


def test_an_smp_unet_trains_through_fit(tmp_path):
    g = torch.Generator().manual_seed(0)
    images = (torch.rand(64, 1, 32, 32, generator=g) * 40).to(torch.uint8)
    masks = torch.zeros(64, 32, 32, dtype=torch.long)
    masks[:, 8:24, 8:24] = torch.arange(64).remainder(2).add(1).view(-1, 1, 1)
    images[:, 0][masks > 0] = 200
    run = visiondojo.fit("smp:Unet", (images, masks), out=tmp_path / "run", epochs=1, batch_size=16, lr=1e-3,
                         model_kwargs={"encoder_name": "resnet18", "encoder_depth": 3,
                                       "decoder_channels": (32, 16, 8)},
                         pin={"regularization.augment": []}, progress=False)
    assert run.plan.data.task == "segmentation" and "miou" in run.metrics["val"]
    assert run.predict(images[:2]).labels.shape == (2, 32, 32)
