"""The sampler grids: `ddim-original` is the original FineControlNet sampler at any number of steps."""

import pytest
import torch

from finecontrol.settings import Settings

# The original sampler's timesteps, written out from its rule range(0, 1000, 1000 // S) + 1.
ORIGINAL_GRIDS = {
    6: [997, 831, 665, 499, 333, 167, 1],  # stride 166: 7 steps
    20: [951 - 50 * k for k in range(20)],  # stride 50: 20 steps
    30: [991 - 33 * k for k in range(31)],  # stride 33: 31 steps, the original demo's "30"
}


@pytest.mark.parametrize("steps", sorted(ORIGINAL_GRIDS))
def test_ddim_original_runs_the_original_grid(tiny, steps):
    scheduler = tiny.timestep_scheduler(Settings(scheduler="ddim-original", steps=steps))
    assert scheduler.timesteps.tolist() == ORIGINAL_GRIDS[steps]


def test_ddim_is_the_original_grid_only_when_the_steps_divide_1000(tiny):
    def grid(name, steps):
        return tiny.timestep_scheduler(Settings(scheduler=name, steps=steps)).timesteps.tolist()

    assert grid("ddim", 20) == ORIGINAL_GRIDS[20]
    assert grid("ddim", 30) == [958 - 33 * k for k in range(30)]  # 30 steps from 958, not 31 from 991
    assert grid("ddim", 6) == [831 - 166 * k for k in range(6)]


def original_ddim_sampling(alphas_cumprod, grid, x, eps_fn):
    """The original sampler's loop, eta = 0, from its own definitions: at grid step i the model sees
    t_i; alpha = alphas_cumprod[t_i] and the previous alpha is that of the next-lower grid point,
    or alphas_cumprod[0] after the last one."""
    ascending = sorted(grid)
    alpha_prev = {t: alphas_cumprod[lower] for lower, t in zip(ascending, ascending[1:])}
    alpha_prev[ascending[0]] = alphas_cumprod[0]
    for t in sorted(grid, reverse=True):
        a, a_prev = alphas_cumprod[t], alpha_prev[t]
        e = eps_fn(x, t)
        x0 = (x - (1 - a).sqrt() * e) / a.sqrt()
        x = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * e
    return x


@pytest.mark.parametrize("model", ["tiny", "toy"])
@pytest.mark.parametrize("steps", sorted(ORIGINAL_GRIDS))
def test_ddim_original_sampling_equals_the_original_update(request, model, steps):
    """Exact at any number of steps, for the tiny model's scaled-linear betas and the toy model's
    cosine betas (whose config sets set_alpha_to_one, which the original never does)."""
    pipe = request.getfixturevalue(model)
    scheduler = pipe.timestep_scheduler(Settings(scheduler="ddim-original", steps=steps))

    def eps_fn(x, t):  # any deterministic stand-in for the model
        return torch.sin(3 * x + t / 100.0)

    start = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x = start.clone()
    for t in scheduler.timesteps:
        x = scheduler.step(eps_fn(x, int(t)), t, x).prev_sample
    alphas = pipe.scheduler.alphas_cumprod.to(torch.float64)  # the model's own noise schedule
    expected = original_ddim_sampling(alphas, ORIGINAL_GRIDS[steps], start.clone(), eps_fn)
    torch.testing.assert_close(x, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("steps, hard, soft", [(6, 4, 3), pytest.param(30, 16, 15, marks=pytest.mark.slow)])
def test_ddim_original_splits_hard_and_soft_masks_over_the_steps_it_runs(
    tiny, two_people, monkeypatch, steps, hard, soft
):
    """harmony 0.5 makes the last steps // 2 steps soft, also when the grid runs one step more."""
    import finecontrol.pipeline as pipeline

    used = []
    compose = pipeline.compose_residuals
    monkeypatch.setattr(
        pipeline,
        "compose_residuals",
        lambda down, masks, split: used.append(masks.masks) or compose(down, masks, split),
    )
    seen = []
    result = tiny(
        two_people,
        Settings(scheduler="ddim-original", steps=steps, harmony=0.5),
        callback=lambda i, total, x0: seen.append((i, total)),
    )
    assert seen == [(i, hard + soft) for i in range(hard + soft)]
    early, late = torch.from_numpy(result.early_masks), torch.from_numpy(result.late_masks)
    assert not torch.equal(early, late)
    kinds = ["hard" if torch.equal(m, early) else "soft" if torch.equal(m, late) else "?" for m in used]
    assert kinds == ["hard"] * hard + ["soft"] * soft
