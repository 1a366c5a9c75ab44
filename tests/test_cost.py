"""Work the method does not need is not done, and what is done for memory changes nothing:
guidance 1 runs one half, prompt embeddings are cached, chunked model calls equal one batched
call; the cost benchmark counts each step against its floor; sd15-random is SD1.5's shape."""

import json

import pytest
import torch
from conftest import assert_close, make_scene
from torch.utils.flop_counter import FlopCounterMode

import finecontrol.pipeline as pipeline_module
from finecontrol import costs
from finecontrol.models import SD15_CONFIGS, sd15_random_pipeline
from finecontrol.pipeline import NotEnoughMemoryError
from finecontrol.settings import METHODS, Settings

STEPS = 3
FAST = {"steps": STEPS, "seed": 5}


@pytest.fixture
def three_people():
    return make_scene(
        [("walking", "an astronaut", 120.0), ("arms_up", "a samurai", 260.0), ("standing", "a chef", 400.0)],
        setting="on a beach",
    )


def _model_calls(pipe, run) -> list[tuple[str, int]]:
    """(model, batch size) of every ControlNet, UNet and text encoder forward during `run()`."""
    calls = []
    hooks = [
        module.register_forward_pre_hook(
            lambda mod, args, kw, name=name: calls.append((name, (args[0] if args else kw["input_ids"]).shape[0])),
            with_kwargs=True,
        )
        for name, module in (("controlnet", pipe.controlnet), ("unet", pipe.unet), ("text", pipe.text_encoder))
    ]
    try:
        run()
    finally:
        for hook in hooks:
            hook.remove()
    return calls


@pytest.mark.parametrize("method", METHODS)
def test_guidance_one_runs_only_the_conditional_half_and_gives_the_same_image(tiny, two_people, method, monkeypatch):
    settings = Settings(method=method, guidance_scale=1.0, **FAST)
    tiny.clear_caches()
    calls = _model_calls(tiny, lambda: tiny(two_people, settings))
    controlnet_batch = 1 if method == "controlnet" else 2
    unet_batch = 2 if method in ("finecontrol", "finecontrol-all") else 1
    assert [c for c in calls if c[0] != "text"] == [("controlnet", controlnet_batch), ("unet", unet_batch)] * STEPS
    # no negative prompt is encoded at all
    encoded = sum(batch for name, batch in calls if name == "text")
    assert encoded == (1 if method == "controlnet" else 2 if method != "multicontrolnet" else 3)
    one_half = tiny(two_people, settings).latents
    monkeypatch.setattr(pipeline_module, "guidance_halves", lambda settings: 2)
    both_halves = tiny(two_people, settings).latents
    assert_close(one_half, both_halves, atol=1e-5)
    assert (tiny(two_people, Settings(method=method, guidance_scale=1.5, **FAST)).latents - one_half).abs().max() > 1e-3


def test_prompt_embeddings_are_encoded_once_across_calls(tiny, two_people):
    tiny.clear_caches()
    settings = Settings(**FAST)
    first_calls = _model_calls(tiny, lambda: tiny(two_people, settings))
    assert ("text", 3) in first_calls  # two person prompts and the shared negative, distinct texts once
    again = []
    calls = _model_calls(tiny, lambda: again.append(tiny(two_people, settings)))
    assert not [c for c in calls if c[0] == "text"]
    tiny.clear_caches()
    assert torch.equal(again[0].latents, tiny(two_people, settings).latents)
    two_people.people[0].prompt = "a wizard"
    changed = _model_calls(tiny, lambda: tiny(two_people, settings))
    assert [c for c in changed if c[0] == "text"] == [("text", 1)]  # only the new text


