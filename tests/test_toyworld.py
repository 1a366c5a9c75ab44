"""The toy world and its metrics (no trained model needed)."""

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from finecontrol.toyworld.evaluate import body_masks, from_scene, score_image, to_scene
from finecontrol.toyworld.world import BACKGROUNDS, COLORS, SETTINGS, VOCABULARY, random_scene, render_scene


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_scenes_have_distinct_colours_and_captions_name_everyone(n):
    rng = np.random.default_rng(n)
    toy = random_scene(rng, people=n)
    assert len(set(toy.colors)) == n and len(toy.poses) == n
    caption = toy.caption()
    assert caption.endswith(SETTINGS[toy.setting])
    assert all(f"a {c} person" in caption for c in toy.colors)
    assert set(caption.split()) <= set(VOCABULARY)


@pytest.mark.parametrize("seed", range(4))
def test_crowded_scenes_halve_the_distance_between_people(seed):
    def centres(spread):
        scene = random_scene(np.random.default_rng(seed), people=3, spread=spread)
        return np.sort([pose[:, 0].mean() for pose in scene.poses])

    usual, crowded = centres(1.0), centres(0.5)
    assert np.diff(usual).min() > 10  # people stand apart...
    np.testing.assert_allclose(np.diff(crowded), np.diff(usual) / 2, atol=2.0)  # ...and closer when crowded
    assert abs(crowded.mean() - 32) < 4  # around the centre of the 64 px canvas


def test_scene_becomes_an_engine_scene_with_a_prompt_per_person():
    toy = random_scene(np.random.default_rng(0), people=3)
    scene = to_scene(toy)
    assert [p.prompt for p in scene.people] == [f"a {c} person" for c in toy.colors]
    assert (scene.width, scene.height, scene.setting, scene.negative_prompt) == (64, 64, SETTINGS[toy.setting], "")


def test_metrics_score_the_ground_truth_image_as_correct():
    rng = np.random.default_rng(7)
    identity, fidelity, setting = [], [], []
    for _ in range(40):
        toy = random_scene(rng)
        score = score_image(render_scene(toy, rng), toy)
        identity += score["identity"]
        fidelity += score["fidelity"]
        setting.append(score["setting"])
    assert np.mean(identity) >= 0.97
    assert np.mean(fidelity) >= 0.9
    assert np.mean(setting) == 1.0


def test_metrics_catch_swapped_colours_and_missing_people():
    rng = np.random.default_rng(3)
    toy = random_scene(rng, people=2, setting="snow")
    image = render_scene(toy, rng)
    swapped = render_scene(type(toy)(toy.setting, toy.colors[::-1], toy.poses), rng)
    assert score_image(swapped, toy)["identity"] == [False, False]
    empty = np.empty_like(image)
    empty[:] = BACKGROUNDS["snow"]
    score = score_image(empty, toy)
    assert score["identity"] == [False, False] and max(score["fidelity"]) == 0
    night = np.empty_like(image)
    night[:] = BACKGROUNDS["night"]
    assert not score_image(night, toy)["setting"]


def test_a_scene_in_toy_words_converts_back_to_the_toy_scene_at_64_px():
    toy = random_scene(np.random.default_rng(3), people=3)
    back = from_scene(to_scene(toy))
    assert (back.setting, back.colors) == (toy.setting, toy.colors)
    assert all(np.allclose(a, b) for a, b in zip(back.poses, toy.poses))
    big = to_scene(toy)
    big.width, big.height = 512, 256
    for person in big.people:
        person.keypoints = person.keypoints * [8, 4, 1]
    assert all(np.allclose(a, b) for a, b in zip(from_scene(big).poses, toy.poses))
    big.people[0].prompt = "an astronaut"
    with pytest.raises(ValueError, match="not a toy scene"):
        from_scene(big)


def test_body_masks_leave_out_pixels_people_share():
    toy = random_scene(np.random.default_rng(0), people=2)
    a, b = body_masks([toy.poses[0], toy.poses[0]])
    assert not a.any() and not b.any()
    assert all(m.any() for m in body_masks(toy.poses))


def test_palette_colours_are_well_separated_from_each_other_and_the_backgrounds():
    colours = list(COLORS.values())
    for i, c in enumerate(colours):
        for other in colours[i + 1 :] + list(BACKGROUNDS.values()):
            assert np.linalg.norm(np.subtract(c, other)) > 80, (c, other)


