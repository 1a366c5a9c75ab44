"""LoRAs: loading (diffusers and kohya files, names, the hub offline) and their exactness: a
person's LoRA acts on their branch only, inside the one batched UNet call, exactly as that branch
run with the LoRA fused into a copy of the UNet and text encoder."""

import copy
import itertools
from dataclasses import replace

import pytest
import torch
from conftest import assert_close, make_scene
from diffusers import StableDiffusionPipeline
from diffusers.utils import convert_state_dict_to_kohya
from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model
from safetensors.torch import save_file

from finecontrol import loras
from finecontrol.lora_mixing import LoraMix, lora_layers
from finecontrol.metadata import read_png, save_png
from finecontrol.models import ModelNotAvailableError, tiny_pipeline
from finecontrol.pipeline import Conditioning, FineControlPipeline
from finecontrol.scene import LoraRef, SceneError, parse_loras, scene_from_dict
from finecontrol.settings import Settings, SettingsError

UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "conv1", "conv2", "proj_in", "proj_out"]
TEXT_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1"]
NAMES = ("a", "b")
FAST = dict(steps=3, seed=3, guidance_scale=7.0, harmony=0.5)
# In float64, so that what differs only by rounding (a LoRA fused into the weights, or added as
# B(A(x)) beside them) agrees to ATOL and anything else shows.
DTYPE, ATOL = torch.float64, 1e-9


@pytest.fixture(scope="module")
def lora_models(tmp_path_factory):
    """A clean tiny model; copies of its UNet and text encoder carrying two random LoRAs (`a`, `b`:
    non-zero B matrices, `a` with text-encoder weights, `b` on the UNet only), each also saved as
    a diffusers-format file `NAME.safetensors` in a folder, and `a` as a kohya-format file."""
    base = tiny_pipeline().to("cpu", DTYPE)
    folder = tmp_path_factory.mktemp("loras")
    unet, text = copy.deepcopy(base.unet), copy.deepcopy(base.text_encoder)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(7)
        for name in NAMES:
            unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=UNET_TARGETS), adapter_name=name)
            inject_adapter_in_model(LoraConfig(r=4, lora_alpha=4, target_modules=TEXT_TARGETS), text, adapter_name=name)
        for layer in [*lora_layers(unet), *lora_layers(text)]:
            for name in NAMES:
                torch.nn.init.normal_(layer.lora_B[name].weight, std=0.05)
        for layer in lora_layers(text):  # `b` is saved without text-encoder weights: it has none here either
            torch.nn.init.zeros_(layer.lora_B["b"].weight)
    for name in NAMES:
        # PEFT keys, as diffusers' `save_lora_adapter` writes them (convert_state_dict_to_diffusers
        # would turn only the attention keys into the older `lora.down` names: a mixed file)
        unet_layers = get_peft_model_state_dict(unet, adapter_name=name)
        text_layers = get_peft_model_state_dict(text, adapter_name=name)
        StableDiffusionPipeline.save_lora_weights(
            folder,
            unet_lora_layers=unet_layers,
            text_encoder_lora_layers=text_layers if name == "a" else None,
            weight_name=f"{name}.safetensors",
        )
    peft_a = {f"unet.{k}": v for k, v in get_peft_model_state_dict(unet, adapter_name="a").items()}
    peft_a |= {f"text_encoder.{k}": v for k, v in get_peft_model_state_dict(text, adapter_name="a").items()}
    kohya = {k: v.contiguous() for k, v in convert_state_dict_to_kohya(peft_a).items()}
    save_file(kohya, folder / "a_kohya.safetensors")
    return base, unet, text, folder


def fused(model: torch.nn.Module, scales: dict[str, float]) -> torch.nn.Module:
    """A copy of `model` with its LoRAs merged into the weights at `scales` (0 for the others)."""
    model = copy.deepcopy(model).to(DTYPE)
    for layer in lora_layers(model):
        for name in NAMES:
            if name in layer.lora_A:
                layer.set_scale(name, scales.get(name, 0.0))
        layer.merge(adapter_names=[n for n in NAMES if n in layer.lora_A])
    return model


def reference(base: FineControlPipeline, unet, text) -> FineControlPipeline:
    """A pipeline of `base`'s components with this UNet and text encoder."""
    return FineControlPipeline(base.vae, text, base.tokenizer, unet, base.controlnet, base.scheduler, info=base.info)


@pytest.fixture
def pipe(lora_models, monkeypatch):
    """A fresh tiny model whose LoRA folder is the test's."""
    monkeypatch.setattr(loras, "LORA_DIRS", [lora_models[3]])
    return tiny_pipeline().to("cpu", DTYPE)


@pytest.fixture
def scene():
    return make_scene([("walking", "an astronaut", 170.0), ("arms_up", "a samurai", 340.0)], setting="in a forest")