def test_the_prompt_cache_is_bounded_and_emptied_when_the_model_moves(tiny, monkeypatch):
    monkeypatch.setattr(pipeline_module, "PROMPT_CACHE_SIZE", 3)
    tiny.clear_caches()
    tiny.encode_prompts(["a", "b", "c", "d"])
    assert list(tiny._prompt_cache) == ["b", "c", "d"]
    tiny.to("cpu", torch.float32)
    assert not tiny._prompt_cache


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("max_batch", [1, 2, 4])
def test_chunked_model_calls_give_the_same_image(tiny, three_people, method, max_batch):
    """Three people, batch 6: chunks of 1, 2 and 4 (the last spans both guidance halves)."""
    settings = Settings(method=method, **FAST)
    whole = tiny(three_people, settings).latents
    chunked = []
    tiny.max_batch = max_batch
    try:
        if method == "finecontrol-all" and max_batch < 3:
            with pytest.raises(NotEnoughMemoryError, match="finecontrol-all composes every layer"):
                tiny(three_people, settings)
            return
        calls = _model_calls(tiny, lambda: chunked.append(tiny(three_people, settings)))
    finally:
        tiny.max_batch = None
    controlnet_batch = 2 if method == "controlnet" else 6
    unet_batch = 6 if method.startswith("finecontrol") else 2
    unet_chunk = max_batch // 3 * 3 if method == "finecontrol-all" else max_batch
    expected = [("controlnet", b) for b in _chunks(controlnet_batch, max_batch)]
    expected += [("unet", b) for b in _chunks(unet_batch, unet_chunk)]
    assert [c for c in calls if c[0] != "text"] == expected * STEPS
    assert_close(chunked[0].latents, whole, atol=1e-5 * whole.abs().max().item())  # float32 rounding


def _chunks(batch: int, size: int) -> list[int]:
    return [min(size, batch - start) for start in range(0, batch, size)]


def test_chunk_size_on_cuda_follows_free_memory_and_refuses_before_any_work(tiny, two_people, monkeypatch):
    """The policy, with CUDA's memory queries answered by the test (no GPU here)."""
    free = {"bytes": 0}
    monkeypatch.setattr(type(tiny), "device", property(lambda self: torch.device("cuda")))
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (free["bytes"], 80 * 2**30))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device: 0)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device: 0)
    per_item = pipeline_module.ACTIVATION_BYTES_PER_LATENT_PIXEL * 96 * 96 * 2
    settings = Settings()
    monkeypatch.setattr(type(tiny), "dtype", property(lambda self: torch.float16))
    free["bytes"] = 10 * per_item
    assert tiny.chunk_size(settings, 8, (96, 96)) == 9  # 90 % of the free memory
    free["bytes"] = 100 * per_item
    assert tiny.chunk_size(settings, 8, (96, 96)) == 16  # never more than the batch
    free["bytes"] = per_item // 2
    with pytest.raises(NotEnoughMemoryError, match="768x768 image needs about"):
        tiny.chunk_size(settings, 8, (96, 96))
    free["bytes"] = 0
    calls = _model_calls(tiny, lambda: pytest.raises(NotEnoughMemoryError, tiny, two_people, settings))
    assert calls == []  # refused before the first model call


