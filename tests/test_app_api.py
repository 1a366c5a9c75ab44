"""The app's API, driven with gradio_client against the app served on 127.0.0.1."""

import json

import pytest
from gradio_client import Client, handle_file
from PIL import Image

from finecontrol.metadata import read_png
from finecontrol.pipeline import Settings
from finecontrol.scene import load_scene
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
        client.predict({"people": [{"pose_keypoints_2d": [1, 2, 3]}]}, "", "", *knob_values(Settings()),
                       api_name="/generate")


def test_compare_returns_a_grid(client):
    grid = client.predict(TWO.to_dict(), "", "", 0, *knob_values(Settings(steps=2)), api_name="/compare")
    assert Image.open(grid).size == (64 + 3 * 128, 24 + 88)


def test_export_and_import_round_trip(client):
    exported = client.predict(TWO.to_dict(), "by the sea", "blurry", api_name="/export_scene")
    assert json.loads(open(exported).read())["setting"] == "by the sea"
    value, setting, negative, *knobs = client.predict(handle_file(exported), api_name="/import_scene")
    assert value["people"] == TWO.to_dict()["people"]
    assert (setting, negative) == ("by the sea", "blurry")