def with_loras(scene, *people_loras):
    scene = copy.deepcopy(scene)
    for person, refs in zip(scene.people, people_loras):
        person.loras = list(refs)
    return scene


def test_each_row_of_one_batched_unet_call_equals_its_lora_fused_into_a_copy(lora_models, pipe):
    base, unet, text, _ = lora_models
    rows = [{"a": 0.7}, {"b": 1.3, "a": -0.4}, {}, {"a": 1.0}]
    adapters = {name: loras.load_lora(pipe, name).adapter for name in NAMES}
    mix = LoraMix(pipe.unet, {adapters[n]: [row.get(n, 0.0) for row in rows] for n in NAMES})
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(len(rows), 4, 16, 16, generator=generator, dtype=DTYPE)
    context = torch.randn(len(rows), 77, 32, generator=generator, dtype=DTYPE)
    with torch.no_grad():
        with mix:
            ours = pipe.unet(sample, 500, encoder_hidden_states=context).sample
        for r, scales in enumerate(rows):
            expected = fused(unet, scales)(sample[r : r + 1], 500, encoder_hidden_states=context[r : r + 1]).sample
            assert_close(ours[r : r + 1], expected, atol=ATOL)
        plain = base.unet(sample, 500, encoder_hidden_states=context).sample
    assert (ours[0] - plain[0]).abs().max() > 1e-3  # the LoRA does change the output
    assert torch.equal(ours[2], plain[2])  # a row without LoRAs is the base model's, bit for bit


def test_a_persons_lora_equals_their_branch_with_it_fused_into_the_unet_and_text_encoder(lora_models, pipe, scene):
    base, unet, text, _ = lora_models
    one = copy.deepcopy(scene)
    one.people = one.people[:1]
    ours = pipe(with_loras(one, [LoraRef("a", 0.8)]), Settings(**FAST), decode=False).latents
    expected = reference(base, fused(unet, {"a": 0.8}), fused(text, {"a": 0.8}))(one, Settings(**FAST), decode=False)
    assert_close(ours, expected.latents, atol=ATOL)
    plain = base(one, Settings(**FAST), decode=False).latents
    assert (ours - plain).abs().max() > 1e-3


def test_a_lora_on_every_person_equals_the_same_global_lora_and_the_fused_model(lora_models, pipe, scene):
    base, unet, text, _ = lora_models
    everyone = pipe(with_loras(scene, [LoraRef("a", 0.6)], [LoraRef("a", 0.6)]), Settings(**FAST), decode=False)
    global_ = pipe(scene, Settings(**FAST, loras="a:0.6"), decode=False)
    assert torch.equal(everyone.latents, global_.latents)
    expected = reference(base, fused(unet, {"a": 0.6}), fused(text, {"a": 0.6}))(scene, Settings(**FAST), decode=False)
    assert_close(global_.latents, expected.latents, atol=ATOL)
    assert global_.loras == [[LoraRef("a", 0.6)], [LoraRef("a", 0.6)]]


def test_scale_0_is_no_lora_bit_for_bit(lora_models, pipe, scene):
    base = lora_models[0]
    zero = pipe(with_loras(scene, [LoraRef("a", 0.0)], [LoraRef("b", 0.0)]), Settings(**FAST, loras="a:0"))
    # texts cached by earlier tests were encoded in other batches, which can round differently
    base.clear_caches()
    plain = base(scene, Settings(**FAST))
    assert torch.equal(zero.latents, plain.latents)


