"""The app's API, driven with gradio_client against the app served on 127.0.0.1."""

import base64
import io
import json
import time

import pytest
from gradio_client import Client, handle_file
from PIL import Image

from finecontrol.metadata import read_png
from finecontrol.scene import load_scene
from finecontrol.settings import Settings, knobs
from finecontrol.ui import handlers
from finecontrol.ui.handlers import knob_values

TWO = load_scene("assets/scenes/two_people.json")


@pytest.fixture(scope="module")
def client(app_url):
    return Client(app_url, verbose=False)


def inline(value: dict, kind: str) -> Image.Image:
    """An image the app sent inside the update (a data URL, no file), decoded."""
    header, data = value["url"].split(",", 1)
    assert value["path"] is None and header == f"data:image/{kind};base64"
    return Image.open(io.BytesIO(base64.b64decode(data)))


def value(scene=TWO, setting: str = "", negative: str = "") -> dict:
    """What the page's canvas sends: the scene with its setting and negative prompt."""
    return {**scene.to_dict(), "setting": setting, "negative_prompt": negative}


def test_generate_returns_an_image_that_carries_its_scene(client):
    image, control, masks, prompts = client.predict(
        value(setting="in a forest"), *knob_values(Settings(steps=4, seed=11)), api_name="/generate"
    )
    scene, settings = read_png(image)
    assert scene.people == TWO.people and settings.seed == 11
    assert inline(control, "png").size == inline(masks, "png").size == (128, 88)
    assert "Person 2: `a samurai in red armor in a forest, best quality`" in prompts


def test_previews_come_inline_and_only_the_result_png_is_a_file(client, monkeypatch):
    """Previews (webp), the control map and the masks (png) travel in the updates themselves; the
    one file to fetch is the result, the PNG that carries its scene."""
    monkeypatch.setattr(handlers, "PREVIEW_MIN_SECONDS", 0)  # the app runs in this process
    job = client.submit(value(), *knob_values(Settings(steps=8, seed=2)), api_name="/generate")
    image, control, masks, _ = job.result()
    previews = [update[0] for update in job.outputs()[:-1]]
    assert len(previews) == 1 and inline(previews[0], "webp").size == (128 // 8, 88 // 8)  # step 4 of 8
    assert read_png(image)[1].seed == 2 and Image.open(image).format == "PNG"
    assert inline(control, "png").mode == inline(masks, "png").mode == "RGB"


def test_the_idle_app_hardly_uses_the_cpu(app_url):
    """Gradio's queue polls every millisecond unless told otherwise (6.5 % of a core measured), which
    slows a generation on 2 cores; the app polls every QUEUE_POLL_SECONDS (about 1.5 %; this process
    serves two apps at most)."""
    time.sleep(0.5)
    cpu, wall = time.process_time(), time.perf_counter()
    time.sleep(2)
    assert (time.process_time() - cpu) / (time.perf_counter() - wall) < 0.04


def test_generate_rejects_a_bad_scene_with_its_reason(client):
    with pytest.raises(Exception, match="person 1 has 3 keypoint values"):
        client.predict({"people": [{"pose_keypoints_2d": [1, 2, 3]}]}, *knob_values(Settings()), api_name="/generate")


def test_masks_preview_comes_inline(client):
    masks = client.predict(value(), *knob_values(Settings()), api_name="/masks")
    width, height = inline(masks, "png").size
    assert width == 2 * TWO.width + 8 and height > TWO.height  # captions under the two halves


def test_compare_returns_a_grid(client):
    grid = client.predict(value(), 0, *knob_values(Settings(steps=2)), api_name="/compare")
    width, height = Image.open(grid).size
    assert width == 3 * 256 + 2 * 8 and height > 176  # 128x88 images enlarged to 256x176, captioned


def test_export_and_import_round_trip(client):
    exported = client.predict(value(setting="by the sea", negative="blurry"), api_name="/export_scene")
    assert json.loads(open(exported).read())["setting"] == "by the sea"
    imported, *knobs = client.predict(handle_file(exported), api_name="/import_scene")
    assert imported["people"] == TWO.to_dict()["people"]
    assert (imported["setting"], imported["negative_prompt"]) == ("by the sea", "blurry")


def test_each_advanced_control_sets_the_setting_its_label_names(client):
    """Values given by the labels the page shows arrive as exactly these Settings (no two controls
    wired to each other's field): the PNG records the settings the generation ran with."""
    wanted = Settings(
        method="multicontrolnet",
        steps=3,
        guidance_scale=25.0,  # values up to each setting's valid maximum reach the engine
        control_strength=4.0,
        harmony=0.25,
        temperature=0.01,
        mask_dilation=300,
        mask_blur=10.0,
        seed=7,
        scheduler="unipc",
        quality_suffix="sharp",
    )
    by_label = {knob.label: getattr(wanted, name) for name, knob in knobs().items() if knob.widget}
    parameters = client.view_api(return_format="dict", print_info=False)["named_endpoints"]["/generate"]["parameters"]
    scene_inputs = [value()]
    args = scene_inputs + [by_label[p["label"]] for p in parameters[len(scene_inputs) :]]
    assert len(args) == len(parameters) == len(scene_inputs) + len(by_label)
    image = client.predict(*args, api_name="/generate")[0]
    assert read_png(image)[1] == wanted
