"""Property: whatever arrays a user passes, visiondojo either plans for them or raises its own error
(``VisionDojoError``: what, where, how to fix), never a bare IndexError or RuntimeError from inside
torch. Shapes, layouts, dtypes, value ranges and labels are drawn at random (derandomized: the
same examples every run)."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import visiondojo
from visiondojo.errors import VisionDojoError
from visiondojo.plan import RegularizationParams

PINS = {"optimization.epochs": 1, "optimization.batch_size": 4, "optimization.lr": 0.01}
IMAGE_DTYPES = [np.uint8, np.int16, np.int32, np.float16, np.float32, np.float64, np.bool_]
LABEL_DTYPES = [np.int64, np.int32, np.uint8, np.float32, np.bool_]


@st.composite
def user_arrays(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray]:
    n = draw(st.integers(0, 24))
    height, width = draw(st.integers(1, 12)), draw(st.integers(1, 12))
    channels = draw(st.sampled_from([None, 1, 2, 3, 4]))
    layout = draw(st.sampled_from(["NHW", "NHWC", "NCHW"]))
    shape = (n, height, width) if channels is None or layout == "NHW" else (
        (n, height, width, channels) if layout == "NHWC" else (n, channels, height, width))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    dtype = draw(st.sampled_from(IMAGE_DTYPES))
    scale = draw(st.sampled_from([1.0, 255.0, 65535.0, 1e6]))
    images = (rng.random(shape) * scale).astype(dtype)
    if draw(st.booleans()) and images.size and np.issubdtype(dtype, np.floating):
        images.flat[draw(st.integers(0, images.size - 1))] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
    label_n = n if draw(st.integers(0, 9)) else max(n + draw(st.integers(-3, 3)), 0)
    kind = draw(st.sampled_from(["index", "multi-hot", "column"]))
    classes = draw(st.integers(1, 5))
    low = draw(st.sampled_from([0, 0, 0, -1]))
    if kind == "index":
        labels = rng.integers(low, classes, label_n)
    elif kind == "column":
        labels = rng.integers(low, classes, (label_n, 1))
    else:
        labels = rng.integers(low, 2, (label_n, classes))
    return images, labels.astype(draw(st.sampled_from(LABEL_DTYPES)))


@settings(max_examples=100, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(data=user_arrays())
def test_any_arrays_plan_or_raise_a_visiondojo_error(data: tuple[np.ndarray, np.ndarray]) -> None:
    try:
        visiondojo.find_params("fmnist-resnet", data, pin=PINS, regularization=RegularizationParams(),
                               model_kwargs={"width": 4})
    except VisionDojoError:
        pass
