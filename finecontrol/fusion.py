"""Where the people's branches meet: ControlNet residual composition, the feature composition
before `unet.conv_norm_out` (docs/method.md, "One denoising step") and, for the every-layer
variant, after each transformer block of the UNet. Pure torch; tensors are laid out
(halves * N, ...) with the N people of one classifier-free-guidance half next to each other."""

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


def shared_composite(features: torch.Tensor, masks: MaskPyramid) -> torch.Tensor:
    """The mask-weighted sum over the people of each half, given back to every person:
    (G*N, C, h, w) -> (G*N, C, h, w), the masks resized to the features' grid."""
    n = masks.masks.shape[0]
    return masked_sum(features, masks.at(features.shape[-2:])).repeat_interleave(n, dim=0)


def compose_residuals(down: list[torch.Tensor], masks: MaskPyramid, split: int) -> list[torch.Tensor]:
    """Replace each person's residual k < split by the mask-weighted sum over people, broadcast
    back to every person; residuals k >= split stay per person."""
    return [shared_composite(residual, masks) if k < split else residual for k, residual in enumerate(down)]


class _SliceComposed(Exception):
    """Raised by the composition hook to end a UNet call once its slice's share is added up."""


class FeatureComposer:
    """Hooks that merge the people's branches inside the UNet; a context manager.

    Always: a forward pre-hook on `unet.conv_norm_out` replaces the (G*N, C, h, w) feature entering
    it by the mask-weighted composite of each half, (G, C, h, w), so the UNet returns one eps per
    half (the paper's h-control; composing eps instead is a different method, since GroupNorm and
    the 3x3 `conv_out` mix features across mask edges).

    With `every_layer=True` (the paper's Figure 4, the original code's h-all) also a forward hook
    on every transformer block of the UNet (down, mid and up): its output, after the person's own
    cross-attention, becomes the mask-weighted composite broadcast back to every person, so the
    branches share one feature map after each layer and differ only in what their own prompt
    (and, at low resolution, their own ControlNet residuals) adds to it.

    Set `.masks` (a MaskPyramid of (N, h, w) masks) before each UNet call. When the batch is too
    big for one call, `compose_in_chunks` runs the UNet over slices of it and composes the same
    feature by adding up each slice's share (the masked sum is linear; GroupNorm, which is not,
    runs once on the total).
    """

    def __init__(self, unet: torch.nn.Module, every_layer: bool = False):
        if unet.conv_norm_out is None:
            raise ValueError("this UNet has no conv_norm_out, so the composition point does not exist")
        self.unet = unet
        self.layers = transformer_blocks(unet) if every_layer else []
        self.masks: MaskPyramid | None = None
        self._handles: list = []
        # While composing in chunks: the number of halves, the composed feature summed so far and
        # the batch index where the running slice starts.
        self._halves: int | None = None
        self._total: torch.Tensor | None = None
        self._start = 0

    def _compose_output(self, module: torch.nn.Module, args: tuple, output):
        sample = output[0] if isinstance(output, tuple) else output.sample
        composed = shared_composite(sample, self.masks)
        if isinstance(output, tuple):
            return (composed, *output[1:])
        output.sample = composed
        return output

    def _compose_final(self, module: torch.nn.Module, args: tuple) -> tuple:
        if self._halves is None:
            return (masked_sum(args[0], self.masks.masks),)
        features, n = args[0], self.masks.masks.shape[0]
        if self._total is None:
            self._total = features.new_zeros((self._halves, *features.shape[1:]))
        rows = torch.arange(self._start, self._start + features.shape[0], device=features.device)
        weighted = features * self.masks.masks[rows % n][:, None].to(features.dtype)
        self._total.index_add_(0, rows // n, weighted)
        raise _SliceComposed  # the UNet's last layers run once, on the total

    def compose_in_chunks(self, unet_call, spans: list[tuple[int, int]], halves: int) -> torch.Tensor:
        """eps of each half, (halves, C, h, w), from `unet_call(start, stop)` run over each span of
        the batch: the composed feature is summed over the slices, then the UNet's last layers
        (`conv_norm_out`, `conv_act`, `conv_out`, as diffusers' UNet ends) run once on it."""
        self._halves, self._total = halves, None
        try:
            for self._start, stop in spans:
                try:
                    unet_call(self._start, stop)
                except _SliceComposed:
                    pass
            total = self._total
        finally:
            self._halves, self._total, self._start = None, None, 0
        unet = self.unet
        return unet.conv_out(unet.conv_act(unet.conv_norm_out.forward(total)))  # .forward: without our hook

    def __enter__(self) -> FeatureComposer:
        self._handles = [layer.register_forward_hook(self._compose_output) for layer in self.layers]
        self._handles.append(self.unet.conv_norm_out.register_forward_pre_hook(self._compose_final))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


def transformer_blocks(unet: torch.nn.Module) -> list[torch.nn.Module]:
    """The UNet's transformer blocks (self- and cross-attention), in the order the UNet runs them."""
    blocks = [*unet.down_blocks, unet.mid_block, *unet.up_blocks]
    return [attention for block in blocks for attention in getattr(block, "attentions", None) or []]
