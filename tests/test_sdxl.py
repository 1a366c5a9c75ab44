"""The method's invariants on the SDXL-shaped tiny random model (`tiny-sdxl`): the same as SD1.5's
(test_pipeline.py, which also runs its identical-people, reordering and batched-step tests on
tiny-sdxl), plus
what SDXL adds (two text encoders, pooled embeddings, time ids, the fp16-unsafe VAE), and
loading SDXL models."""

import time

import pytest
import torch
from conftest import assert_close, make_scene
from diffusers import DDIMScheduler, StableDiffusionXLControlNetPipeline
from PIL import Image
from test_pipeline import _step_inputs, latents_for, run_reference

from finecontrol.model_info import ModelInfo
from finecontrol.models import (
    DEFAULT_SDXL_BASE,
    DEFAULT_SDXL_CONTROLNET,
    ModelNotAvailableError,
    load_model,
    tiny_sdxl_pipeline,
)
from finecontrol.render import skeleton_image, stroke_ratio
from finecontrol.scene import Scene
from finecontrol.settings import Settings

FAST = dict(steps=3, guidance_scale=7.5, control_strength=1.0)
# Float32 rounding on latents of magnitude ~6 after 3 steps, against diffusers' pipeline or between
# batch sizes (measured up to 1.8e-5).
REFERENCE_ATOL = 3e-5


@pytest.fixture
def xl(tiny_sdxl):
    return tiny_sdxl


def diffusers_sdxl_reference(pipe, prompt, negative, image, latents, settings):
    """diffusers' own StableDiffusionXLControlNetPipeline on the same components (no watermark)."""
    reference = StableDiffusionXLControlNetPipeline(
        vae=pipe.vae,
        text_encoder=pipe.text_encoder,
        text_encoder_2=pipe.text_encoder_2,
        tokenizer=pipe.tokenizer,
        tokenizer_2=pipe.tokenizer_2,
        unet=pipe.unet,
        controlnet=pipe.controlnet,
        scheduler=DDIMScheduler.from_config(pipe.scheduler.config, timestep_spacing="leading", steps_offset=1),
        add_watermarker=False,
    )
    return run_reference(reference, prompt, negative, image, latents, settings)


@pytest.mark.parametrize("negative", ["", "lowres, bad hands"], ids=["no-negative", "negative"])
def test_one_person_equals_diffusers_sdxl_controlnet_pipeline(xl, negative):
    """Prompt embeddings from both encoders (penultimate layers), the pooled embedding, the time
    ids (H, W, 0, 0, H, W) for the ControlNet and the UNet, and an empty negative as all zeros
    (diffusers' "no negative prompt" with force_zeros_for_empty_prompt) all as diffusers does."""
    scene = make_scene([("walking", "an astronaut", 256.0)], width=512, height=384, setting="in a forest")
    scene.negative_prompt = negative  # a landscape canvas: height and width are told apart
    settings = Settings(**FAST)
    latents = latents_for(xl, scene)
    ours = xl(scene, settings, latents=latents.clone())
    expected = diffusers_sdxl_reference(
        xl, ours.prompts.people[0], negative or None, ours.person_control_images[0], latents, settings
    )
    assert_close(ours.latents, expected, atol=REFERENCE_ATOL)


def test_controlnet_baseline_equals_diffusers_sdxl_with_the_global_prompt(xl):
    scene = make_scene([("walking", "an astronaut", 170.0), ("arms_up", "a samurai", 340.0)], setting="in a forest")
    settings = Settings(method="controlnet", **FAST)
    latents = latents_for(xl, scene)
    ours = xl(scene, settings, latents=latents.clone())
    expected = diffusers_sdxl_reference(
        xl, ours.prompts.global_prompt, ours.prompts.global_negative, ours.control_image, latents, settings
    )
    assert_close(ours.latents, expected, atol=REFERENCE_ATOL)


