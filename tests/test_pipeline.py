"""The method's invariants (docs/method.md, "Invariants") on the SD-shaped tiny random model."""

import numpy as np
import pytest
import torch
from conftest import assert_close, make_scene
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    StableDiffusionControlNetPipeline,
    UniPCMultistepScheduler,
)
from PIL import Image

from finecontrol.fusion import FeatureComposer, MaskPyramid, compose_residuals, masked_sum, transformer_blocks
from finecontrol.pipeline import build_prompts
from finecontrol.scene import Person, Scene, SceneError
from finecontrol.settings import Settings

STEPS = 3  # two hard-mask steps and a soft one (harmony 0.5: int(1.5) = 1)
FAST = dict(steps=STEPS, guidance_scale=7.5, control_strength=1.0)


def latents_for(pipe, scene, seed=0):
    width, height = pipe.generation_size(scene, Settings())
    generator = torch.Generator().manual_seed(seed)
    return torch.randn((1, 4, height // 8, width // 8), generator=generator)


# Each scheduler name, built here from diffusers' own classes (not by the code under test).
REFERENCE_SCHEDULERS = {
    "ddim": lambda config: DDIMScheduler.from_config(config, timestep_spacing="leading", steps_offset=1),
    "dpm++": lambda config: DPMSolverMultistepScheduler.from_config(config, algorithm_type="dpmsolver++"),
    "unipc": lambda config: UniPCMultistepScheduler.from_config(config),
}


def diffusers_reference(pipe, prompt, negative, image, latents, settings):
    """diffusers' own StableDiffusionControlNetPipeline on the same components and scheduler."""
    reference = StableDiffusionControlNetPipeline(
        vae=pipe.vae,
        text_encoder=pipe.text_encoder,
        tokenizer=pipe.tokenizer,
        unet=pipe.unet,
        controlnet=pipe.controlnet,
        scheduler=REFERENCE_SCHEDULERS[settings.scheduler](pipe.scheduler.config),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    return run_reference(reference, prompt, negative, image, latents, settings)


def run_reference(reference, prompt, negative, image, latents, settings):
    """A diffusers ControlNet pipeline's final latents for one prompt and control image."""
    reference.set_progress_bar_config(disable=True)
    return reference(
        prompt=prompt,
        negative_prompt=negative,
        image=Image.fromarray(image),
        height=image.shape[0],
        width=image.shape[1],
        num_inference_steps=settings.steps,
        guidance_scale=settings.guidance_scale,
        controlnet_conditioning_scale=settings.control_strength,
        latents=latents.clone(),
        output_type="latent",
        eta=0.0,
    ).images


@pytest.mark.parametrize("scheduler", sorted(REFERENCE_SCHEDULERS))
def test_one_person_equals_diffusers_controlnet_pipeline_with_each_scheduler(tiny, scheduler):
    scene = make_scene([("walking", "an astronaut", 256.0)], setting="in a forest")
    settings = Settings(scheduler=scheduler, **FAST)
    latents = latents_for(tiny, scene)
    ours = tiny(scene, settings, latents=latents.clone())
    expected = diffusers_reference(
        tiny, ours.prompts.people[0], ours.prompts.people_negative[0], ours.person_control_images[0], latents, settings
    )
    assert_close(ours.latents, expected, atol=1e-5)


def test_controlnet_baseline_equals_diffusers_with_the_global_prompt(tiny, two_people):
    settings = Settings(method="controlnet", **FAST)
    latents = latents_for(tiny, two_people)
    ours = tiny(two_people, settings, latents=latents.clone())
    assert ours.prompts.global_prompt == "an astronaut and a samurai in a forest, best quality"
    expected = diffusers_reference(
        tiny, ours.prompts.global_prompt, ours.prompts.global_negative, ours.control_image, latents, settings
    )
    assert_close(ours.latents, expected, atol=1e-5)


def test_with_one_person_all_methods_agree(tiny):
    scene = make_scene([("arms_up", "a knight", 256.0)])
    latents = latents_for(tiny, scene)
    results = [
        tiny(scene, Settings(method=m, **FAST), latents=latents.clone()).latents
        for m in ("finecontrol", "controlnet", "multicontrolnet", "finecontrol-all")
    ]
    for other in results[1:]:
        assert_close(results[0], other, atol=1e-5)


@pytest.mark.parametrize("model", ["tiny", "tiny_sdxl"])
@pytest.mark.parametrize("method", ["finecontrol", "finecontrol-all"])
def test_identical_people_equal_one_person(request, model, method):
    pipe = request.getfixturevalue(model)
    one = make_scene([("walking", "an astronaut", 256.0)])
    three = Scene(people=[one.people[0]] * 3)
    latents = latents_for(pipe, one)
    single = pipe(one, Settings(method=method, **FAST), latents=latents.clone()).latents
    triple = pipe(three, Settings(method=method, **FAST), latents=latents.clone()).latents
    assert_close(single, triple, atol=1e-4)


@pytest.mark.parametrize("model", ["tiny", "tiny_sdxl"])
@pytest.mark.parametrize("method", ["finecontrol", "finecontrol-all"])
def test_reordering_people_leaves_the_image_unchanged(request, model, two_people, method):
    pipe = request.getfixturevalue(model)
    latents = latents_for(pipe, two_people)
    swapped = Scene(people=two_people.people[::-1], setting=two_people.setting)
    a = pipe(two_people, Settings(method=method, **FAST), latents=latents.clone()).latents
    b = pipe(swapped, Settings(method=method, **FAST), latents=latents.clone()).latents
    assert_close(a, b, atol=1e-4)


def test_people_and_methods_change_the_image(tiny, two_people):
    """Guards the invariants above against passing vacuously: prompts, poses and methods matter."""
    latents = latents_for(tiny, two_people)
    base = tiny(two_people, Settings(**FAST), latents=latents.clone()).latents
    other_prompt = Scene(people=[two_people.people[0], Person(two_people.people[1].keypoints, "a chef")])
    assert (tiny(other_prompt, Settings(**FAST), latents=latents.clone()).latents - base).abs().max() > 1e-2
    for method in ("controlnet", "multicontrolnet", "finecontrol-all"):
        baseline = tiny(two_people, Settings(method=method, **FAST), latents=latents.clone()).latents
        assert (baseline - base).abs().max() > 1e-2, method


def _step_inputs(pipe, scene, settings):
    """Everything one finecontrol step needs, built by the pipeline itself."""
    from finecontrol.render import hard_masks, scene_maps, soft_masks

    width, height = pipe.generation_size(scene, settings)
    control, people, raw = scene_maps(
        [p.keypoints for p in scene.people], (scene.width, scene.height), (width, height), (height // 8, width // 8)
    )
    raw = torch.from_numpy(raw)
    prompts = build_prompts(scene, settings.quality_suffix)
    branches = pipe._branches(
        settings,
        scene,
        prompts,
        control,
        people,
        hard_masks(raw, settings.temperature),
        soft_masks(raw, settings.temperature),
    )
    return branches, torch.randn(1, 4, height // 8, width // 8, generator=torch.Generator().manual_seed(3))


def reference_eps(pipe, branches, z, t, masks, compose_at):
    """FineControlNet written out with one forward per person and per CFG half (no batching, no
    hook): residuals composed by hand, then the composite taken at `compose_at` ("features": the
    input of conv_norm_out, the method; "eps": the UNet outputs, not the method)."""
    n = branches.people
    out = []
    for half in range(2):
        rows = range(half * n, half * n + n)
        residuals = [
            pipe.controlnet(
                z,
                t,
                **branches.controlnet_context[[i]].kwargs(),
                controlnet_cond=branches.control_images[[i]],
                conditioning_scale=branches.control_scales[i].item(),
                return_dict=False,
            )
            for i in rows
        ]
        down = [torch.cat(level) for level in zip(*[r[0] for r in residuals])]
        mid = torch.cat([r[1] for r in residuals])
        for k in range(pipe.split):
            m = masks.at(down[k].shape[-2:])
            down[k] = (down[k] * m[:, None]).sum(0, keepdim=True).expand_as(down[k])
        features, eps = [], []
        capture = pipe.unet.conv_norm_out.register_forward_hook(
            lambda mod, args, res, features=features: features.append(args[0])
        )
        try:
            for j, i in enumerate(rows):
                eps.append(
                    pipe.unet(
                        z,
                        t,
                        **branches.unet_context[[i]].kwargs(),
                        down_block_additional_residuals=[d[[j]] for d in down],
                        mid_block_additional_residual=mid[[j]],
                        return_dict=False,
                    )[0]
                )
        finally:
            capture.remove()
        weights = masks.masks[:, None]
        if compose_at == "features":
            f = (torch.cat(features) * weights).sum(0, keepdim=True)
            out.append(pipe.unet.conv_out(pipe.unet.conv_act(pipe.unet.conv_norm_out(f))))
        else:
            out.append((torch.cat(eps) * weights).sum(0, keepdim=True))
    return out


@pytest.mark.parametrize("model", ["tiny", "tiny_sdxl"])
@pytest.mark.parametrize("phase", [0, 1], ids=["early", "late"])
def test_batched_step_equals_separate_forwards_and_composes_before_conv_norm_out(request, model, two_people, phase):
    pipe = request.getfixturevalue(model)
    settings = Settings(**FAST)
    branches, z = _step_inputs(pipe, two_people, settings)
    masks, t = branches.masks[phase], torch.tensor(601)
    with torch.no_grad(), FeatureComposer(pipe.unet) as composer:
        batched = pipe._predict_noise("finecontrol", branches, z, t, masks, composer)
    with torch.no_grad():
        reference = reference_eps(pipe, branches, z, t, masks, "features")
        eps_composed = reference_eps(pipe, branches, z, t, masks, "eps")
    for ours, ref in zip(batched, reference):
        assert_close(ours, ref, atol=1e-5)
    # Composing the outputs instead is a different method: GroupNorm and the 3x3 conv_out mix
    # features across mask edges.
    scale = reference[1].abs().max()
    assert (eps_composed[1] - reference[1]).abs().max() > 1e-3 * scale


@pytest.mark.parametrize("phase", [0, 1], ids=["early", "late"])
def test_every_layer_variant_composes_each_transformer_block_output_and_keeps_h_control(tiny, two_people, phase):
    """finecontrol-all: each transformer block's output (down, mid and up) is replaced by the
    mask-weighted composite of its half, broadcast back to every person; the ControlNet residuals
    and the final feature are composed as in finecontrol."""
    settings = Settings(method="finecontrol-all", **FAST)
    branches, z = _step_inputs(tiny, two_people, settings)
    masks, t, n = branches.masks[phase], torch.tensor(601), 2
    blocks = transformer_blocks(tiny.unet)
    assert len(blocks) == 16  # 2 + 2 + 2 down, 1 mid, 3 + 3 + 3 up
    raw, composed, residuals = [], [], []
    capture_raw = [b.register_forward_hook(lambda m, a, out: raw.append(out[0])) for b in blocks]
    try:
        with torch.no_grad(), FeatureComposer(tiny.unet, every_layer=True) as composer:
            capture_composed = [b.register_forward_hook(lambda m, a, out: composed.append(out[0])) for b in blocks]
            capture_residuals = tiny.unet.register_forward_pre_hook(
                lambda m, a, kw: residuals.append(kw["down_block_additional_residuals"]), with_kwargs=True
            )
            batched = tiny._predict_noise("finecontrol-all", branches, z, t, masks, composer)
    finally:
        for hook in capture_raw + capture_composed + [capture_residuals]:
            hook.remove()
    assert len(raw) == len(composed) == 16
    for before, after in zip(raw, composed):
        expected = masked_sum(before, masks.at(before.shape[-2:])).repeat_interleave(n, dim=0)
        assert torch.equal(after, expected)
        assert not torch.equal(before[2], before[3])  # the two prompts differed before the composition
    with torch.no_grad():
        down, _ = tiny.controlnet(
            z.expand(4, -1, -1, -1),
            t,
            **branches.controlnet_context.kwargs(),
            controlnet_cond=branches.control_images,
            conditioning_scale=branches.control_scales,
            return_dict=False,
        )
    for ours, expected in zip(residuals[0], compose_residuals(list(down), masks, tiny.split)):
        assert_close(ours, expected, atol=1e-6)
    assert batched.shape == (2, *z.shape[1:])


def test_residual_split_keeps_the_three_lowest_resolution_residuals_per_person(tiny):
    assert tiny.num_residuals == 12
    assert tiny.split == 9
    n, masks = 2, torch.rand(2, 16, 16)
    masks = masks / masks.sum(0)
    down = [torch.randn(2 * n, 4, s, s) for s in [16] * 4 + [8] * 3 + [4] * 3 + [2] * 2]
    composed = compose_residuals(down, MaskPyramid(masks), 9)
    for k in range(9):
        expected = masked_sum(down[k], MaskPyramid(masks).at(down[k].shape[-2:]))
        assert torch.equal(composed[k], expected.repeat_interleave(n, 0))
    for k in range(9, 12):
        assert composed[k] is down[k]


@pytest.mark.parametrize("method", ["finecontrol", "finecontrol-all"])
def test_each_step_makes_one_batched_controlnet_and_one_batched_unet_call(tiny, two_people, method):
    calls = []
    hooks = [
        module.register_forward_pre_hook(
            lambda mod, args, kw, name=name: calls.append((name, args[0].shape[0])), with_kwargs=True
        )
        for name, module in (("controlnet", tiny.controlnet), ("unet", tiny.unet))
    ]
    try:
        tiny(two_people, Settings(method=method, **FAST))
    finally:
        for hook in hooks:
            hook.remove()
    assert calls == [("controlnet", 4), ("unet", 4)] * STEPS


def test_callback_gets_every_step_and_an_x0_estimate(tiny, two_people):
    seen = []
    result = tiny(two_people, Settings(**FAST), callback=lambda i, total, x0: seen.append((i, total, x0.shape)))
    assert seen == [(i, STEPS, result.latents.shape) for i in range(STEPS)]


def test_same_seed_same_image_other_seed_other_image(tiny, two_people):
    a = tiny(two_people, Settings(seed=7, **FAST))
    b = tiny(two_people, Settings(seed=7, **FAST))
    c = tiny(two_people, Settings(seed=8, **FAST))
    assert np.array_equal(np.asarray(a.image), np.asarray(b.image))
    assert not np.array_equal(np.asarray(a.image), np.asarray(c.image))


def test_per_person_control_strength_overrides_the_global_one(tiny, two_people):
    latents = latents_for(tiny, two_people)
    base = tiny(two_people, Settings(**FAST), latents=latents.clone()).latents
    same = Scene(
        people=[
            two_people.people[0],
            Person(
                two_people.people[1].keypoints, two_people.people[1].prompt, control_strength=FAST["control_strength"]
            ),
        ],
        setting=two_people.setting,
    )
    assert_close(tiny(same, Settings(**FAST), latents=latents.clone()).latents, base, atol=0)
    weaker = Scene(
        people=same.people[:1] + [Person(same.people[1].keypoints, same.people[1].prompt, control_strength=0.2)],
        setting=same.setting,
    )
    assert (tiny(weaker, Settings(**FAST), latents=latents.clone()).latents - base).abs().max() > 1e-3


def test_schedulers_give_different_images(tiny, two_people):
    """Guards the equalities above: on the same noise each scheduler lands somewhere else (at 6
    steps, which do not divide 1000, so that ddim and ddim-original differ too)."""
    latents = latents_for(tiny, two_people)
    results = {
        name: tiny(two_people, Settings(scheduler=name, **{**FAST, "steps": 6}), latents=latents.clone()).latents
        for name in ("ddim", "ddim-original", "dpm++", "unipc")
    }
    names = list(results)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert (results[a] - results[b]).abs().max() > 1e-3, (a, b)


def test_generation_size_follows_the_model_resolution_or_the_override(tiny):
    assert tiny.generation_size(make_scene([("standing", "a", 100.0)]), Settings()) == (128, 128)
    wide = make_scene([("standing", "a", 100.0)], width=768, height=512)
    assert tiny.generation_size(wide, Settings()) == (128, 88)  # 128 x 85.3, sides multiples of 8
    assert tiny.generation_size(wide, Settings(width=256, height=128)) == (256, 128)
    result = tiny(wide, Settings(steps=2))
    assert result.image.size == (128, 88) and result.early_masks.shape == (1, 11, 16)


def test_result_explains_itself(tiny, two_people):
    result = tiny(two_people, Settings(**FAST))
    assert result.prompts.people == ["an astronaut in a forest, best quality", "a samurai in a forest, best quality"]
    assert result.control_image.shape == (128, 128, 3)
    assert len(result.person_control_images) == 2
    assert result.early_masks.shape == result.late_masks.shape == result.raw_masks.shape == (2, 16, 16)
    np.testing.assert_allclose(result.early_masks.sum(0), 1, atol=1e-6)


def test_empty_scene_is_refused_with_a_clear_message(tiny):
    with pytest.raises(SceneError, match="no people"):
        tiny(Scene(), Settings(**FAST))


@pytest.mark.parametrize(
    "bad, message",
    [
        (dict(method="magic"), "method must be one of"),
        (dict(steps=0), "steps must be"),
        (dict(guidance_scale=float("nan")), "guidance_scale must be"),
        (dict(harmony=2), "harmony must be"),
        (dict(width=100, height=100), "multiple of 8"),
        (dict(width=128), "together"),
        (dict(seed=-1), "seed must be"),
        (dict(mask_dilation=0), "mask_dilation must be a whole number in 1..512"),
    ],
)
def test_settings_are_validated(bad, message):
    with pytest.raises(ValueError, match=message):
        Settings(**bad)


def test_half_precision_follows_full_precision(tiny, two_people):
    from finecontrol.models import load_model

    pipe = load_model("tiny", device="cpu", dtype=torch.bfloat16)
    half = pipe(two_people, Settings(steps=3, seed=1))
    full = tiny(two_people, Settings(steps=3, seed=1))
    assert half.latents.dtype == torch.bfloat16
    error = (half.latents.float() - full.latents).abs().mean() / full.latents.abs().mean()
    assert error < 0.05, f"bf16 latents differ from fp32 by {error:.1%} on average"
    pixels = np.abs(np.asarray(half.image, np.float64) - np.asarray(full.image, np.float64)).mean()
    assert pixels < 8, f"bf16 image differs from fp32 by {pixels:.1f} grey levels on average"