@pytest.mark.parametrize("max_batch", [None, 1])
def test_two_people_with_different_loras_equal_their_separately_fused_branches(lora_models, pipe, scene, max_batch):
    """Person 1: LoRA a (UNet and text encoder) at 0.9; person 2: LoRA b at 1.2 and global a at
    -0.3. The reference runs each branch through its own fused copies of the UNet and text
    encoder (one branch per UNet call, composed as FineControl composes chunks)."""
    base, unet, text, _ = lora_models
    settings = Settings(**FAST, loras="a:-0.3")
    pipe.max_batch = max_batch
    ours = pipe(with_loras(scene, [LoraRef("a", 1.2)], [LoraRef("b", 1.2)]), settings, decode=False).latents
    per_person = [{"a": 0.9}, {"a": -0.3, "b": 1.2}]

    ref = reference(base, copy.deepcopy(base.unet), base.text_encoder)
    ref.max_batch = 1
    unets = [fused(unet, scales) for scales in per_person]
    texts = [fused(text, scales) for scales in per_person]
    for copy_ in unets:
        copy_.conv_norm_out = ref.unet.conv_norm_out  # where FineControl composes the branches
    calls = itertools.count()
    ref.unet.forward = lambda *args, **kwargs: unets[next(calls) % 2](*args, **kwargs)  # rows alternate people

    def encode(prompts, loras=None, negative=False):
        ids = base.tokenizer(prompts, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
        return Conditioning(torch.cat([texts[r % 2](ids.input_ids[r : r + 1])[0] for r in range(len(prompts))]))

    ref.encode_prompts = encode
    expected = ref(scene, replace(settings, loras=""), decode=False).latents
    assert_close(ours, expected, atol=ATOL)


def test_person_scales_are_summed_with_the_global_ones(lora_models, pipe, scene):
    """Global a at -0.3 plus person 1's a at 1.2 is a at 0.9 (what the test above relies on)."""
    ours = pipe(with_loras(scene, [LoraRef("a", 1.2)]), Settings(**FAST, loras="a:-0.3"), decode=False).latents
    same = pipe(with_loras(scene, [LoraRef("a", 0.9)], [LoraRef("a", -0.3)]), Settings(**FAST), decode=False).latents
    assert_close(ours, same, atol=1e-6)


def test_guidance_1_and_few_step_schedulers_run_with_loras(pipe, scene):
    for scheduler in ("lcm", "tcd"):
        settings = Settings(steps=4, seed=1, guidance_scale=1.0, scheduler=scheduler, loras="a")
        first = pipe(with_loras(scene, [], [LoraRef("b", 0.5)]), settings, decode=False).latents
        again = pipe(with_loras(scene, [], [LoraRef("b", 0.5)]), settings, decode=False).latents
        assert torch.isfinite(first).all() and torch.equal(first, again)  # seeded, also the per-step noise


def test_a_kohya_file_loads_as_the_same_lora(lora_models, pipe, scene):
    one = copy.deepcopy(scene)
    one.people = one.people[:1]
    kohya = pipe(with_loras(one, [LoraRef("a_kohya", 0.8)]), Settings(**FAST), decode=False).latents
    diffusers_format = pipe(with_loras(one, [LoraRef("a", 0.8)]), Settings(**FAST), decode=False).latents
    assert_close(kohya, diffusers_format, atol=ATOL)
    assert pipe.loras[str((lora_models[3] / "a_kohya.safetensors").resolve())].text_encoder


def test_each_lora_loads_once_by_name_path_or_folder(lora_models, pipe):
    folder = lora_models[3]
    assert loras.available_loras(pipe) == ["a", "a_kohya", "b"]
    first = loras.load_lora(pipe, "a")
    assert loras.load_lora(pipe, str(folder / "a.safetensors")) is first
    assert first.text_encoder and not loras.load_lora(pipe, "b").text_encoder
    assert len(pipe.loras) == 2
    assert not any(name.startswith("lora") for name, _ in pipe.controlnet.named_modules() if "lora" in name)


def test_unknown_and_offline_hub_loras_fail_fast_with_what_to_do(pipe, monkeypatch):
    with pytest.raises(loras.LoraNotAvailableError, match="no LoRA 'nothing'.*available: a, a_kohya, b"):
        loras.load_lora(pipe, "nothing")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(
        ModelNotAvailableError, match="not in the local cache and the Hugging Face hub cannot be reached"
    ):
        loras.load_lora(pipe, "someone/not-a-cached-lora")


def test_the_scene_field_is_validated_and_kept_through_json_and_png(scene, tmp_path):
    people = with_loras(scene, [LoraRef("a", 0.8), LoraRef("org/style", -1.0)])
    doc = people.to_dict()
    assert doc["people"][0]["loras"] == [{"name": "a", "scale": 0.8}, {"name": "org/style", "scale": -1.0}]
    assert "loras" not in doc["people"][1]
    assert scene_from_dict(doc) == people
    path = tmp_path / "out.png"
    from PIL import Image

    save_png(Image.new("RGB", (8, 8)), path, people, Settings(loras="x:0.5"))
    back, settings = read_png(path)
    assert back == people and settings.loras == "x:0.5"
    for bad, message in [
        ([{"name": ""}], "non-empty"),
        ([{"name": "a", "scale": float("nan")}], "scale"),
        ([{"name": "a", "scale": 9}], "scale"),
        ([{"name": "a"}] * 5, "at most 4"),
        ("a", "must be a list"),
        ([{"name": "a", "weight": 1}], "unknown LoRA fields"),
    ]:
        doc["people"][0]["loras"] = bad
        with pytest.raises(SceneError, match=message):
            scene_from_dict(doc)


def test_the_settings_text_is_parsed_and_validated():
    assert parse_loras("a:0.5, org/b ,C:\\x.safetensors") == [
        LoraRef("a", 0.5),
        LoraRef("org/b", 1.0),
        LoraRef("C:\\x.safetensors", 1.0),
    ]
    for bad in ("a:x", "a:inf", "a:5", ":0.5"):
        with pytest.raises(SettingsError):
            Settings(loras=bad)
