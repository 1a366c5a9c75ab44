"""The app's event handlers, called directly with the tiny model."""

import json
import threading
from dataclasses import replace

import gradio as gr
import numpy as np
import pytest
import torch
from conftest import assert_each_person_colours_their_own_region
from PIL import Image

from finecontrol.metadata import read_png, save_png
from finecontrol.scene import MAX_PEOPLE, load_scene
from finecontrol.settings import Settings
from finecontrol.ui import handlers
from finecontrol.ui.engine import Engine

TWO = load_scene("assets/scenes/two_people.json")
KNOBS = handlers.knob_values(Settings(steps=8, seed=3))


@pytest.fixture(scope="module")
def engine(tiny):
    return Engine(name="tiny", pipe=tiny)


def canvas(scene=TWO):
    return scene.to_dict()


def run_generate(engine, value=None, knobs=KNOBS, setting="in a forest"):
    return list(handlers.generate(engine, canvas() if value is None else value, setting, "", *knobs))


def test_parse_scene_merges_the_setting_and_negative_boxes():
    scene = handlers.parse_scene(canvas(), "on the moon", "blurry")
    assert scene.setting == "on the moon" and scene.negative_prompt == "blurry"
    assert scene.people == TWO.people


@pytest.mark.parametrize(
    "value, message",
    [
        (None, "sent no scene"),
        ("{not json", "not a scene"),
        ({"people": [{"pose_keypoints_2d": [1, 2, 3]}]}, "Invalid scene: person 1 has 3 keypoint values"),
        ({"people": canvas()["people"] * 5}, f"too many people: 10 \\(at most {MAX_PEOPLE}\\)"),
        ({**canvas(), "canvas_width": 100}, "not a multiple of 8"),
    ],
)
def test_bad_canvas_values_are_refused_with_a_reason(value, message):
    with pytest.raises(gr.Error, match=message):
        handlers.parse_scene(value, "", "")


def test_settings_from_the_panel_are_validated_and_converted():
    settings = handlers.parse_settings(*handlers.knob_values(Settings(steps=12)))
    assert settings == Settings(steps=12)
    knobs = list(KNOBS)
    knobs[handlers.KNOB_FIELDS.index("steps")] = 12.0  # sliders send floats
    knobs[handlers.KNOB_FIELDS.index("mask_dilation")] = 0  # the slider's "automatic"
    assert handlers.parse_settings(*knobs).steps == 12
    assert handlers.parse_settings(*knobs).mask_dilation is None
    knobs[handlers.KNOB_FIELDS.index("mask_dilation")] = 33.0
    assert handlers.parse_settings(*knobs).mask_dilation == 33
    knobs[handlers.KNOB_FIELDS.index("steps")] = 0
    with pytest.raises(gr.Error, match="Invalid setting: steps must be"):
        handlers.parse_settings(*knobs)
    with pytest.raises(gr.Error, match=f"expected {len(handlers.KNOB_FIELDS)} settings"):
        handlers.parse_settings(1, 2)