def test_each_branch_has_its_own_prompt_and_pooled_embedding_in_both_halves(xl, two_people):
    settings = Settings(**FAST)
    branches, _ = _step_inputs(xl, two_people, settings)
    context = branches.unet_context
    assert context.hidden.shape == (4, 77, 80) and context.pooled.shape == (4, 32)
    own = [xl.encode_prompts([p]) for p in (f"{q.prompt} in a forest, best quality" for q in two_people.people)]
    for person in range(2):
        assert torch.equal(context.pooled[2 + person], own[person].pooled[0])
        assert torch.equal(context.hidden[2 + person], own[person].hidden[0])
    assert not torch.equal(context.pooled[2], context.pooled[3])
    negative = xl.encode_prompts([two_people.negative_prompt]).pooled[0]
    assert torch.equal(context.pooled[0], negative) and torch.equal(context.pooled[1], negative)
    height, width = branches.control_images.shape[-2:]
    assert context.time_ids.tolist() == [[height, width, 0, 0, height, width]] * 4


def test_residual_split_is_six_of_nine(xl):
    assert xl.num_residuals == 9
    assert xl.split == 6


@pytest.mark.parametrize("method", ["finecontrol", "multicontrolnet", "controlnet"])
def test_batched_generation_equals_one_branch_per_call(xl, two_people, method):
    latents = latents_for(xl, two_people)
    whole = xl(two_people, Settings(method=method, **FAST), latents=latents.clone()).latents
    xl.max_batch = 1
    try:
        one_by_one = xl(two_people, Settings(method=method, **FAST), latents=latents.clone()).latents
    finally:
        xl.max_batch = None
    assert_close(whole, one_by_one, atol=REFERENCE_ATOL)


def test_prompts_and_methods_change_the_image(xl, two_people):
    """Guards the invariants above against passing vacuously."""
    latents = latents_for(xl, two_people)
    base = xl(two_people, Settings(**FAST), latents=latents.clone()).latents
    other = Scene(people=[two_people.people[0], two_people.people[1]], setting="on a beach")
    assert (xl(other, Settings(**FAST), latents=latents.clone()).latents - base).abs().max() > 1e-3
    for method in ("controlnet", "multicontrolnet", "finecontrol-all"):
        baseline = xl(two_people, Settings(method=method, **FAST), latents=latents.clone()).latents
        assert (baseline - base).abs().max() > 1e-3, method


def test_half_precision_keeps_an_upcast_vae_in_float32():
    pipe = tiny_sdxl_pipeline().to("cpu", torch.bfloat16)
    assert pipe.unet.dtype == pipe.controlnet.dtype == pipe.text_encoder_2.dtype == torch.bfloat16
    assert pipe.vae.dtype == torch.float32  # SDXL's VAE overflows in fp16: force_upcast
    scene = make_scene([("walking", "an astronaut", 256.0)])
    image = pipe(scene, Settings(steps=2)).image
    assert image.size == (128, 128)


# ---------------------------------------------------------------------------------------------
# Loading SDXL models


def test_saved_sdxl_folder_loads_back_as_sdxl_and_generates_the_same_image(xl, two_people, tmp_path):
    xl.save_pretrained(tmp_path / "model")
    loaded = load_model(str(tmp_path / "model"), device="cpu")
    assert loaded.is_sdxl and loaded.split == 6 and loaded.resolution == xl.resolution
    settings = Settings(**FAST)
    xl.clear_caches()  # texts cached by earlier tests were encoded in other batches (other rounding)
    assert_close(loaded(two_people, settings).latents, xl(two_people, settings).latents, atol=0)


def test_an_sdxl_folder_without_model_info_is_generated_at_1024(xl, tmp_path):
    xl.save_pretrained(tmp_path / "model")
    (tmp_path / "model" / "finecontrol.json").unlink()
    loaded = load_model(str(tmp_path / "model"), device="cpu")
    assert loaded.resolution == 1024
    assert loaded.generation_size(make_scene([("walking", "a", 256.0)]), Settings()) == (1024, 1024)
    # its own controlnet/ folder, not xinsir's: drawn as the annotator draws
    assert loaded.info.stroke_scaling == "fixed" and loaded.stroke_sizes((1024, 1024)) == (4, 4)


