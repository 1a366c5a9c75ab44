"""Schedulers beyond diffusers' own."""

from __future__ import annotations

import numpy as np
import torch
from diffusers import DDIMScheduler


class OriginalGridDDIMScheduler(DDIMScheduler):
    """DDIM on the original FineControlNet sampler's grid, exact at any number of steps S.

    The original (latent diffusion's DDIM sampler) runs t = range(0, T, T // S) + 1 from the
    noisiest down, with T = 1000 training steps: that is S steps only when S divides T (S = 6:
    997, 831, ..., 1, seven steps; S = 30: 991, 958, ..., 1, 31 steps), always T // S apart; its
    last step lands on alpha_bar_0, never on 1, and it neither clips nor thresholds x0. diffusers'
    DDIM step is the same update (DDIM paper eq. 12), so only the grid and those options change:
    build it with `original_grid_ddim(config)`.
    """

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        super().set_timesteps(num_inference_steps, device)  # validates S; step() spaces by T // S
        stride = self.config.num_train_timesteps // num_inference_steps
        grid = np.arange(0, self.config.num_train_timesteps, stride)[::-1] + 1
        self.timesteps = torch.from_numpy(grid.copy()).to(device)


def original_grid_ddim(config) -> OriginalGridDDIMScheduler:
    """The original sampler for a model's scheduler config (same betas): its grid, its last step to
    alpha_bar_0 (`set_alpha_to_one=False`), no clipping or thresholding of x0."""
    return OriginalGridDDIMScheduler.from_config(config, set_alpha_to_one=False, clip_sample=False, thresholding=False)
