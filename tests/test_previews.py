"""Live previews from the fitted latent -> RGB map: they must look like the real VAE decode."""

import copy

import numpy as np
import pytest
import torch

from finecontrol.previews import LatentPreviewer, agreement, cell_means, fit_previewer, previewer_for
from finecontrol.scene import load_scene
from finecontrol.settings import Settings

# The toy model's presets: every setting (beach, grass, snow, night) and 1 to 4 people.
TOY_SCENES = ["one_person", "two_people", "three_people", "four_people"]


def estimates_of(pipe, scene_name: str, steps=(3, 11, 19)) -> list:
    """(x0 estimate, its real decode averaged per latent cell) at the given steps of one generation."""
    seen = {}
    pipe(
        load_scene(f"assets/scenes/toy/{scene_name}.json"),
        Settings(steps=20, seed=1),
        callback=lambda step, total, x0: seen.__setitem__(step, x0.clone()),
    )
    return [(seen[step], cell_means(pipe.decode(seen[step]), pipe.vae_scale)) for step in steps]


@pytest.fixture(scope="module")
def toy_estimates(toy):
    """Estimates at steps 4, 12 and 20 of each toy preset."""
    return [pair for name in TOY_SCENES for pair in estimates_of(toy, name)]


def scores(previewer: LatentPreviewer, estimates) -> np.ndarray:
    return np.array([agreement(previewer.rgb(x0), decoded) for x0, decoded in estimates])


def test_toy_previews_resemble_the_real_decode(toy, toy_estimates):
    """The fitted map against the VAE's own decodes of denoising estimates (measured: mean 0.84,
    worst 0.74; the best map of its form fitted on these very estimates: 0.83 on average)."""
    got = scores(previewer_for(toy), toy_estimates)
    assert got.mean() > 0.75 and got.min() > 0.6, got.round(2)


def test_a_map_that_is_not_the_models_own_fails_the_same_check(toy, tiny, toy_estimates):
    """The check tells a wrong map apart: the tiny model's map (measured 0.17), or the toy map with
    its latent channels in reverse order (-0.19), scores far below it on the toy model's latents."""
    own = previewer_for(toy)
    for wrong in (previewer_for(tiny), LatentPreviewer(weight=own.weight.flip(1), bias=own.bias)):
        assert scores(wrong, toy_estimates).mean() < 0.5


def test_a_preview_is_one_pixel_per_latent_cell(tiny):
    latents = torch.randn(1, 4, 11, 16)
    preview = previewer_for(tiny)(latents)
    assert preview.size == (16, 11) and preview.mode == "RGB"


def test_the_map_is_fitted_once_per_model_and_deterministically(tiny):
    assert previewer_for(tiny) is previewer_for(tiny)
    again = fit_previewer(tiny)
    assert torch.allclose(again.weight, previewer_for(tiny).weight) and torch.allclose(
        again.bias, previewer_for(tiny).bias
    )


def test_a_float16_vae_that_overflows_is_fitted_in_float32(tiny):
    """A VAE that asks to be upcast (SD1.5's, which overflows in float16 on CUDA) is fitted on a
    float32 copy: here a decoder whose activations exceed float16's range."""
    loud = copy.copy(tiny)
    loud.vae = copy.deepcopy(tiny.vae)
    with torch.no_grad():
        for tensor in (loud.vae.decoder.conv_in.weight, loud.vae.decoder.conv_in.bias):
            tensor.mul_(3e3)
    loud.vae.to(torch.float16)
    assert loud.vae.config.force_upcast
    fitted = fit_previewer(loud)
    assert loud.vae.dtype == torch.float16  # the model's own VAE is left as it was
    loud.vae.float()
    assert torch.allclose(fitted.weight, fit_previewer(loud).weight, rtol=1e-3, atol=1e-4)


def test_agreement_is_pearson_correlation():
    a = np.arange(12, dtype=np.uint8).reshape(2, 2, 3)
    assert agreement(a, a) == pytest.approx(1.0)
    assert agreement(a, 255 - a) == pytest.approx(-1.0)
    assert agreement(a, np.full_like(a, 7)) == pytest.approx(0.0)
