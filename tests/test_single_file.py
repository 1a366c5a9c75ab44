"""Single-file checkpoints (`--model FILE.safetensors`): a tiny model written in the original
(LDM) layout loads back through diffusers' `from_single_file` with the same weights and the same
image, for SD1.x and SDXL; the architecture is read from the file; what cannot be loaded fails
fast with what to do.

What these cannot show: real checkpoints from model sites (none can be downloaded here), and the
variants of their key names; diffusers' converters handle those."""

import time

import pytest
import torch
from conftest import make_scene
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
from ldm_layout import pipeline_to_ldm
from safetensors.torch import save_file
from test_pipeline import latents_for

from finecontrol import single_file
from finecontrol.models import DEFAULT_BASE, DEFAULT_SDXL_BASE, ModelNotAvailableError, load_model
from finecontrol.settings import Settings

COMPONENTS = ("unet", "vae", "text_encoder", "text_encoder_2")


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No hub, and the reference configs looked for under tmp_path/models."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))  # an empty hub cache
    monkeypatch.setattr(single_file, "LOCAL_MODELS", tmp_path / "models")
    return tmp_path


def write_checkpoint(pipe, kind: str, folder) -> tuple:
    """`pipe` as a single file in the LDM layout, its configs and tokenizers as the reference model's
    folder (as `hf download ... --include "*.json" "*.txt"` would give for the real one), and its
    ControlNet as a folder. Returns (checkpoint path, ControlNet folder)."""
    parts = dict(vae=pipe.vae, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer, unet=pipe.unet)
    if kind == "sdxl":
        reference = StableDiffusionXLPipeline(
            **parts,
            text_encoder_2=pipe.text_encoder_2,
            tokenizer_2=pipe.tokenizer_2,
            scheduler=pipe.scheduler,
            add_watermarker=False,
        )
        repo = DEFAULT_SDXL_BASE
    else:
        reference = StableDiffusionPipeline(
            **parts,
            scheduler=pipe.scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
        repo = DEFAULT_BASE
    configs = folder / "models" / repo.split("/")[-1]
    reference.save_pretrained(configs)
    for weights in configs.rglob("*.safetensors"):  # only configs and tokenizers are kept
        weights.unlink()
    checkpoint = folder / f"finetune-{kind}.safetensors"
    save_file({k: v.contiguous() for k, v in pipeline_to_ldm(pipe, kind).items()}, str(checkpoint))
    controlnet = folder / "controlnet"
    pipe.controlnet.save_pretrained(controlnet)
    return checkpoint, controlnet


@pytest.mark.parametrize("kind", ["sd15", "sdxl"])
def test_a_single_file_checkpoint_loads_as_the_same_model_and_image(kind, tiny, tiny_sdxl, offline):
    source = tiny_sdxl if kind == "sdxl" else tiny
    checkpoint, controlnet = write_checkpoint(source, kind, offline)
    assert single_file.checkpoint_architecture(checkpoint) == kind

    loaded = load_model(str(checkpoint), controlnet=str(controlnet), device="cpu")

    assert loaded.is_sdxl == (kind == "sdxl")
    for name in COMPONENTS:
        if getattr(source, name, None) is None:
            continue
        expected, got = getattr(source, name).state_dict(), getattr(loaded, name).state_dict()
        assert expected.keys() == got.keys(), name
        for key, value in expected.items():
            assert torch.equal(value, got[key]), f"{name}.{key}"
    # The tiny models' generation size is a declaration of theirs (finecontrol.json), not in the file.
    loaded.info, loaded.resolution = source.info, source.resolution
    scene = make_scene([("walking", "an astronaut", 170.0), ("arms_up", "a samurai", 340.0)], setting="in a forest")
    settings = Settings(steps=2)
    latents = latents_for(source, scene)
    assert torch.equal(
        loaded(scene, settings, latents=latents.clone()).latents,
        source(scene, settings, latents=latents.clone()).latents,
    )


def test_an_sdxl_checkpoint_is_generated_at_1024_with_its_default_controlnet_strokes(tiny_sdxl, offline):
    """Without finecontrol.json a single-file SDXL model is taken at SDXL's native size; strokes are
    scaled as xinsir's ControlNet was trained only when that is the ControlNet used."""
    checkpoint, controlnet = write_checkpoint(tiny_sdxl, "sdxl", offline)
    loaded = load_model(str(checkpoint), controlnet=str(controlnet), device="cpu")
    assert loaded.info.resolution == 1024
    assert loaded.info.stroke_scaling == "fixed"  # not xinsir's ControlNet


@pytest.mark.parametrize(
    "kind, default_controlnet",
    [("sd15", "lllyasviel/control_v11p_sd15_openpose"), ("sdxl", "xinsir/controlnet-openpose-sdxl-1.0")],
)
def test_a_checkpoint_without_its_controlnet_fails_fast_offline_naming_its_architectures_download(
    kind, default_controlnet, tiny, tiny_sdxl, offline
):
    checkpoint, _ = write_checkpoint(tiny_sdxl if kind == "sdxl" else tiny, kind, offline)
    start = time.monotonic()
    with pytest.raises(ModelNotAvailableError, match=f"hf download {default_controlnet}"):
        load_model(str(checkpoint), device="cpu")
    assert time.monotonic() - start < 10


def test_a_checkpoint_without_reference_configs_fails_fast_offline_naming_the_download(tiny_sdxl, offline):
    checkpoint, controlnet = write_checkpoint(tiny_sdxl, "sdxl", offline)
    configs = offline / "models" / DEFAULT_SDXL_BASE.split("/")[-1]
    configs.rename(offline / "elsewhere")
    start = time.monotonic()
    with pytest.raises(ModelNotAvailableError) as raised:
        load_model(str(checkpoint), controlnet=str(controlnet), device="cpu")
    assert time.monotonic() - start < 10
    message = str(raised.value)
    assert f'hf download {DEFAULT_SDXL_BASE} --include "*.json" "*.txt" --local-dir {configs}' in message


def test_a_missing_checkpoint_fails_fast(offline):
    start = time.monotonic()
    with pytest.raises(ModelNotAvailableError, match="does not exist"):
        load_model(str(offline / "nowhere.safetensors"), device="cpu")
    assert time.monotonic() - start < 5


def test_a_pickled_ckpt_is_refused_without_being_read(offline):
    ckpt = offline / "old.ckpt"
    ckpt.write_bytes(b"not read")
    with pytest.raises(ModelNotAvailableError, match="only .safetensors"):
        load_model(str(ckpt), device="cpu")


def test_a_file_that_is_not_safetensors_is_named(offline):
    broken = offline / "broken.safetensors"
    broken.write_bytes(b"\x00" * 64)
    with pytest.raises(ModelNotAvailableError, match="broken.safetensors is not a readable safetensors file"):
        load_model(str(broken), device="cpu")


def sdxl_header(tiny_sdxl) -> dict:
    return {k: v.contiguous() for k, v in pipeline_to_ldm(tiny_sdxl, "sdxl").items()}


def test_an_sdxl_refiner_checkpoint_is_refused_by_name(tiny_sdxl, offline):
    """The refiner has no first text encoder and one conditioning less: it is not a base model."""
    weights = {k: v for k, v in sdxl_header(tiny_sdxl).items() if not k.startswith("conditioner.embedders.0.")}
    weights = {k.replace("conditioner.embedders.1.", "conditioner.embedders.0."): v for k, v in weights.items()}
    path = offline / "refiner.safetensors"
    save_file(weights, str(path))
    with pytest.raises(
        ModelNotAvailableError, match="'xl_refiner' model; single-file checkpoints of Stable Diffusion 1.x"
    ):
        single_file.checkpoint_architecture(path)


def test_an_inpainting_checkpoint_is_refused_by_name(tiny, offline):
    """9 input channels (latents, mask, masked image): not a text-to-image model."""
    weights = {k: v.contiguous() for k, v in pipeline_to_ldm(tiny, "sd15").items()}
    conv_in = "model.diffusion_model.input_blocks.0.0.weight"
    weights[conv_in] = torch.zeros(weights[conv_in].shape[0], 9, 3, 3)
    path = offline / "inpainting.safetensors"
    save_file(weights, str(path))
    with pytest.raises(ModelNotAvailableError, match="inpainting"):
        single_file.checkpoint_architecture(path)


def test_a_file_that_is_not_a_stable_diffusion_checkpoint_is_named(offline):
    """diffusers takes any unrecognised file for SD1.x; a LoRA given as the model is told apart."""
    path = offline / "a-lora.safetensors"
    save_file({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 32)}, str(path))
    with pytest.raises(ModelNotAvailableError, match="a-lora.safetensors is not a Stable Diffusion checkpoint"):
        load_model(str(path), device="cpu")
