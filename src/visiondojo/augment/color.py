"""Per-sample color ops on float images in [0, 1] units, batched on the images' device.

Each op takes images (N, C, H, W), per-sample magnitudes m (N,) in [0, 1] and a generator, and
draws each sample's strength uniformly inside the range its magnitude allows. Grayscale-aware:
saturation and hue need three channels and leave other images alone; the rest work per channel
or on the luminance. Only ops that need a bounded range (gamma, equalize, posterize) clamp.

Magnitude m -> physical range:

============  ===============================================================
brightness    pixel factor 1 +- 0.5 * m
contrast      factor 1 +- 0.5 * m around the image's mean luminance
saturation    factor 1 +- 0.5 * m around each pixel's luminance (RGB only)
hue           hue rotation of +- 0.25 * m turns (in YIQ space; RGB only)
gamma         exponent 2^(+- m)
autocontrast  blend of up to m towards the min-max stretched image (per channel)
equalize      blend of up to m towards the histogram-equalized image (per channel)
solarize      pixels above 1 - m * u are inverted (u uniform in [0, 1])
posterize     up to round(6 * m) low bits of 8 dropped
sharpness     factor 1 +- 0.9 * m between the smoothed (0) and the original (1) image
blur          Gaussian blur, sigma up to 0.05 * m * the image's shorter side
noise         Gaussian noise, standard deviation up to 0.1 * m
============  ===============================================================
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

from .geometry import signed_uniform

BRIGHTNESS = CONTRAST = SATURATION = 0.5
HUE_TURNS = 0.25
GAMMA_LOG2 = 1.0
POSTERIZE_BITS = 6
SHARPNESS = 0.9
BLUR_SIGMA = 0.05
NOISE_STD = 0.1
_LUMA = (0.299, 0.587, 0.114)

ColorOp = Callable[[torch.Tensor, torch.Tensor, torch.Generator], torch.Tensor]


def _per_sample(values: torch.Tensor) -> torch.Tensor:
    return values.view(-1, 1, 1, 1)


def _strength(m: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Per-sample strength uniform in [0, m]."""
    return torch.rand(m.shape, generator=generator, device=m.device) * m


def _luma(channels: torch.Tensor) -> torch.Tensor:
    """Weighted sum over dim 1 (R, G, B) with Python-scalar weights: no host tensor, no GPU sync."""
    r, g, b = _LUMA
    return channels[:, 0:1] * r + channels[:, 1:2] * g + channels[:, 2:3] * b


def luminance(images: torch.Tensor) -> torch.Tensor:
    """(N, 1, H, W): the luma of RGB images, the channel mean for other channel counts."""
    return _luma(images) if images.shape[1] == 3 else images.mean(dim=1, keepdim=True)


def mean_luminance(images: torch.Tensor) -> torch.Tensor:
    """(N, 1, 1, 1) mean luma, from the per-channel means (no full-size luma image)."""
    means = images.mean(dim=(2, 3))
    return (_luma(means) if images.shape[1] == 3 else means.mean(dim=1, keepdim=True)).view(-1, 1, 1, 1)