def caption_band(width: int) -> int:
    """Height of the white caption band under images `width` px wide (>= 256): a font 1/16 of the
    width, 16 px at least, and a band 1.8 times the font (where the captions fit at that size)."""
    return int(max(16, width // 16) * 1.8)


def assert_captioned_halves(image: np.ndarray, width: int, height: int) -> None:
    """Two `width` x `height` panels 8 white px apart, each with a caption (dark pixels) in the
    white band under it."""
    assert image.shape == (height + caption_band(width), 2 * width + 8, 3)
    assert (image[:, width : width + 8] == 255).all()  # the gap
    band = image[height:]
    for caption in (band[:, :width], band[:, width + 8 :]):
        assert (caption.max(axis=2) < 128).sum() > 100 and (caption == 255).all(axis=2).mean() > 0.8


def test_masks_preview_needs_no_model_and_shows_both_phases():
    image = handlers.masks_preview(canvas(), "", "", *KNOBS)
    assert_captioned_halves(image, TWO.width, TWO.height)
    early, late = image[: TWO.height, : TWO.width], image[: TWO.height, TWO.width + 8 :]
    for panel in (early, late):
        assert_each_person_colours_their_own_region(panel, TWO)


def test_empty_canvas_is_refused_everywhere(engine):
    empty = {"canvas_width": 512, "canvas_height": 512, "people": []}
    for call in (
        lambda: handlers.masks_preview(empty, "", "", *KNOBS),
        lambda: run_generate(engine, value=empty),
        lambda: list(handlers.compare(engine, empty, "", "", 0, *KNOBS)),
        lambda: handlers.check_scene(engine, empty, *KNOBS),
    ):
        with pytest.raises(gr.Error, match="canvas is empty"):
            call()


def test_generate_streams_previews_then_a_png_that_carries_its_scene(engine, monkeypatch):
    monkeypatch.setattr(handlers, "PREVIEW_MIN_SECONDS", 0)
    updates = run_generate(engine)
    previews, final = updates[:-1], updates[-1]
    assert len(previews) == 1 and isinstance(previews[0][0], Image.Image)  # step 4 of 8
    assert previews[0][0].size == (128 // 8, 88 // 8)  # one pixel per latent cell: no VAE decode
    path, control, overlay, prompts = final
    scene, settings = read_png(path)
    assert scene.people == TWO.people and scene.setting == "in a forest"
    assert settings == Settings(steps=8, seed=3)
    assert control.shape == overlay.shape == (88, 128, 3)
    # at 128 px: joint radius 4, dilation radius 5, blur 3 and one 8 px latent cell
    assert_each_person_colours_their_own_region(overlay, TWO, scale=128 / TWO.width, margin=24)
    assert "Person 1: `an astronaut in a forest, best quality`" in prompts
    assert "Person 2: `a samurai in red armor in a forest, best quality`" in prompts


def test_generation_errors_become_messages(tiny):
    broken = Engine(name="sd15", error="ModelNotAvailableError: not downloaded")
    with pytest.raises(gr.Error, match="not available: ModelNotAvailableError"):
        run_generate(broken)

    def out_of_memory(scene, settings, on_step):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")

    with pytest.raises(gr.Error, match="Out of memory: try fewer people"):
        run_generate(Engine(name="tiny", pipe=tiny, run=out_of_memory))


def test_compare_renders_every_method_with_the_same_seeds(engine):
    knobs = handlers.knob_values(Settings(steps=2, seed=5))
    *_, path = handlers.compare(engine, canvas(), "", "", 1, *knobs)
    grid = np.asarray(Image.open(path).convert("RGB"))
    # 3 methods x 2 seeds of the tiny model's 128x88, enlarged twice to 256x176, 8 px apart,
    # each row's captions in a band under it
    row = 176 + caption_band(256)
    assert grid.shape == (2 * row, 3 * 256 + 2 * 8, 3)
    cells = [[grid[r * row : r * row + 176, c * 264 : c * 264 + 256] for c in range(3)] for r in range(2)]
    assert not np.array_equal(cells[0][0], cells[0][1]) and not np.array_equal(cells[0][0], cells[1][0])
    assert (grid[:, 256:264] == 255).all() and (grid[:, 520:528] == 255).all()
    refused = handlers.compare(engine, canvas(), "", "", 9, *knobs)  # refused once iterated
    with pytest.raises(gr.Error, match="Extra seeds"):
        next(refused)


def test_export_then_import_round_trips_the_scene():
    path = handlers.export_scene({**canvas(), "setting": "at night", "negative_prompt": "blurry"})
    doc = json.loads(open(path).read())
    assert len(doc["people"]) == 2 and len(doc["people"][0]["pose_keypoints_2d"]) == 54
    value, *knobs = handlers.import_file(path)
    assert value["people"] == canvas()["people"]
    assert (value["setting"], value["negative_prompt"]) == ("at night", "blurry")
    assert len(knobs) == len(handlers.KNOB_FIELDS) and all(isinstance(k, type(gr.skip())) for k in knobs)
    # an API client's setting and negative prompt replace the value's own
    value, *_ = handlers.import_file(handlers.export_scene(canvas(), "on the moon", ""))
    assert (value["setting"], value["negative_prompt"]) == ("on the moon", "")


def test_importing_a_png_restores_scene_and_settings(tmp_path):
    settings = Settings(method="multicontrolnet", steps=7, seed=42, guidance_scale=6.0)
    save_png(Image.new("RGB", (8, 8)), tmp_path / "made.png", TWO, settings)
    value, *knobs = handlers.import_file(str(tmp_path / "made.png"))
    assert value == TWO.to_dict() and value["setting"] == TWO.setting
    assert value["negative_prompt"] == TWO.negative_prompt
    assert handlers.parse_settings(*knobs) == settings


def test_importing_a_png_warns_about_settings_the_panel_does_not_offer(tmp_path, monkeypatch):
    warnings = []
    monkeypatch.setattr(handlers.gr, "Warning", warnings.append)
    made = Settings(width=256, height=128, eta=0.5, mask_dilation=1, guidance_scale=25.0)
    save_png(Image.new("RGB", (8, 8)), tmp_path / "cli.png", TWO, made)
    value, *knobs = handlers.import_file(str(tmp_path / "cli.png"))
    assert warnings == [
        "cli.png was made with width 256, height 128, eta 0.5, which this app does not offer: generating here "
        "uses the defaults instead. `python -m finecontrol generate cli.png` reproduces it."
    ]
    # everything the panel offers comes back as made, dilation 1 (none) included
    assert handlers.parse_settings(*knobs) == replace(made, width=None, height=None, eta=0.0)


def test_importing_plain_openpose_json_leaves_the_settings_alone(tmp_path):
    path = tmp_path / "openpose.json"
    path.write_text(
        json.dumps(
            {
                "canvas_width": 512,
                "canvas_height": 512,
                "people": [{"pose_keypoints_2d": canvas()["people"][0]["pose_keypoints_2d"]}],
            }
        )
    )
    value, *knobs = handlers.import_file(str(path))
    assert len(value["people"]) == 1 and value["people"][0]["prompt"] == ""
    assert len(knobs) == len(handlers.KNOB_FIELDS) and all(isinstance(k, type(gr.skip())) for k in knobs)


@pytest.mark.parametrize("content, message", [(b"{oops", "not valid JSON"), (b"\x89PNG\r\n\x1a\n", "a truncated PNG")])
def test_bad_imports_are_refused_with_a_reason(tmp_path, content, message):
    path = tmp_path / ("bad.png" if content.startswith(b"\x89") else "bad.json")
    path.write_bytes(content)
    with pytest.raises(gr.Error, match=message):
        handlers.import_file(str(path))


def test_presets_load_and_unknown_ones_are_refused():
    assert {"one_person", "two_people", "three_people", "five_people"} <= set(handlers.preset_names())
    value = handlers.load_preset("three_people")
    assert len(value["people"]) == 3 and value["setting"] == "on a city street"
    assert value == load_scene("assets/scenes/three_people.json").to_dict()
    with pytest.raises(gr.Error, match="Unknown preset"):
        handlers.load_preset("../secrets")


def test_detected_bodies_are_fitted_into_the_canvas_keeping_aspect():
    body = [(0.5, 0.0), (0.5, 1.0)] + [None] * 16
    (person,) = handlers.people_from_detection([body], image_size=(200, 100), canvas_size=(512, 512))
    pose = person.keypoints
    # a 200x100 photo fitted into 512x512: scale 2.56, 128 px bars above and below
    np.testing.assert_allclose(pose[0], (256, 128, 1))
    np.testing.assert_allclose(pose[1], (256, 384, 1))
    assert (pose[2:, 2] == 0).all()


def test_pose_from_photo_adds_people_and_keeps_the_existing_ones():
    body = [(0.3, 0.2), (0.3, 0.3), (0.25, 0.3), (0.22, 0.45)] + [None] * 14
    lonely = [(0.9, 0.9)] + [None] * 17  # one point is not a person
    photo = np.zeros((64, 64, 3), np.uint8)
    value = handlers.pose_from_photo(lambda image: [body, lonely], photo, canvas(), "", "")
    assert len(value["people"]) == 3
    assert value["people"][:2] == canvas()["people"]


@pytest.mark.parametrize(
    "detect, message",
    [
        (lambda image: [], "No person found"),
        (
            lambda image: (_ for _ in ()).throw(RuntimeError("weights missing")),
            "Pose detection is not available: weights missing",
        ),
    ],
)
def test_pose_from_photo_failures_are_explained(detect, message):
    with pytest.raises(gr.Error, match=message):
        handlers.pose_from_photo(detect, np.zeros((8, 8, 3), np.uint8), canvas(), "", "")
    with pytest.raises(gr.Error, match="Upload a photo"):
        handlers.pose_from_photo(detect, None, canvas(), "", "")


def test_offline_pose_detector_fails_fast_with_instructions(monkeypatch, tmp_path):
    from finecontrol.models import ModelNotAvailableError, load_pose_detector

    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotAvailableError, match="--annotators"):
        load_pose_detector()


def test_engine_that_cannot_load_says_why(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    engine = Engine.load("sd15")
    assert engine.pipe is None and "hub cannot be reached" in engine.error
    assert "could not be loaded" in engine.describe()


@pytest.mark.parametrize("name", ["tiny", "sd15-random"])
def test_random_weight_models_are_labelled_as_such(tiny, name):
    text = Engine(name=name, pipe=tiny).describe()
    assert f"`{name}`" in text and "random weights" in text and "noise" in text


def test_trained_models_are_not_labelled_random(tiny):
    assert "random" not in Engine(name="sd15", pipe=tiny).describe()


class FakeClock:
    """A clock that advances only when told (seconds)."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("seconds_per_step, expected_steps", [(0.03, [8, 16]), (0.1, [4, 8, 12, 16])])
def test_previews_come_every_4_steps_and_at_least_min_seconds_apart(
    tiny, monkeypatch, seconds_per_step, expected_steps
):
    """20 steps: a preview every PREVIEW_EVERY steps but the last, thinned to PREVIEW_MIN_SECONDS
    (0.2 s) apart, counted from the start, on a fast model (0.03 s a step: steps 8 and 16 only)."""
    clock = FakeClock()
    monkeypatch.setattr(handlers, "_clock", clock)
    latents = torch.zeros(1, 4, 2, 2)

    def run(scene, settings, on_step):
        for step in range(20):
            clock.now += seconds_per_step
            on_step(step, 20, latents + step)
        return "done"

    fake = Engine(name="tiny", pipe=tiny, run=run)
    monkeypatch.setattr(fake, "preview", lambda x0: int(x0[0, 0, 0, 0]) + 1)  # the step it shows
    *previews, result = handlers._run_with_previews(fake, TWO, Settings(steps=20), lambda *a, **k: None)
    assert previews == expected_steps and result == "done"


def test_a_preview_map_that_cannot_be_fitted_at_load_is_fitted_at_the_first_preview(tiny, monkeypatch, caplog):
    """Where the model cannot run outside a generation (ZeroGPU), loading still succeeds."""
    import finecontrol.models
    import finecontrol.ui.engine as engine_module

    fit = engine_module.previewer_for

    def not_now(pipe):
        raise RuntimeError("no GPU outside a generation")

    monkeypatch.setattr(finecontrol.models, "load_model", lambda *a, **k: tiny)
    monkeypatch.setattr(engine_module, "previewer_for", not_now)
    engine = Engine.load("tiny")
    assert engine.pipe is tiny and engine.error is None
    assert "live previews not fitted at load (RuntimeError: no GPU outside a generation)" in caplog.text
    monkeypatch.setattr(engine_module, "previewer_for", fit)
    assert engine.preview(torch.zeros(1, 4, 3, 5)).size == (5, 3)


def test_masks_preview_is_instant_while_a_generation_runs(tiny):
    """Show masks runs on the torch thread between two steps of a running generation, rather than
    after it."""
    started, release = threading.Event(), threading.Event()

    def run(scene, settings, on_step):
        started.set()
        for step in range(500):  # 5 s unless released
            on_step(step, 500, None)
            if release.wait(0.01):
                break
        return "done"

    slow = Engine(name="tiny", pipe=tiny, run=run)
    generation = threading.Thread(
        target=lambda: list(handlers._run_with_previews(slow, TWO, Settings(), lambda *a, **k: None, previews=False))
    )
    generation.start()
    assert started.wait(10)
    image = handlers.masks_preview(canvas(), "", "", *KNOBS)
    still_running = generation.is_alive()
    release.set()
    generation.join(10)
    assert still_running and image.shape == (TWO.height + caption_band(TWO.width), 2 * TWO.width + 8, 3)


def test_every_torch_computation_runs_on_the_torch_thread(tiny, monkeypatch):
    """Loading, fitting the previews, generating, previews, masks and pose detection all run on
    the one torch thread (a second thread running torch made every step 2.6x slower on 2 cores)."""
    import finecontrol.models
    import finecontrol.ui.engine as engine_module
    from finecontrol.ui.engine import TORCH_THREAD, on_torch_thread

    threads = {}

    def spy(name, fn):
        def wrapped(*args, **kwargs):
            threads.setdefault(name, set()).add(threading.current_thread().name)
            return fn(*args, **kwargs)

        return wrapped

    monkeypatch.setattr(finecontrol.models, "load_model", spy("load", lambda *a, **k: tiny))
    monkeypatch.setattr(engine_module, "previewer_for", spy("preview", engine_module.previewer_for))
    monkeypatch.setattr(handlers, "mask_previews", spy("masks", handlers.mask_previews))
    monkeypatch.setattr(handlers, "PREVIEW_MIN_SECONDS", 0)
    engine = Engine.load("tiny")
    engine.run = spy("generate", engine.run)
    run_generate(engine, knobs=handlers.knob_values(Settings(steps=5)))
    handlers.masks_preview(canvas(), "", "", *KNOBS)
    with pytest.raises(gr.Error, match="No person found"):
        handlers.pose_from_photo(spy("detect", lambda image: []), np.zeros((8, 8, 3), np.uint8), canvas(), "", "")
    torch_thread = on_torch_thread(lambda: threading.current_thread().name)
    assert torch_thread != threading.current_thread().name and TORCH_THREAD._max_workers == 1
    assert threads == {name: {torch_thread} for name in ("load", "preview", "generate", "masks", "detect")}


def test_app_serves_the_demo_with_the_apps_queue(tiny, monkeypatch):
    """app.main launches the demo queued by demo.queue (Gradio's 1 ms polling slowed down)."""
    import app
    from finecontrol.ui.demo import QUEUE_POLL_SECONDS

    launched = {}
    monkeypatch.setattr(
        app.Engine, "load", classmethod(lambda cls, name, controlnet=None, clip=None: cls(name=name, pipe=tiny))
    )
    monkeypatch.setattr(gr.Blocks, "launch", lambda demo, **kwargs: launched.update(demo=demo, **kwargs))
    monkeypatch.setattr("sys.argv", ["app.py", "--model", "tiny", "--port", "7111"])
    app.main()
    queue = launched["demo"]._queue
    assert queue.sleep_when_free == QUEUE_POLL_SECONDS and queue.max_size == 20 and launched["server_port"] == 7111


def test_app_model_default_follows_the_environment(monkeypatch):
    import app

    monkeypatch.setenv("FINECONTROL_MODEL", "/models/mine")
    assert app.parse_args([]).model == "/models/mine"
    monkeypatch.delenv("FINECONTROL_MODEL")
    assert app.parse_args([]).host == "127.0.0.1"


def test_app_model_default_is_sd15_with_cuda_else_the_toy_model_else_tiny(monkeypatch, tmp_path):
    import app
    import finecontrol.models as models

    monkeypatch.delenv("FINECONTROL_MODEL", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert app.parse_args([]).model == "sd15"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert app.parse_args([]).model == "toy"  # the shipped weights are in assets/
    monkeypatch.setattr(models, "TOY_MODEL", tmp_path / "no-toy-here")
    assert app.parse_args([]).model == "tiny"


# ---- what the page runs before Generate, Compare and Show masks ------------------------------


def test_check_scene_refuses_an_empty_canvas_and_a_person_outside_it(engine):
    with pytest.raises(gr.Error, match="The canvas is empty"):
        handlers.check_scene(engine, {"canvas_width": 512, "canvas_height": 512, "people": []}, *KNOBS)
    away = canvas()
    pose = np.asarray(away["people"][1]["pose_keypoints_2d"]).reshape(18, 3)
    pose[pose[:, 2] > 0, 0] += 400  # x 840..1000 on a 768 px canvas: nothing of person 2 shows
    away["people"][1]["pose_keypoints_2d"] = pose.reshape(-1).tolist()
    with pytest.raises(gr.Error, match="Person 2 is outside the canvas: nothing of them shows"):
        handlers.check_scene(engine, away, *KNOBS)


def test_check_scene_refuses_bad_settings_by_name(engine):
    knobs = list(KNOBS)
    knobs[handlers.KNOB_FIELDS.index("steps")] = 0
    with pytest.raises(gr.Error, match="Invalid setting: steps must be"):
        handlers.check_scene(engine, canvas(), *knobs)
    with pytest.raises(gr.Error, match="'setting' must be text, got list"):
        handlers.check_scene(engine, {**canvas(), "setting": ["in a forest"]}, *KNOBS)


def test_check_scene_warns_of_empty_prompts_and_passes_a_good_scene_silently(engine, monkeypatch):
    warnings = []
    monkeypatch.setattr(handlers.gr, "Warning", warnings.append)
    assert handlers.check_scene(engine, canvas(), *KNOBS) is None and warnings == []
    one = canvas()
    one["people"][1]["prompt"] = "  "
    handlers.check_scene(engine, one, *KNOBS)
    both = canvas()
    for person in both["people"]:
        person["prompt"] = ""
    handlers.check_scene(engine, both, *KNOBS)
    assert warnings == [
        "Person 2 has no prompt: the setting alone describes them.",
        "People 1, 2 have no prompt: the setting alone describes them.",
    ]


def test_parse_scene_takes_the_values_own_setting_and_negative_unless_given():
    value = {**canvas(), "setting": "at night", "negative_prompt": "blurry"}
    for scene in (handlers.parse_scene(value), handlers.parse_scene(value, None, None)):
        assert (scene.setting, scene.negative_prompt) == ("at night", "blurry") and scene.people == TWO.people
    scene = handlers.parse_scene(value, "on the moon", "")
    assert (scene.setting, scene.negative_prompt) == ("on the moon", "")  # an empty one replaces it too
    assert value["setting"] == "at night"  # the value itself is left as it was


def test_a_preset_without_a_negative_prompt_leaves_the_canvas_its_own(tmp_path):
    doc = json.loads(open("assets/scenes/two_people.json").read())
    doc.pop("negative_prompt")
    (tmp_path / "no_negative.json").write_text(json.dumps(doc))
    value = handlers.load_preset("no_negative", tmp_path)
    assert "negative_prompt" not in value and value["setting"] == "in a forest"
    assert value["people"] == canvas()["people"]
    assert handlers.load_preset("two_people")["negative_prompt"] == TWO.negative_prompt


def test_compare_yields_previews_then_the_grid_and_counts_its_images(engine, monkeypatch):
    monkeypatch.setattr(handlers, "PREVIEW_MIN_SECONDS", 0)
    labels = []
    updates = handlers.compare(
        engine,
        canvas(),
        "",
        "",
        1,
        *handlers.knob_values(Settings(steps=5, seed=7)),
        progress=lambda fraction, desc: labels.append(desc),
    )
    first = next(updates)  # live: the preview of the first image, while it is being made
    assert isinstance(first, Image.Image) and labels and all(text.startswith("image 1 of 6 ") for text in labels)
    *previews, path = [first, *updates]
    # one preview (step 4 of 5) of each of the 6 images (3 methods x 2 seeds), then the grid PNG
    assert len(previews) == 6 and all(isinstance(p, Image.Image) for p in previews)
    assert isinstance(path, str) and Image.open(path).size == (3 * 256 + 2 * 8, 2 * (176 + caption_band(256)))
    assert labels == [
        f"image {3 * row + column + 1} of 6 ({method}, seed {seed}): step {n}/5"
        for row, seed in enumerate((7, 8))
        for column, method in enumerate(("finecontrol", "controlnet", "multicontrolnet"))
        for n in range(1, 6)
    ]


# ---- words the toy model knows ------------------------------------------------------------------


def test_unknown_words_are_lower_cased_listed_once_in_order():
    from finecontrol.model_info import unknown_words

    vocabulary = ("a", "red", "person", "and")
    assert unknown_words("A Zebra, a RED robot and a zebra", vocabulary) == ["zebra", "robot"]
    assert unknown_words("Robot robot ROBOT", vocabulary) == ["robot"]
    assert unknown_words("red,person;a-red_person.", vocabulary) == []  # punctuation separates words
    assert unknown_words("a red person", vocabulary) == []
    assert unknown_words("anything at all, Zebra", ()) == [] and unknown_words("x", []) == []


def test_the_toy_placeholders_use_only_words_the_toy_model_knows():
    import re
    from types import SimpleNamespace

    from finecontrol.model_info import MODEL_INFO, ModelInfo
    from finecontrol.models import TOY_MODEL
    from finecontrol.ui.engine import TOY_EXAMPLES

    vocabulary = set(json.loads((TOY_MODEL / MODEL_INFO).read_text())["vocabulary"])
    assert len(TOY_EXAMPLES) == 2 and all(TOY_EXAMPLES)
    for text in TOY_EXAMPLES:
        words = re.findall(r"[a-z0-9]+", text.lower())
        assert words and set(words) <= vocabulary, f"{text!r}: {set(words) - vocabulary} unknown to the toy model"
    toy_like = Engine(name="toy", pipe=SimpleNamespace(info=ModelInfo.read(TOY_MODEL)))
    assert toy_like.examples == TOY_EXAMPLES


@pytest.mark.parametrize("extra", [True, 1.5, 4, -1, "1", None, float("nan")])
def test_check_extra_seeds_refuses_all_but_a_whole_number_from_0_to_3(extra):
    with pytest.raises(gr.Error, match="Extra seeds must be a whole number from 0 to 3"):
        handlers.check_extra_seeds(extra)


def test_check_extra_seeds_takes_0_to_3_as_the_slider_sends_them():
    for extra in (0, 1, 2, 3, 2.0):
        assert handlers.check_extra_seeds(extra) is None


def test_check_scene_refuses_a_lora_that_cannot_be_found_by_name(engine):
    """A typo in a person's LoRA, or in the global ones, is a message before anything runs."""
    typo = canvas()
    typo["people"][1]["loras"] = [{"name": "no-such-lora.safetensors", "scale": 1.0}]
    with pytest.raises(gr.Error, match="no LoRA 'no-such-lora.safetensors'"):
        handlers.check_scene(engine, typo, *KNOBS)
    knobs = list(KNOBS)
    knobs[handlers.KNOB_FIELDS.index("loras")] = "./missing/lora.safetensors:0.5"
    with pytest.raises(gr.Error, match="no LoRA './missing/lora.safetensors'"):
        handlers.check_scene(engine, canvas(), *knobs)


def test_a_toy_result_shows_each_persons_colour_check(toy):
    """The toy model's results say, after each person's prompt, whether their colour was found
    (what the toy world's identity score finds on the saved image)."""
    from finecontrol.toyworld.evaluate import ToyScores
    from finecontrol.ui.engine import result_scorer

    engine = Engine(name="toy", pipe=toy, scorer=result_scorer(toy))
    scene = load_scene("assets/scenes/toy/three_people.json")
    knobs = handlers.knob_values(replace(toy.default_settings(), seed=5))
    *_, (path, _, _, prompts) = handlers.generate(engine, scene.to_dict(), scene.setting, "", *knobs)
    found = ToyScores().score(Image.open(path), scene)
    lines = [line for line in prompts.splitlines() if line.startswith("- Person")]
    assert len(lines) == 3
    for line, scores in zip(lines, found):
        words = "colour check: found ✓" if scores["toy_identity"] else "colour check: not found ✗"
        assert line.endswith(f" - {words}"), line
    off_vocabulary = scene.to_dict()  # a prompt the colour check cannot read: no scores, no error
    off_vocabulary["people"][0]["prompt"] = "a red person waving"
    *_, (_, _, _, prompts) = handlers.generate(engine, off_vocabulary, scene.setting, "", *knobs)
    assert "colour check:" not in prompts
    assert prompts.endswith("- Colour check skipped: it reads prompts of the form `a red person` only.")


def test_results_show_clip_identity_when_a_clip_model_is_here_and_nothing_otherwise(tiny, tiny_clip, monkeypatch):
    from finecontrol import models
    from finecontrol.metrics import ClipIdentity
    from finecontrol.ui.engine import result_scorer

    monkeypatch.setattr(models, "_hub_unavailable", lambda: True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert result_scorer(tiny, "org/clip-not-downloaded") is None  # never fetched; no error
    *_, (_, _, _, prompts) = run_generate(Engine(name="tiny", pipe=tiny))
    assert "CLIP" not in prompts
    engine = Engine(name="tiny", pipe=tiny, scorer=ClipIdentity.from_components(*tiny_clip))
    *_, (path, _, _, prompts) = run_generate(engine)
    scene = handlers.parse_scene(canvas(), "in a forest", "")
    expected = engine.scorer.score(Image.open(path), scene)
    lines = [line for line in prompts.splitlines() if line.startswith("- Person")]
    for line, scores in zip(lines, expected, strict=True):
        verdict = "own prompt wins ✓" if scores["clip_own_wins"] else "another person's prompt wins ✗"
        assert line.endswith(f"CLIP: {verdict} (margin {scores['clip_margin']:+.3f})"), line