def test_a_step_that_runs_out_of_gpu_memory_is_retried_in_smaller_chunks(tiny, three_people, monkeypatch):
    settings = Settings(**FAST)
    whole = tiny(three_people, settings).latents
    forward = type(tiny.unet).forward

    def limited(self, sample, *args, **kwargs):
        if sample.shape[0] > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return forward(self, sample, *args, **kwargs)

    monkeypatch.setattr(type(tiny.unet), "forward", limited)
    chunked = []
    calls = _model_calls(tiny, lambda: chunked.append(tiny(three_people, settings)))
    unet = [batch for name, batch in calls if name == "unet"]
    assert unet[:3] == [6, 3, 1] and set(unet[3:]) == {1}  # 6 fails, 3 fails, then 1 at a time for good
    assert_close(chunked[-1].latents, whole, atol=1e-5 * whole.abs().max().item())

    def never(self, sample, *args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    monkeypatch.setattr(type(tiny.unet), "forward", never)
    with pytest.raises(NotEnoughMemoryError, match="out of GPU memory with 1 branch"):
        tiny(three_people, settings)


@pytest.mark.parametrize("guidance", [7.5, 1.0])
def test_each_step_costs_exactly_its_floor_in_flops(tiny, guidance):
    """The floor G * N * (U + C) for finecontrol, less the UNet's last convolution, which runs once
    per half on the composed feature instead of once per person."""
    unit = costs.unit_cost(tiny, 128, repeats=1)
    halves = 2 if guidance != 1 else 1
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        tiny.unet.conv_out(torch.zeros(1, tiny.unet.conv_out.in_channels, 16, 16))
    last_conv = counter.get_total_flops()
    for n in (1, 3):
        scene = costs.crowd(n, 128, 128)
        for method in ("finecontrol", "multicontrolnet", "controlnet"):
            settings = Settings(method=method, guidance_scale=guidance, width=128, height=128)
            flops = costs.step_flops(tiny, scene, settings)
            floor = costs.floor_flops(method, n, halves, unit)
            shared = halves * (n - 1) * last_conv if method == "finecontrol" else 0
            assert flops == floor - shared, (method, n, flops / floor)
    assert costs.floor_flops("finecontrol", 3, 2, unit) == 6 * (unit.unet_flops + unit.controlnet_flops)


def test_cost_benchmark_writes_json_and_a_table(tmp_path):
    from finecontrol.benchmark import main

    out = tmp_path / "cost.json"
    main(["--model", "tiny", "--size", "64", "--people", "1,2", "--repeats", "1", "--flops", "--json", str(out)])
    doc = json.loads(out.read_text())
    rows = {(r["method"], r["people"]): r for r in doc["steps"]}
    assert set(rows) == {(m, n) for m in ("finecontrol", "controlnet", "multicontrolnet") for n in (1, 2)}
    assert all(0.99 < r["flops_ratio"] <= 1.0 and r["seconds"] > 0 and r["runs"] == 2 for r in rows.values())
    assert rows["finecontrol", 2]["floor_flops"] == 2 * rows["finecontrol", 1]["floor_flops"]
    table = out.with_suffix(".md").read_text()
    assert "| 64 | 2 | finecontrol |" in table and "finecontrol / multicontrolnet" in table


def test_sd15_random_has_the_published_architectures():
    """Built on the meta device (no memory, no time): parameter counts of SD1.5's UNet, VAE and
    CLIP ViT-L/14 text encoder and of ControlNet v1.1, and the pipeline's view of them."""
    with torch.device("meta"):
        pipe = sd15_random_pipeline()
    counts = {
        name: sum(p.numel() for p in getattr(pipe, name).parameters())
        for name in ("unet", "controlnet", "vae", "text_encoder")
    }
    assert counts == {"unet": 859_520_964, "controlnet": 361_279_120, "vae": 83_653_863, "text_encoder": 123_060_480}
    assert (pipe.num_residuals, pipe.split, pipe.vae_scale, pipe.resolution) == (12, 9, 8, 512)
    assert pipe.text_encoder.config.vocab_size == 49408 and len(pipe.tokenizer) <= 49408
    assert pipe.scheduler.config.beta_schedule == "scaled_linear" and not pipe.scheduler.config.set_alpha_to_one
    assert sorted(p.name for p in SD15_CONFIGS.glob("*.json")) == [
        "controlnet.json",
        "scheduler.json",
        "text_encoder.json",
        "unet.json",
        "vae.json",
    ]


def test_control_images_masks_and_their_resizes_are_made_once_per_call(tiny, two_people, monkeypatch):
    """However many steps run: one set of maps, one batch of control images, one resize of each
    mask set to each feature grid."""
    import finecontrol.fusion as fusion_module

    counts = {}

    def counting(module, name):
        original = getattr(module, name)

        def wrapper(*args, **kwargs):
            counts[name] = counts.get(name, 0) + 1
            return original(*args, **kwargs)

        monkeypatch.setattr(module, name, wrapper)

    counting(pipeline_module, "scene_maps")
    counting(fusion_module, "resize_masks")
    counting(type(tiny), "_image_batch")
    per_steps = {}
    for steps in (2, 6):
        counts.clear()
        tiny(two_people, Settings(steps=steps, seed=1))
        per_steps[steps] = dict(counts)
    assert per_steps[2] == per_steps[6]
    assert per_steps[6]["scene_maps"] == per_steps[6]["_image_batch"] == 1
    assert per_steps[6]["resize_masks"] <= 2 * 4  # early and late masks, 4 feature grids at most