def _blend(base: torch.Tensor, images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """base + factor * (images - base): factor 0 gives base, 1 the images, above 1 extrapolates."""
    return base + _per_sample(factor) * (images - base)




LINEAR_OPS = {"brightness": BRIGHTNESS, "contrast": CONTRAST}
"""Ops affine in the pixels per sample (f x, and f x + (1 - f) mean): a run of them is applied
as one multiply-add, its parameters composed on (N,) tensors instead of full images."""


def linear_color(images: torch.Tensor, steps: list[tuple[str, torch.Tensor]], generator: torch.Generator) -> torch.Tensor:
    """Apply consecutive brightness/contrast ``steps`` [(name, magnitudes)] as ONE x * scale + shift.

    Brightness is x -> f x; contrast is x -> f x + (1 - f) mean, with mean the image's mean luma.
    Both are affine in x, so the run composes into one scale and shift per sample; the mean of
    the partly transformed image follows from the original's (brightness scales it, contrast
    keeps it), so no intermediate image is made. A sample with every magnitude 0 gets scale 1 and
    shift 0, exactly itself.
    """
    mean = mean_luminance(images)
    scale = torch.ones_like(mean)
    shift = torch.zeros_like(mean)
    for name, m in steps:
        factor = _per_sample(1 + signed_uniform(m, generator) * LINEAR_OPS[name])
        if name == "brightness":
            mean = mean * factor
            shift = shift * factor
        else:
            shift = shift * factor + (1 - factor) * mean
        scale = scale * factor
    return torch.addcmul(shift, images, scale)


def brightness(images: torch.Tensor, m: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """x -> f x, f uniform in 1 +- 0.5 m."""
    return linear_color(images, [("brightness", m)], generator)


def contrast(images: torch.Tensor, m: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """x -> f x + (1 - f) mean luma, f uniform in 1 +- 0.5 m."""
    return linear_color(images, [("contrast", m)], generator)


def saturation(images: torch.Tensor, m: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    factor = 1 + signed_uniform(m, generator) * SATURATION
    if images.shape[1] != 3:
        return images
    return _blend(luminance(images), images, factor)


def _hue_basis() -> tuple[list[list[float]], ...]:
    """Constant 3x3 matrices A, B, C with T^-1 R(theta) T = A + cos(theta) B + sin(theta) C, for T
    the RGB -> YIQ transform and R(theta) the rotation of the (I, Q) plane; computed once, so a
    batch needs no matrix inverse and no host tensor."""
    to_yiq = torch.tensor([[0.299, 0.587, 0.114], [0.5959, -0.2746, -0.3213], [0.2115, -0.5227, 0.3112]],
                          dtype=torch.float64)
    back = torch.linalg.inv(to_yiq)
    parts = (torch.diag(torch.tensor([1.0, 0, 0], dtype=torch.float64)),
             torch.diag(torch.tensor([0.0, 1, 1], dtype=torch.float64)),
             torch.tensor([[0.0, 0, 0], [0, 0, -1], [0, 1, 0]], dtype=torch.float64))
    return tuple((back @ part @ to_yiq).tolist() for part in parts)


_HUE_A, _HUE_B, _HUE_C = _hue_basis()


def hue(images: torch.Tensor, m: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Rotate the chroma (I, Q) plane of YIQ: one 3x3 matrix per sample, luma kept."""
    angle = signed_uniform(m, generator).float() * (HUE_TURNS * 2 * math.pi)
    if images.shape[1] != 3:
        return images
    cos, sin = angle.cos(), angle.sin()
    entries = [_HUE_A[i][j] + cos * _HUE_B[i][j] + sin * _HUE_C[i][j] for i in range(3) for j in range(3)]
    matrix = torch.stack(entries, dim=1).view(-1, 3, 3).to(images.dtype)
    return torch.einsum("nij,njhw->nihw", matrix, images)


def gamma(images: torch.Tensor, m: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    exponent = torch.exp2(signed_uniform(m, generator) * GAMMA_LOG2)
    return images.clamp_min(0) ** _per_sample(exponent)


def autocontrast(images: torch.Tensor, m: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    low = images.amin(dim=(2, 3), keepdim=True)
    high = images.amax(dim=(2, 3), keepdim=True)
    span = high - low
    stretched = torch.where(span > 0, (images - low) / span.clamp_min(1e-12), images)
    return _blend(images, stretched, _strength(m, generator))


def equalize(images: torch.Tensor, m: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Histogram equalization per image and channel on 256 levels, all histograms in one scatter."""
    n, c, h, w = images.shape
    levels = (images.clamp(0, 1) * 255).round().long().view(n * c, h * w)
    hist = torch.zeros(n * c, 256, device=images.device, dtype=torch.float32)
    hist.scatter_add_(1, levels, torch.ones_like(levels, dtype=torch.float32))
    cdf = hist.cumsum(dim=1)
    first = cdf.gather(1, levels.amin(dim=1, keepdim=True))  # count at the darkest level present
    lut = ((cdf - first) / (h * w - first).clamp_min(1)).clamp(0, 1)
    equalized = lut.gather(1, levels).view(n, c, h, w).to(images.dtype)
    single_level = (first == h * w).view(n, c, 1, 1)  # nothing to spread: keep the channel
    equalized = torch.where(single_level, images, equalized)
    return _blend(images, equalized, _strength(m, generator))


def solarize(images: torch.Tensor, m: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    threshold = _per_sample(1 - _strength(m, generator))
    return torch.where(images > threshold, 1 - images, images)


def posterize(images: torch.Tensor, m: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    dropped = torch.round(_strength(m, generator) * POSTERIZE_BITS)
    step = _per_sample(torch.exp2(dropped))
    levels = torch.floor(images.clamp(0, 1) * 255 / step) * step / 255
    return torch.where(_per_sample(dropped) > 0, levels, images)


def _depthwise(images: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Same 2-D kernel on every channel, borders replicated."""
    c = images.shape[1]
    k = kernel.shape[-1] // 2
    padded = F.pad(images, (k, k, k, k), mode="replicate")
    return F.conv2d(padded, kernel.expand(c, 1, *kernel.shape[-2:]).to(images.dtype), groups=c)


def sharpness(images: torch.Tensor, m: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """PIL's ImageEnhance.Sharpness: blend with a 3x3 smoothed image (centre weight 5 of 13)."""
    kernel = torch.ones(1, 1, 3, 3, device=images.device, dtype=images.dtype)
    kernel[..., 1, 1] = 5.0
    kernel = kernel / 13
    smooth = _depthwise(images, kernel)
    return _blend(smooth, images, 1 + signed_uniform(m, generator) * SHARPNESS)


def blur(images: torch.Tensor, m: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Separable Gaussian blur with a different sigma per sample: one grouped conv per axis."""
    n, c, h, w = images.shape
    sigma_max = BLUR_SIGMA * min(h, w)
    sigma = _strength(m, generator) * sigma_max
    radius = max(1, math.ceil(3 * sigma_max))
    x = torch.arange(-radius, radius + 1, device=images.device, dtype=torch.float32)
    # sigma 0 -> exp(-x^2 / tiny): exactly the delta kernel, so the sample is unchanged (float32: no underflow).
    kernel = torch.exp(-(x[None] ** 2) / (2 * sigma[:, None].float().clamp_min(1e-6) ** 2))
    kernel = (kernel / kernel.sum(dim=1, keepdim=True)).repeat_interleave(c, dim=0).to(images.dtype)  # (N*C, K)
    flat = images.reshape(1, n * c, h, w)
    flat = F.pad(flat, (radius, radius, radius, radius), mode="replicate")
    flat = F.conv2d(flat, kernel.view(n * c, 1, 1, -1), groups=n * c)
    flat = F.conv2d(flat, kernel.view(n * c, 1, -1, 1), groups=n * c)
    return flat.view(n, c, h, w)


def noise(images: torch.Tensor, m: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    std = _per_sample(_strength(m, generator) * NOISE_STD)
    return images + std * torch.randn(images.shape, generator=generator, device=images.device, dtype=images.dtype)


COLOR_OPS: dict[str, ColorOp] = {
    "brightness": brightness, "contrast": contrast, "saturation": saturation, "hue": hue, "gamma": gamma,
    "autocontrast": autocontrast, "equalize": equalize, "solarize": solarize, "posterize": posterize,
    "sharpness": sharpness, "blur": blur, "noise": noise,
}