def test_the_longest_caption_fits_the_text_encoder_whole(tmp_path):
    """Four people "on a beach": every word, the setting included, reaches the model."""
    from finecontrol.tokenizer import write_tokenizer
    from finecontrol.toyworld.train import TrainConfig, _tokens, build_models

    max_tokens = TrainConfig().max_tokens
    write_tokenizer(VOCABULARY, tmp_path / "tokenizer")
    tokenizer = build_models(tmp_path / "tokenizer", max_tokens)[0]
    toy = random_scene(np.random.default_rng(0), people=4, setting="beach")
    ids = _tokens(tokenizer, [toy.caption()])[0].tolist()
    words = toy.caption().split()
    assert ids[: len(words) + 2] == [
        tokenizer.bos_token_id,
        *tokenizer.convert_tokens_to_ids([w + "</w>" for w in words]),
        tokenizer.eos_token_id,
    ]
    assert len(ids) == max_tokens
    with pytest.raises(ValueError):
        _tokens(tokenizer, [" and ".join([toy.caption()] * 2)])


def test_toy_name_without_weights_says_how_to_train_them(monkeypatch, tmp_path):
    import finecontrol.models as models

    monkeypatch.setattr(models, "TOY_MODEL", tmp_path / "toyworld")
    assert models.offline_default() == "tiny"
    with pytest.raises(models.ModelNotAvailableError, match="python -m finecontrol.toyworld train --out"):
        models.load_model("toy", device="cpu")


# Held-out loss at both steps of every stage, a checkpoint after every step.
MICRO_TRAINING = {
    "vae_steps": 2,
    "unet_steps": 2,
    "controlnet_steps": 2,
    "pool_size": 64,
    "heldout_size": 8,
    "heldout_interval": 1,
    "checkpoint_interval": 1,
}


@pytest.fixture(scope="module")
def micro_trained(tmp_path_factory):
    """A model folder from a few training steps of every stage (trained once for this module)."""
    from finecontrol.toyworld.train import train

    folder = tmp_path_factory.mktemp("micro") / "toyworld"
    train(folder, **MICRO_TRAINING)
    return folder


def assert_same_weights(folder, other):
    weights = sorted(p.relative_to(folder) for p in folder.rglob("*.safetensors"))
    assert len(weights) == 4
    for path in weights:
        assert (folder / path).read_bytes() == (other / path).read_bytes(), path


@pytest.mark.slow
def test_training_is_reproducible_bit_for_bit(micro_trained, tmp_path):
    from finecontrol.toyworld.train import train

    train(tmp_path / "again", **MICRO_TRAINING)
    assert_same_weights(micro_trained, tmp_path / "again")


@pytest.mark.slow
def test_a_resumed_run_gives_the_weights_of_an_uninterrupted_one(micro_trained, tmp_path, monkeypatch):
    """Stopped inside the UNet stage, resumed, stopped inside the ControlNet stage, resumed."""
    import finecontrol.toyworld.train as training

    class Stop(Exception):
        pass

    stops, save = [("unet", 1), ("controlnet", 1)], training.save_checkpoint

    def save_and_stop(run, stage, step, optimizer, schedule):
        save(run, stage, step, optimizer, schedule)
        if stops and stops[0] == (stage, step):
            stops.pop(0)
            raise Stop

    monkeypatch.setattr(training, "save_checkpoint", save_and_stop)
    folder = tmp_path / "resumed"
    with pytest.raises(Stop):
        training.train(folder, **MICRO_TRAINING)
    with pytest.raises(ValueError, match="settings of its checkpoint"):
        training.train(folder, resume=True, unet_steps=3)
    with pytest.raises(Stop):
        training.train(folder, resume=True)
    training.train(folder, resume=True, **MICRO_TRAINING)
    assert not stops
    assert_same_weights(micro_trained, folder)
    log = json.loads((folder / "training_log.json").read_text())
    assert log == json.loads((micro_trained / "training_log.json").read_text())
    record = json.loads((folder / "training_config.json").read_text())
    assert record["resumed"] == [{"stage": "unet", "step": 1}, {"stage": "controlnet", "step": 1}]
    assert record["steps"] == {"vae": 2, "unet": 2, "controlnet": 2}
    assert not (folder / "checkpoint").exists()  # removed once the model is written


