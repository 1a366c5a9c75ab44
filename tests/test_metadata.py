import pytest
from PIL import Image

from finecontrol.metadata import read_png, save_png
from finecontrol.scene import SceneError, load_scene
from finecontrol.settings import Settings


def test_png_carries_scene_and_settings(tmp_path):
    scene = load_scene("assets/scenes/three_people.json")
    settings = Settings(method="multicontrolnet", seed=1234, steps=7, guidance_scale=5.5, width=256, height=128)
    save_png(Image.new("RGB", (16, 16)), tmp_path / "out.png", scene, settings, model="tiny")
    scene_back, settings_back = read_png(tmp_path / "out.png")
    assert scene_back == scene
    assert settings_back == settings


def test_png_without_scene_is_refused_with_a_reason(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "plain.png")
    with pytest.raises(SceneError, match="carries no FineControl scene"):
        read_png(tmp_path / "plain.png")


def test_non_image_is_refused(tmp_path):
    (tmp_path / "x.png").write_text("hello")
    with pytest.raises(SceneError, match="x.png is not a PNG image"):
        read_png(tmp_path / "x.png")
