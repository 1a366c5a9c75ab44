"""Cheap live previews: latents -> RGB by a linear map fitted to the model's own VAE.

A full VAE decode per preview is costly on big models (SD1.5's decoder runs at full resolution,
and the page only needs the picture's form while it is being made). Instead,
`fit_previewer(pipe)` fits, once per model, a linear map from each latent cell and its 8
neighbours to the cell's mean colour, by least squares against the model's own VAE: latents
from encoding random colour fields and random strokes (the latents real images have) and
random Gaussian latents at the spreads of early denoising estimates, each decoded by the VAE.
The map is whatever the VAE does; `agreement` says how closely. On the shipped toy model, the
previews of denoising estimates (steps 4, 12 and 20 of its four presets) correlate 0.84 on
average with the real decodes (0.74 at worst); the best map of this form fitted on those very
estimates scores 0.83. It costs about 0.05 ms against 7 ms for the toy VAE's decode (1 thread).
"""

from __future__ import annotations

import copy
import weakref
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

KERNEL = 3  # each cell's colour is read from the KERNEL x KERNEL cells around it
FIT_CELLS = 16  # latent cells per side of each fitting sample
FIT_SAMPLES = 8  # samples of each kind: colour fields, strokes, and Gaussian latents at each spread
FIT_SPREADS = (2.0, 3.0)  # standard deviations of the Gaussian samples (scaled latents)


@dataclass(frozen=True)
class LatentPreviewer:
    """A linear map from latent neighbourhoods to colours (0..1), as a convolution."""

    weight: torch.Tensor  # (3, channels, KERNEL, KERNEL), float32 on the CPU
    bias: torch.Tensor  # (3,)

    def rgb(self, latents: torch.Tensor) -> np.ndarray:
        """(1, C, h, w) scaled latents (as the pipeline holds them) -> (h, w, 3) uint8, one pixel per cell."""
        cells = latents.detach().to("cpu", torch.float32)
        colour = F.conv2d(cells, self.weight, self.bias, padding=self.weight.shape[-1] // 2)[0].clamp(0, 1)
        return (colour * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()

    def __call__(self, latents: torch.Tensor) -> Image.Image:
        """The preview, one pixel per latent cell (the page scales it to the result's box)."""
        return Image.fromarray(self.rgb(latents))


def colour_fields(count: int, size: int, seed: int = 0) -> torch.Tensor:
    """`count` smooth random colour images (count, 3, size, size) in -1..1, the VAE's range."""
    generator = torch.Generator("cpu").manual_seed(seed)
    corners = torch.rand(count, 3, 4, 4, generator=generator)
    return F.interpolate(corners, size=(size, size), mode="bilinear", align_corners=True) * 2 - 1


def strokes(count: int, size: int, seed: int = 0) -> torch.Tensor:
    """`count` images of random lines and ellipses on random flat backgrounds, in -1..1."""
    rng = np.random.default_rng(seed)

    def colour() -> tuple[int, ...]:
        return tuple(int(v) for v in rng.integers(0, 256, 3))

    images = []
    for _ in range(count):
        image = Image.new("RGB", (size, size), colour())
        draw = ImageDraw.Draw(image)
        for _ in range(int(rng.integers(3, 12))):
            (x0, x1), (y0, y1) = np.sort(rng.integers(0, size, (2, 2)), axis=1)
            if rng.random() < 0.5:
                draw.line([(x0, y0), (x1, y1)], fill=colour(), width=int(rng.integers(1, 4)))
            else:
                draw.ellipse([x0, y0, x1, y1], fill=colour())
        images.append(np.asarray(image))
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 127.5 - 1


@torch.no_grad()
def fit_previewer(pipe, seed: int = 0) -> LatentPreviewer:
    """Fit the latent -> RGB map of `pipe` (a FineControlPipeline) against its own VAE decodes
    (in float32 when the VAE asks to be upcast, as SD1.5's overflows in float16)."""
    vae, scale, config = pipe.vae, pipe.vae_scale, pipe.vae.config
    if vae.dtype != torch.float32 and getattr(config, "force_upcast", False):
        vae = copy.deepcopy(vae).float()
    shift = config.shift_factor or 0.0
    size = FIT_CELLS * scale
    images = torch.cat([colour_fields(FIT_SAMPLES, size, seed), strokes(FIT_SAMPLES, size, seed)])
    encoded = vae.encode(images.to(vae.device, vae.dtype)).latent_dist.mean.float()
    generator = torch.Generator("cpu").manual_seed(seed)
    shape = (FIT_SAMPLES, encoded.shape[1], FIT_CELLS, FIT_CELLS)
    gaussian = [torch.randn(shape, generator=generator) * spread for spread in FIT_SPREADS]
    latents = torch.cat([(encoded.cpu() - shift) * config.scaling_factor, *gaussian])  # the pipeline's scaling
    decoded = vae.decode((latents / config.scaling_factor + shift).to(vae.device, vae.dtype)).sample.float().cpu()
    target = F.avg_pool2d((decoded / 2 + 0.5).clamp(0, 1), scale)  # each cell's mean colour
    columns = F.unfold(latents, KERNEL, padding=KERNEL // 2)  # (N, C * KERNEL^2, cells)
    x = columns.permute(0, 2, 1).reshape(-1, columns.shape[1]).double()
    y = target.permute(0, 2, 3, 1).reshape(-1, 3).double()
    solution = torch.linalg.lstsq(torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], dim=1), y).solution.float()
    weight = solution[:-1].T.reshape(3, latents.shape[1], KERNEL, KERNEL).contiguous()
    return LatentPreviewer(weight=weight, bias=solution[-1].contiguous())


_FITTED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def previewer_for(pipe) -> LatentPreviewer:
    """`fit_previewer(pipe)`, fitted once per VAE."""
    if pipe.vae not in _FITTED:
        _FITTED[pipe.vae] = fit_previewer(pipe)
    return _FITTED[pipe.vae]


def agreement(preview: np.ndarray, decoded: np.ndarray) -> float:
    """Pearson correlation of two RGB images' pixel values (same shape): 1 is a perfect preview."""
    a, b = preview.astype(np.float64).ravel(), decoded.astype(np.float64).ravel()
    a, b = a - a.mean(), b - b.mean()
    return float((a @ b) / max(np.sqrt((a @ a) * (b @ b)), 1e-12))


def cell_means(image: Image.Image, scale: int) -> np.ndarray:
    """A decoded image averaged over each latent cell's pixels: what a preview pixel stands for."""
    return np.asarray(image.resize((image.width // scale, image.height // scale), Image.Resampling.BOX))