def test_sdxl_offline_fails_fast_naming_the_base_and_the_controlnet_downloads(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(ModelNotAvailableError) as error:
        load_model("sdxl", device="cpu")
    assert time.monotonic() - start < 30
    message = str(error.value)
    assert f"hf download {DEFAULT_SDXL_BASE} --local-dir" in message
    assert f"hf download {DEFAULT_SDXL_CONTROLNET} --local-dir" in message


@pytest.mark.parametrize("longer, ratio", [(499, 1), (500, 2), (999, 2), (1000, 3), (1999, 3), (2000, 4), (9000, 7)])
def test_stroke_ratio_follows_xinsirs_size_bands(longer, ratio):
    assert stroke_ratio(longer, 100) == stroke_ratio(100, longer) == ratio


def test_xinsir_stroke_scaling_draws_three_times_thicker_at_1024(xl):
    from dataclasses import replace as replace_info

    pose = make_scene([("walking", "a", 512.0)], 1024, 1024).people[0].keypoints
    drawn = {}
    for scaling in ("fixed", "xinsir"):
        xl.info = replace_info(xl.info, stroke_scaling=scaling)
        stick, joint = xl.stroke_sizes((1024, 1024))
        drawn[scaling] = (skeleton_image([pose], (1024, 1024), (1024, 1024), stick, joint).any(axis=2).sum(), stick)
    xl.info = replace_info(xl.info, stroke_scaling="fixed")
    assert drawn["fixed"][1] == 4 and drawn["xinsir"][1] == 12
    assert 2.5 < drawn["xinsir"][0] / drawn["fixed"][0] < 3.5  # thicker limbs and larger joints


def test_model_info_refuses_an_unknown_stroke_scaling():
    with pytest.raises(ValueError, match="stroke_scaling must be one of fixed, xinsir"):
        ModelInfo.from_dict({"stroke_scaling": "thick"})


def test_the_page_names_the_architecture_and_native_size(xl, tiny):
    from finecontrol.ui.engine import Engine

    assert "SDXL, native 128 px" in Engine(name="tiny-sdxl", pipe=xl).describe()
    assert "SD 1.x, native 128 px" in Engine(name="tiny", pipe=tiny).describe()


@pytest.mark.slow
def test_cli_generates_with_tiny_sdxl_in_a_fresh_process(tmp_path):
    import os
    import subprocess
    import sys

    from finecontrol.metadata import read_png

    out = tmp_path / "out.png"
    command = ["generate", "assets/scenes/two_people.json", "--out", str(out), "--steps", "3", "--model", "tiny-sdxl"]
    proc = subprocess.run(
        [sys.executable, "-m", "finecontrol", *command],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    assert proc.returncode == 0, proc.stderr
    assert "tiny-sdxl has random weights" in proc.stderr
    assert max(Image.open(out).size) == 128  # the longer side at tiny-sdxl's native size
    assert read_png(out)[1].steps == 3


def test_a_lora_on_an_sdxl_model_is_refused_clearly(xl, two_people):
    from finecontrol.loras import LoraNotAvailableError
    from finecontrol.scene import LoraRef

    two_people.people[0].loras = [LoraRef("stripes", 1.0)]
    with pytest.raises(LoraNotAvailableError, match="Stable Diffusion 1.x models only"):
        xl(two_people, Settings(**FAST))


def test_sdxl_random_has_sdxl_and_its_controlnets_exact_shapes():
    """assets/configs/sdxl, built on the meta device (no memory): the published parameter counts
    of SDXL base 1.0's UNet, VAE and two text encoders, and of an SDXL ControlNet; 9 residuals."""
    from finecontrol.models import sdxl_random_pipeline

    with torch.device("meta"):
        pipe = sdxl_random_pipeline()
    counts = {
        name: sum(p.numel() for p in getattr(pipe, name).parameters())
        for name in ("unet", "controlnet", "vae", "text_encoder", "text_encoder_2")
    }
    assert counts == {
        "unet": 2_567_463_684,
        "controlnet": 1_251_014_160,
        "vae": 83_653_863,
        "text_encoder": 123_060_480,
        "text_encoder_2": 694_659_840,
    }
    assert pipe.is_sdxl and pipe.num_residuals == 9 and pipe.split == 6
    assert pipe.resolution == 1024 and pipe.stroke_sizes((1024, 1024)) == (12, 12)
