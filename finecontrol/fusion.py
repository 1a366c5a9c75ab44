"""Where the people's branches meet: ControlNet residual composition and the feature composition
before `unet.conv_norm_out` (DESIGN.md 2.3). Pure torch; tensors are laid out (halves * N, ...)
with the N people of one classifier-free-guidance half next to each other."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def residual_split(num_down_residuals: int, unet: torch.nn.Module) -> int:
    """Index of the first ControlNet down residual that stays per person.

    Residuals below it (the higher resolutions: 9 of 12 for SD1.5) are composed over people;
    the lowest-resolution ones, which the first UNet up block consumes, are not.
    """
    return num_down_residuals - len(unet.up_blocks[0].resnets)


def resize_masks(masks: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Masks (N, h, w) resized to a feature grid: bilinear, align_corners=False, no antialias."""
    if tuple(masks.shape[-2:]) == tuple(size):
        return masks
    return F.interpolate(masks[None], size=size, mode="bilinear", align_corners=False, antialias=False)[0]


def masked_sum(features: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Mask-weighted sum over the N people of each half: (G*N, C, h, w) -> (G, C, h, w)."""
    n = masks.shape[0]
    grouped = features.unflatten(0, (-1, n))
    return (grouped * masks[None, :, None].to(features.dtype)).sum(dim=1)


def sum_over_people(features: torch.Tensor, n: int) -> torch.Tensor:
    """Unweighted sum over the N people of each half: (G*N, ...) -> (G, ...)."""
    return features.unflatten(0, (-1, n)).sum(dim=1)


class MaskPyramid:
    """One set of person masks and its resizes to every feature grid, each computed once."""

    def __init__(self, masks: torch.Tensor):
        self.masks = masks
        self._resized: dict[tuple[int, int], torch.Tensor] = {tuple(masks.shape[-2:]): masks}

    def at(self, size: tuple[int, int]) -> torch.Tensor:
        size = tuple(size)
        if size not in self._resized:
            self._resized[size] = resize_masks(self.masks, size)
        return self._resized[size]


def compose_residuals(
    down: list[torch.Tensor], masks: MaskPyramid, split: int
) -> list[torch.Tensor]:
    """Replace each person's residual k < split by the mask-weighted sum over people, broadcast
    back to every person; residuals k >= split stay per person."""
    n = masks.masks.shape[0]
    out = []
    for k, residual in enumerate(down):
        if k < split:
            composed = masked_sum(residual, masks.at(residual.shape[-2:]))
            residual = composed.repeat_interleave(n, dim=0)
        out.append(residual)
    return out


class FeatureComposer:
    """Forward pre-hook on `unet.conv_norm_out`: the (G*N, C, h, w) feature entering it becomes the
    mask-weighted composite of each half, (G, C, h, w), so the UNet returns one eps per half.

    Use as a context manager; set `.masks` (N, h, w) before each UNet call.
    """

    def __init__(self, unet: torch.nn.Module):
        if unet.conv_norm_out is None:
            raise ValueError("this UNet has no conv_norm_out, so the composition point does not exist")
        self.unet = unet
        self.masks: torch.Tensor | None = None
        self._handle = None

    def _hook(self, module: torch.nn.Module, args: tuple) -> tuple:
        return (masked_sum(args[0], self.masks),)

    def __enter__(self) -> "FeatureComposer":
        self._handle = self.unet.conv_norm_out.register_forward_pre_hook(self._hook)
        return self

    def __exit__(self, *exc) -> None:
        self._handle.remove()