@pytest.mark.slow
def test_the_run_records_its_settings_seed_steps_and_library_versions(micro_trained):
    import platform
    from dataclasses import asdict

    import diffusers
    import torch
    import transformers

    from finecontrol.toyworld.train import TrainConfig

    record = json.loads((micro_trained / "training_config.json").read_text())
    assert record == {
        "config": asdict(TrainConfig(**MICRO_TRAINING)),
        "seed": 0,
        "steps": {"vae": 2, "unet": 2, "controlnet": 2},
        "resumed": [],
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "diffusers": diffusers.__version__,
            "transformers": transformers.__version__,
            "numpy": np.__version__,
        },
    }
    assert record["config"]["pool_size"] == 64 and record["config"]["batch_size"] == 32
    info = json.loads((micro_trained / "finecontrol.json").read_text())
    app_reads = {
        "resolution",
        "stick_width",
        "joint_radius",
        "stroke_scaling",
        "vocabulary",
        "defaults",
        "negative_prompt",
    }
    assert set(info) == app_reads | {"training_minutes"}  # the new records go elsewhere
    assert not (micro_trained / "checkpoint").exists()


@pytest.mark.slow
def test_the_heldout_loss_is_logged_beside_the_training_loss_in_every_stage(micro_trained):
    log = json.loads((micro_trained / "training_log.json").read_text())
    assert [(e["stage"], e["step"]) for e in log] == [
        (stage, step) for stage in ("vae", "unet", "controlnet") for step in (0, 1)
    ]
    for entry in log:
        assert set(entry) == {"stage", "step", "loss", "heldout_loss"}
        assert 0 < entry["heldout_loss"] < 10 and entry["heldout_loss"] != entry["loss"]


@pytest.mark.slow
def test_the_heldout_loss_leaves_the_training_draws_alone(micro_trained, tmp_path):
    """Same weights whether the held-out loss is measured at every step on 8 scenes or never on 4."""
    from finecontrol.toyworld.train import train

    train(tmp_path / "no_heldout", **{**MICRO_TRAINING, "heldout_size": 4, "heldout_interval": 0})
    assert_same_weights(micro_trained, tmp_path / "no_heldout")
    log = json.loads((tmp_path / "no_heldout" / "training_log.json").read_text())
    assert [e["step"] for e in log] == [0, 0, 0] and all("heldout_loss" not in e for e in log)


@pytest.mark.slow
def test_a_freshly_trained_model_runs_in_the_engine_and_the_app(micro_trained, tmp_path, monkeypatch):
    """A few training steps of every stage, then the whole path: folder -> engine -> app."""
    import finecontrol.models as models
    from finecontrol.ui.demo import build_demo
    from finecontrol.ui.engine import Engine

    monkeypatch.setattr(models, "TOY_MODEL", micro_trained)
    assert models.offline_default() == "toy"
    pipe = models.load_model("toy", device="cpu")
    assert pipe.resolution == 64 and pipe.stroke_sizes((64, 64)) == (1, 2)
    defaults = pipe.default_settings()
    declared = json.loads((micro_trained / "finecontrol.json").read_text())
    assert declared["defaults"] and all(getattr(defaults, k) == v for k, v in declared["defaults"].items())

    from finecontrol.scene import load_scene

    scene = load_scene("assets/scenes/toy/three_people.json")
    result = pipe(scene, replace(defaults, steps=3))
    assert result.image.size == (64, 64) and result.prompts.people[0] == "a red person in snow"
    engine = Engine(name="toy", pipe=pipe)
    assert engine.knows_words and "cyan" in engine.describe() and "random weights" not in engine.describe()
    # the app opens with the model's own defaults, negative prompt and the toy presets
    components = [c["props"] for c in build_demo(engine).config["components"] if "props" in c]
    shown = {props.get("label"): props for props in components}
    assert shown["Guidance scale"]["value"] == defaults.guidance_scale
    assert shown["Quality suffix"]["value"] == defaults.quality_suffix
    (canvas,) = [props for props in components if props.get("elem_id") == "pose-editor"]
    assert canvas["value"]["negative_prompt"] == declared["negative_prompt"]  # the canvas holds it
    assert canvas["props"]["vocabulary"] == declared["vocabulary"]  # the page checks prompts against it
    presets = sorted(p.stem for p in Path("assets/scenes/toy").glob("*.json"))
    assert shown["Preset scenes"]["samples"] == [[name] for name in presets]

    from finecontrol.toyworld.evaluate import evaluate, write_summary

    results = evaluate(pipe, people=[2, 3], scenes=2, out=tmp_path / "eval", settings=replace(defaults, steps=2))
    assert set(results) == {"finecontrol", "controlnet", "multicontrolnet"}
    for by_n in results.values():
        assert set(by_n) == {"2", "3"}
        assert by_n["2"]["persons"] <= 4 and 0 <= by_n["3"]["identity_accuracy"] <= 1
    write_summary(results, tmp_path / "eval")
    assert (tmp_path / "eval" / "summary.png").stat().st_size > 0
    assert json.loads((tmp_path / "eval" / "summary.json").read_text()) == results
    assert (tmp_path / "eval" / "report.html").is_file()
