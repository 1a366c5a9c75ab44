import json

import numpy as np
import pytest

from finecontrol.pose import template_pose, translate
from finecontrol.scene import (
    DEFAULT_NEGATIVE_PROMPT,
    MAX_PEOPLE,
    SceneError,
    load_scene,
    scene_from_dict,
    scene_from_json,
)


def openpose_doc(poses, width=512, height=512, **extra):
    return {
        "canvas_width": width,
        "canvas_height": height,
        "people": [{"pose_keypoints_2d": p.reshape(-1).tolist()} for p in poses],
        **extra,
    }


def standing(x=256.0):
    return template_pose("standing", x, 480, 380)


def test_plain_openpose_json_loads_with_empty_prompts_and_default_negative():
    scene = scene_from_dict(openpose_doc([standing(150), standing(350)]))
    assert len(scene.people) == 2
    assert [p.prompt for p in scene.people] == ["", ""]
    assert scene.negative_prompt == DEFAULT_NEGATIVE_PROMPT
    np.testing.assert_allclose(scene.people[1].keypoints, standing(350))


def test_normalised_coordinates_are_scaled_to_the_canvas():
    pose = standing()
    norm = pose.copy()
    norm[:, 0] /= 768
    norm[:, 1] /= 512
    scene = scene_from_dict(openpose_doc([norm], width=768, height=512))
    np.testing.assert_allclose(scene.people[0].keypoints, pose, atol=1e-9)


def test_save_then_load_keeps_every_field(tmp_path):
    doc = openpose_doc([standing(150), standing(350)], setting="in a forest", negative_prompt="blurry")
    doc["people"][0].update(prompt="an astronaut", negative_prompt="helmet", control_strength=1.2)
    doc["people"][1].update(prompt="a samurai", hand_left_keypoints_3d=[1, 2, 3, 4])
    doc["animals"] = []
    scene = scene_from_dict(doc)
    scene.save(tmp_path / "scene.json")
    again = load_scene(tmp_path / "scene.json")
    assert again == scene
    assert again.people[0].negative_prompt == "helmet" and again.people[0].control_strength == 1.2
    assert again.people[1].extra == {"hand_left_keypoints_3d": [1, 2, 3, 4]}
    assert again.extra == {"animals": []}


def test_saved_file_is_plain_openpose_that_editors_read(tmp_path):
    scene = scene_from_dict(openpose_doc([standing()]))
    scene.save(tmp_path / "scene.json")
    doc = json.loads((tmp_path / "scene.json").read_text())
    assert doc["canvas_width"] == 512 and doc["canvas_height"] == 512
    values = doc["people"][0]["pose_keypoints_2d"]
    assert len(values) == 54 and all(isinstance(v, float) for v in values)


def test_no_person_is_dropped_when_people_overlap_exactly():
    scene = scene_from_dict(openpose_doc([standing(), standing()]))
    assert len(scene.people) == 2


def test_empty_scene_loads():
    assert scene_from_dict(openpose_doc([])).people == []


def test_example_scenes_load():
    from pathlib import Path

    counts = sorted(len(load_scene(p).people) for p in Path("assets/scenes").glob("*.json"))
    assert {1, 2, 3, 5} <= set(counts)
    for path in Path("assets/scenes").glob("*.json"):
        assert all(p.prompt for p in load_scene(path).people), path


def _error(doc) -> str:
    with pytest.raises(SceneError) as info:
        scene_from_dict(doc) if not isinstance(doc, str) else scene_from_json(doc)
    return str(info.value)


def test_error_not_json():
    assert "not valid JSON" in _error('{"people": [')


def test_error_not_an_object():
    assert "JSON object" in _error("[1, 2]")


def test_error_wrong_keypoint_count():
    doc = openpose_doc([standing()])
    doc["people"][0]["pose_keypoints_2d"] = doc["people"][0]["pose_keypoints_2d"][:-3]
    assert "person 1 has 51 keypoint values: expected 54" in _error(doc)


def test_error_non_finite_numbers():
    doc = openpose_doc([standing(), standing()])
    doc["people"][1]["pose_keypoints_2d"][4] = float("nan")
    assert "person 2 has non-finite" in _error(doc)


def test_error_non_numeric_keypoints():
    doc = openpose_doc([standing()])
    doc["people"][0]["pose_keypoints_2d"][0] = "12"
    assert "not numbers" in _error(doc)


def test_error_person_without_a_visible_limb():
    pose = standing()
    pose[:, 2] = 0
    pose[0, 2] = 1  # one lone keypoint is not a limb
    pose[4, 2] = 1  # nor are two keypoints that no limb connects
    assert "person 1 has fewer than 2 visible connected keypoints" in _error(openpose_doc([pose]))


def test_error_too_many_people():
    doc = openpose_doc([standing()] * (MAX_PEOPLE + 1))
    assert f"too many people: {MAX_PEOPLE + 1} (at most {MAX_PEOPLE})" in _error(doc)


@pytest.mark.parametrize("width", [32, 2048])
def test_error_canvas_out_of_range(width):
    assert f"canvas_width {width} is out of range" in _error(openpose_doc([standing()], width=width))


def test_error_canvas_not_multiple_of_8():
    assert "canvas_height 500 is not a multiple of 8 (try 496)" in _error(openpose_doc([standing()], height=500))


def test_error_unknown_format_version():
    assert "unknown scene format version 2" in _error(openpose_doc([standing()], format=2))


def test_error_prompt_not_text():
    doc = openpose_doc([standing()])
    doc["people"][0]["prompt"] = ["a", "b"]
    assert "person 1: 'prompt' must be text" in _error(doc)


def test_error_control_strength_out_of_range():
    doc = openpose_doc([standing()])
    doc["people"][0]["control_strength"] = -1
    assert "control_strength -1 is out of range" in _error(doc)


def test_load_scene_rejects_binary_file(tmp_path):
    path = tmp_path / "x.json"
    path.write_bytes(b"\x89PNG\xff\xfe")
    with pytest.raises(SceneError, match="not a text file"):
        load_scene(path)


def test_a_person_entirely_off_the_canvas_is_read_with_a_note():
    doc = openpose_doc([standing(150), translate(standing(150), 700, 0)])
    scene = scene_from_dict(doc)
    assert len(scene.people) == 2  # kept, so it can be dragged back in
    assert scene.notes == [
        "person 2 is outside the canvas: nothing of them shows, so they cannot be generated until moved in"
    ]
    assert not scene_from_dict(openpose_doc([standing(150), translate(standing(150), 300, 0)])).notes


def test_generating_a_person_outside_the_canvas_is_refused_before_any_work(tiny, monkeypatch):
    scene = scene_from_dict(openpose_doc([standing(150), translate(standing(150), 700, 0)]))
    monkeypatch.setattr(type(tiny.unet), "forward", lambda *a, **k: pytest.fail("the model ran"))
    with pytest.raises(SceneError, match="person 2 is outside the canvas: nothing of them shows"):
        tiny(scene)
