"""The app's API, driven with gradio_client against the app served on 127.0.0.1."""

import json

import pytest
from gradio_client import Client, handle_file
from PIL import Image

from finecontrol.metadata import read_png
from finecontrol.scene import load_scene
from finecontrol.settings import Settings, knobs
from finecontrol.ui.handlers import knob_values

TWO = load_scene("assets/scenes/two_people.json")


@pytest.fixture(scope="module")
def client(app_url):
    return Client(app_url, verbose=False)


def test_generate_returns_an_image_that_carries_its_scene(client):
    image, control, masks, prompts = client.predict(
        TWO.to_dict(), "in a forest", "", *knob_values(Settings(steps=4, seed=11)), api_name="/generate"
    )
    scene, settings = read_png(image)
    assert scene.people == TWO.people and settings.seed == 11
    assert Image.open(control).size == Image.open(masks).size == (128, 88)
    assert "Person 2: `a samurai in red armor in a forest, best quality`" in prompts


def test_generate_rejects_a_bad_scene_with_its_reason(client):
    with pytest.raises(Exception, match="person 1 has 3 keypoint values"):
        client.predict(
            {"people": [{"pose_keypoints_2d": [1, 2, 3]}]}, "", "", *knob_values(Settings()), api_name="/generate"
        )


def test_compare_returns_a_grid(client):
    grid = client.predict(TWO.to_dict(), "", "", 0, *knob_values(Settings(steps=2)), api_name="/compare")
    assert Image.open(grid).size == (64 + 3 * 128, 24 + 88)


def test_export_and_import_round_trip(client):
    exported = client.predict(TWO.to_dict(), "by the sea", "blurry", api_name="/export_scene")
    assert json.loads(open(exported).read())["setting"] == "by the sea"
    value, setting, negative, *knobs = client.predict(handle_file(exported), api_name="/import_scene")
    assert value["people"] == TWO.to_dict()["people"]
    assert (setting, negative) == ("by the sea", "blurry")


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
    scene_inputs = [TWO.to_dict(), "", ""]
    args = scene_inputs + [by_label[p["label"]] for p in parameters[len(scene_inputs) :]]
    assert len(args) == len(parameters) == len(scene_inputs) + len(by_label)
    image = client.predict(*args, api_name="/generate")[0]
    assert read_png(image)[1] == wanted
