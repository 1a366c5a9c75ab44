"""Hands and faces: read with the scene, carried by every transform, drawn as ControlNet's
OpenPose annotator draws them (pixel for pixel), covered by the person's mask, chosen by the
`pose_parts` setting, and kept from pose detection."""

import json

import matplotlib.colors
import numpy as np
import pytest
from controlnet_aux.open_pose import PoseResult, draw_poses
from controlnet_aux.open_pose.body import BodyResult, Keypoint

from finecontrol.pose import (
    FACE,
    FACE_KEYPOINTS,
    FACE_LEFT_RIGHT_PAIRS,
    HAND_EDGES,
    LEFT_HAND,
    LIMB_COLORS,
    PART_CHOICES,
    PART_KEYPOINTS,
    RIGHT_HAND,
    drawn_parts,
    mirror,
    mirror_parts,
    pose_center,
    rotate,
    rotate_parts,
    scale,
    scale_parts,
    template_pose,
    translate,
    translate_parts,
)
from finecontrol.render import HAND_BONE_COLORS, mask_previews, normalized, scene_maps, skeleton_image
from finecontrol.scene import Person, Scene, SceneError, load_scene, scene_from_dict, scene_from_json
from finecontrol.settings import Settings, SettingsError
from tests.hands import person_with_hands_and_face

EXAMPLE = "assets/examples/hands_and_faces.json"
# Hand bone colours that no body limb or joint has (pure blue, the hands' joints, is a body joint's too).
HAND_ONLY_COLORS = set(HAND_BONE_COLORS) - set(LIMB_COLORS) - {tuple(int(c * 0.6) for c in rgb) for rgb in LIMB_COLORS}


def hand_pixels(image: np.ndarray) -> int:
    """How many pixels have a colour only hand bones are drawn in."""
    return int(sum((image == color).all(axis=2).sum() for color in HAND_ONLY_COLORS))


# --- what controlnet_aux draws -------------------------------------------------------------------


def _keypoints(points: np.ndarray) -> list[Keypoint]:
    """Normalised (n, 3) points as the detector gives them: a missing point at x = y = -1 / size,
    the detector's own marker (`detect_hands`: -1 divided by the image size)."""
    return [Keypoint(x, y) if c > 0 else Keypoint(-1e-3, -1e-3) for x, y, c in points]


def annotator(poses, parts, canvas_size, size, draw_hand=True, draw_face=True) -> np.ndarray:
    """What controlnet_aux's `draw_poses` draws for these people (pixels on `canvas_size`)."""
    results = []
    for pose, own in zip(poses, parts):
        body = [Keypoint(x, y) if c > 0 else None for x, y, c in normalized(pose, *canvas_size)]
        found = {
            name: _keypoints(normalized(own[name], *canvas_size)) if name in own else None for name in PART_KEYPOINTS
        }
        results.append(PoseResult(BodyResult(body, 0.0, 18), found[LEFT_HAND], found[RIGHT_HAND], found[FACE]))
    width, height = size
    return draw_poses(results, height, width, draw_body=True, draw_hand=draw_hand, draw_face=draw_face)


def random_person(rng: np.random.Generator, width: int, height: int):
    """A random body with random hands and face: anywhere (partly off the canvas, on its first row
    or column, where the annotator draws no hand or face point), some points hidden, some parts missing."""
    pose = np.column_stack([rng.uniform(-0.2, 1.2, 18) * width, rng.uniform(-0.2, 1.2, 18) * height, np.ones(18)])
    pose[rng.random(18) < 0.2, 2] = 0
    parts = {}
    for name, count in PART_KEYPOINTS.items():
        if rng.random() < 0.15:
            continue
        centre = rng.uniform(0, 1, 2) * (width, height)
        points = np.column_stack([centre + rng.normal(0, 0.08, (count, 2)) * (width, height), np.ones(count)])
        edge = rng.random(count) < 0.1  # on the first column or row (within a pixel), or just off it
        points[edge, rng.integers(0, 2)] = rng.uniform(-1.5, 1.5, edge.sum())
        points[rng.random(count) < 0.15, 2] = 0
        parts[name] = points
    return pose, parts


REALISTIC = [
    person_with_hands_and_face("standing", 140, 490, 420),
    person_with_hands_and_face("arms_up", 360, 480, 380),
    (rotate(person_with_hands_and_face("walking", 450, 500, 300)[0], 20), {}),  # a body alone
]


@pytest.mark.parametrize("size", [(512, 512), (768, 512), (384, 640), (64, 64)])
def test_realistic_hands_and_faces_are_pixel_identical_to_the_openpose_annotator(size):
    poses, parts = [p for p, _ in REALISTIC], [q for _, q in REALISTIC]
    ours = skeleton_image(poses, (512, 512), size, parts=parts)
    expected = annotator(poses, parts, (512, 512), size)
    np.testing.assert_array_equal(ours, expected)
    assert not np.array_equal(ours, skeleton_image(poses, (512, 512), size))  # hands and faces drawn


@pytest.mark.parametrize("seed", range(12))
def test_random_hands_and_faces_are_pixel_identical_to_the_openpose_annotator(seed):
    rng = np.random.default_rng(seed)
    canvas = tuple(int(v) for v in rng.choice([256, 512, 768], 2))
    size = tuple(int(v) for v in rng.choice([64, 200, 512, 640], 2))
    people = [random_person(rng, *canvas) for _ in range(rng.integers(1, 5))]
    poses, parts = [p for p, _ in people], [q for _, q in people]
    np.testing.assert_array_equal(
        skeleton_image(poses, canvas, size, parts=parts), annotator(poses, parts, canvas, size)
    )


def test_the_annotator_never_draws_hand_points_on_the_first_column():
    pose = template_pose("standing", 256, 480, 380)
    body = skeleton_image([pose], (512, 512), (512, 512))
    hand = person_with_hands_and_face("standing", 256, 480, 380)[1][LEFT_HAND]
    for x, drawn in ((0.99, False), (1.0, True)):  # pixel column 0, then column 1
        hand[:, 0] = x
        ours = skeleton_image([pose], (512, 512), (512, 512), parts=[{LEFT_HAND: hand}])
        np.testing.assert_array_equal(ours, annotator([pose], [{LEFT_HAND: hand}], (512, 512), (512, 512)))
        assert np.array_equal(ours, body) != drawn


def test_hand_bone_colours_are_the_annotators_hues_as_opencv_rounds_them():
    import cv2

    for k, color in enumerate(HAND_BONE_COLORS):
        image = np.zeros((5, 5, 3), np.uint8)
        cv2.line(image, (0, 2), (4, 2), matplotlib.colors.hsv_to_rgb([k / len(HAND_EDGES), 1.0, 1.0]) * 255, 1)
        assert tuple(image[2, 2]) == color, k


@pytest.mark.parametrize("choice, hands, face", [("body", False, False), ("body+hands", True, False)])
def test_fewer_parts_are_what_the_annotator_draws_without_them(choice, hands, face):
    poses, parts = [p for p, _ in REALISTIC], [q for _, q in REALISTIC]
    ours = skeleton_image(poses, (512, 512), (512, 512), parts=[drawn_parts(q, choice) for q in parts])
    np.testing.assert_array_equal(ours, annotator(poses, parts, (512, 512), (512, 512), hands, face))


def test_people_without_hands_or_faces_are_drawn_and_masked_as_before():
    """Bit for bit: no parts, empty parts and every pose_parts choice give the same maps."""
    poses = [template_pose("standing", 150, 490, 400), rotate(template_pose("arms_up", 350, 480, 380), 12)]
    before = scene_maps(poses, (512, 512), (512, 512), (64, 64))
    for choice in PART_CHOICES:
        after = scene_maps(poses, (512, 512), (512, 512), (64, 64), parts=[drawn_parts({}, choice)] * 2)
        np.testing.assert_array_equal(after[0], before[0])
        for a, b in zip(after[1], before[1]):
            np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(after[2], before[2])
    empty = {LEFT_HAND: np.zeros((0, 3)), FACE: np.zeros((0, 3))}
    np.testing.assert_array_equal(skeleton_image(poses, (512, 512), (512, 512), parts=[empty, empty]), before[0])


# --- masks ---------------------------------------------------------------------------------------


def test_each_persons_mask_covers_their_drawn_hands_and_face():
    pose, parts = person_with_hands_and_face("arms_up", 256, 500, 300)
    parts[LEFT_HAND] = translate(parts[LEFT_HAND], 60, -20)  # a hand held far out: beyond the body's reach
    _, (image,), (raw,) = scene_maps([pose], (512, 512), (512, 512), (64, 64), dilation=1, blur_sigma=0, parts=[parts])
    _, _, (body_raw,) = scene_maps([pose], (512, 512), (512, 512), (64, 64), dilation=1, blur_sigma=0)
    tips = parts[LEFT_HAND][[4, 8, 12, 16, 20], :2].astype(int)
    assert (image[tips[:, 1], tips[:, 0]] > 0).any(axis=1).all()
    assert (raw[tips[:, 1] // 8, tips[:, 0] // 8] > 0).all()
    assert (body_raw[tips[:, 1] // 8, tips[:, 0] // 8] == 0).all()
    assert raw.sum() > body_raw.sum()


def test_mask_previews_draw_the_parts_they_are_given():
    pose, parts = person_with_hands_and_face("standing", 256, 490, 400)
    early, _ = mask_previews([pose], (512, 512), parts=[parts])
    body_only, _ = mask_previews([pose], (512, 512))
    assert hand_pixels(early) > 50 and hand_pixels(body_only) == 0


# --- pure pose maths -----------------------------------------------------------------------------


def test_hands_and_face_move_scale_and_rotate_with_their_person():
    pose, parts = person_with_hands_and_face("walking", 200, 480, 380)
    centre = pose_center(pose)
    moved = translate_parts(parts, 12, -7)
    for name in parts:
        np.testing.assert_allclose(moved[name][:, :2], parts[name][:, :2] + (12, -7))
    big = scale_parts(parts, 1.5, centre)
    np.testing.assert_allclose(big[LEFT_HAND][0], scale(pose, 1.5)[7])  # the hand's wrist stays on the body's
    turned = rotate_parts(parts, 30, centre)
    np.testing.assert_allclose(turned[RIGHT_HAND][0], rotate(pose, 30)[4])
    for out in (moved, big, turned):
        np.testing.assert_array_equal(out[FACE][:, 2], parts[FACE][:, 2])  # confidences kept


def test_mirror_swaps_the_hands_and_the_faces_sides_as_the_body_does():
    pose, parts = person_with_hands_and_face("walking", 200, 480, 380)
    parts[LEFT_HAND][3, 2] = 0  # one hidden point goes with its hand
    cx = pose_center(pose)[0]
    flipped_pose, flipped = mirror(pose), mirror_parts(parts, cx)
    np.testing.assert_allclose(flipped[RIGHT_HAND][:, 0], 2 * cx - parts[LEFT_HAND][:, 0])
    np.testing.assert_allclose(flipped[RIGHT_HAND][:, 1:], parts[LEFT_HAND][:, 1:])
    np.testing.assert_allclose(flipped[RIGHT_HAND][0, :2], flipped_pose[4, :2])  # still on the right wrist
    np.testing.assert_allclose(flipped[LEFT_HAND][0, :2], flipped_pose[7, :2])
    np.testing.assert_allclose(mirror_parts(flipped, cx)[LEFT_HAND], parts[LEFT_HAND])  # twice: as before
    np.testing.assert_allclose(mirror_parts(mirror_parts(parts, cx), cx)[FACE], parts[FACE])


def test_a_frontal_face_mirrored_about_its_middle_is_itself():
    """The face's left/right pairs are those of the 68-point layout (plus the pupils)."""
    pose, parts = person_with_hands_and_face("standing", 256, 480, 380)
    np.testing.assert_allclose(mirror_parts({FACE: parts[FACE]}, 256)[FACE], parts[FACE], atol=1e-9)
    paired = sorted(i for pair in FACE_LEFT_RIGHT_PAIRS for i in pair)
    assert len(paired) == len(set(paired)) == 60 and max(paired) < FACE_KEYPOINTS


def test_part_transforms_do_not_modify_their_input():
    _, parts = person_with_hands_and_face("standing", 256, 480, 380)
    before = {name: points.copy() for name, points in parts.items()}
    translate_parts(parts, 3, 4), scale_parts(parts, 2, np.zeros(2)), rotate_parts(parts, 9, np.zeros(2))
    mirror_parts(parts, 100)
    for name in parts:
        np.testing.assert_array_equal(parts[name], before[name])


def test_drawn_parts_follow_the_setting():
    _, parts = person_with_hands_and_face("standing", 256, 480, 380)
    assert set(drawn_parts(parts, "body")) == set()
    assert set(drawn_parts(parts, "body+hands")) == {LEFT_HAND, RIGHT_HAND}
    assert set(drawn_parts(parts, "body+hands+face")) == {LEFT_HAND, RIGHT_HAND, FACE}
    with pytest.raises(ValueError, match="pose_parts must be one of body, body"):
        drawn_parts(parts, "hands")


# --- the scene -----------------------------------------------------------------------------------


def test_the_example_file_reads_with_both_hands_and_a_face_per_person_and_round_trips(tmp_path):
    scene = load_scene(EXAMPLE)
    assert [sorted(p.parts) for p in scene.people] == [sorted(PART_KEYPOINTS)] * 2
    assert all(p.extra == {} for p in scene.people)
    scene.save(tmp_path / "again.json")
    assert load_scene(tmp_path / "again.json") == scene
    doc = json.loads((tmp_path / "again.json").read_text())
    assert len(doc["people"][0]["hand_left_keypoints_2d"]) == 63 and len(doc["people"][0]["face_keypoints_2d"]) == 210


def _doc(**fields):
    pose, parts = person_with_hands_and_face("standing", 256, 480, 380)
    person = {"pose_keypoints_2d": pose.reshape(-1).tolist()}
    person.update({name: points.reshape(-1).tolist() for name, points in parts.items()})
    person.update(fields)
    return {"canvas_width": 512, "canvas_height": 512, "people": [person]}, pose, parts


def test_normalised_documents_scale_hands_and_faces_with_the_body():
    doc, pose, parts = _doc()
    person = doc["people"][0]
    for key in ["pose_keypoints_2d", *parts]:
        values = np.reshape(person[key], (-1, 3)) / (512, 512, 1)
        person[key] = values.reshape(-1).tolist()
    scene = scene_from_dict({**doc, "canvas_width": 512})
    np.testing.assert_allclose(scene.people[0].keypoints, pose, atol=1e-9)
    for name in parts:
        np.testing.assert_allclose(scene.people[0].parts[name], parts[name], atol=1e-9)


def test_empty_parts_as_openpose_writes_them_are_kept_and_draw_nothing():
    doc, pose, _ = _doc(face_keypoints_2d=[], hand_right_keypoints_2d=[])
    scene = scene_from_dict(doc)
    assert scene.people[0].parts[FACE].shape == (0, 3)
    assert scene_from_json(scene.to_json()) == scene
    assert scene.to_dict()["people"][0]["face_keypoints_2d"] == []


@pytest.mark.parametrize(
    "field, value, message",
    [
        (LEFT_HAND, [1.0, 2.0, 3.0], "'hand_left_keypoints_2d' has 3 values: expected 63 \\(21 keypoints"),
        (FACE, [1.0] * 204, "'face_keypoints_2d' has 204 values: expected 210 \\(70 keypoints"),
        (RIGHT_HAND, "left", "'hand_right_keypoints_2d' has a str: expected 63"),
        (RIGHT_HAND, [1.0] * 62 + [float("nan")], "'hand_right_keypoints_2d' holds values that are not finite"),
        (FACE, [1.0] * 209 + [True], "'face_keypoints_2d' holds values that are not finite"),
    ],
)
def test_malformed_hands_and_faces_are_refused_by_name(field, value, message):
    doc, _, _ = _doc(**{field: value})
    with pytest.raises(SceneError, match=f"person 1: {message}"):
        scene_from_dict(doc)


def test_only_shown_hand_points_must_lie_near_the_canvas():
    doc, _, parts = _doc()
    hand = parts[LEFT_HAND].copy()
    hand[5] = (5000, 5000, 0)  # hidden: never drawn, however far
    doc["people"][0][LEFT_HAND] = hand.reshape(-1).tolist()
    scene_from_dict(doc)
    hand[5, 2] = 1
    doc["people"][0][LEFT_HAND] = hand.reshape(-1).tolist()
    with pytest.raises(SceneError, match="person 1: 'hand_left_keypoints_2d' keypoint 6 has x = 5000, too far off"):
        scene_from_dict(doc)


# --- the setting ---------------------------------------------------------------------------------


def test_pose_parts_is_a_checked_setting_that_travels_in_png_metadata(tmp_path):
    from PIL import Image

    from finecontrol.metadata import SETTINGS_KEY, read_png, save_png

    assert Settings().pose_parts == "body+hands+face"
    with pytest.raises(
        SettingsError, match="pose_parts must be one of body, body\\+hands, body\\+hands\\+face, got 'all'"
    ):
        Settings(pose_parts="all")
    scene = load_scene(EXAMPLE)
    save_png(Image.new("RGB", (8, 8)), tmp_path / "out.png", scene, Settings(pose_parts="body+hands"))
    again, settings = read_png(tmp_path / "out.png")
    assert settings.pose_parts == "body+hands" and again == scene

    older = Settings().to_dict()
    del older["pose_parts"]  # a PNG made before the setting existed drew bodies alone
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("finecontrol:scene", scene.to_json())
    info.add_text(SETTINGS_KEY, json.dumps(older))
    Image.new("RGB", (8, 8)).save(tmp_path / "old.png", pnginfo=info)
    assert read_png(tmp_path / "old.png")[1].pose_parts == "body"


def test_the_toy_model_declares_bodies_only_and_the_app_offers_the_setting():
    from finecontrol.model_info import ModelInfo
    from finecontrol.models import TOY_MODEL
    from finecontrol.ui.handlers import KNOB_FIELDS

    assert ModelInfo.read(TOY_MODEL).default_settings().pose_parts == "body"
    assert "pose_parts" in KNOB_FIELDS


def test_the_cli_takes_pose_parts_and_refuses_a_bad_value(tmp_path, capsys):
    from finecontrol.cli import main

    out = tmp_path / "masks.png"
    assert main(["masks", EXAMPLE, "--out", str(out), "--pose-parts", "body+hands"]) == 0
    with pytest.raises(SystemExit):
        main(["masks", EXAMPLE, "--out", str(out), "--pose-parts", "hands"])
    assert "invalid choice: 'hands'" in capsys.readouterr().err


def test_generation_draws_the_chosen_parts_into_the_control_image_and_masks(tiny):
    scene = load_scene(EXAMPLE)
    results = {
        choice: tiny(scene, Settings(steps=1, pose_parts=choice), decode=False)
        for choice in ("body", "body+hands+face")
    }
    body, full = results["body"], results["body+hands+face"]
    # (at the tiny model's 128 px the hands' blue joints cover their bones, as the annotator draws them)
    assert (full.control_image == 255).all(axis=2).sum() > 20  # the faces' white dots
    assert not (body.control_image == 255).all(axis=2).any()
    for own, bare in zip(full.person_control_images, body.person_control_images):
        assert (own != bare).any(axis=2).sum() > 50  # each person's own map has their hands and face
    assert (full.raw_masks >= body.raw_masks).all()


# --- pose from a photo ---------------------------------------------------------------------------


def _detection(pose, parts, size, missing=()):
    """A controlnet_aux PoseResult as `detect_poses(..., include_hand=True, include_face=True)`
    returns it for a person drawn at these pixels on a `size` photo."""
    width, height = size

    def points(values, count):
        return [
            Keypoint(x / width, y / height) if j not in missing else Keypoint(-1 / width, -1 / height)
            for j, (x, y, _) in enumerate(values[:count])
        ]

    body = BodyResult([Keypoint(x / width, y / height) for x, y, _ in pose], 20.0, 18)
    return PoseResult(body, points(parts[LEFT_HAND], 21), points(parts[RIGHT_HAND], 21), points(parts[FACE], 70))


def test_detected_hands_and_faces_become_the_persons_parts_on_the_canvas():
    from finecontrol.ui.handlers import people_from_detection

    pose, parts = person_with_hands_and_face("standing", 200, 390, 300)
    found = _detection(pose, parts, (400, 400), missing={2, 9})
    (person,) = people_from_detection([found], (400, 400), (512, 512))  # scaled by 1.28
    np.testing.assert_allclose(person.keypoints[:, :2], pose[:, :2] * 1.28, atol=1e-9)
    for name in PART_KEYPOINTS:
        shown = np.ones(PART_KEYPOINTS[name], bool)
        shown[[2, 9]] = False
        np.testing.assert_allclose(person.parts[name][shown, :2], parts[name][shown, :2] * 1.28, atol=1e-9)
        assert (person.parts[name][shown, 2] == 1).all() and (person.parts[name][~shown] == 0).all()

    nothing = PoseResult(found.body, None, None, None)  # no hands or face found
    assert people_from_detection([nothing], (400, 400), (512, 512))[0].parts == {}
    too_few = PoseResult(found.body, found.left_hand[:20], None, found.face)  # never from the detector: left out
    assert set(people_from_detection([too_few], (400, 400), (512, 512))[0].parts) == {FACE}


def test_pose_from_photo_keeps_the_hands_and_faces_found():
    from finecontrol.ui import handlers

    existing = Scene(people=[Person(template_pose("standing", 100, 480, 300))]).to_dict()
    pose, parts = person_with_hands_and_face("standing", 40, 60, 50)
    photo = np.zeros((64, 64, 3), np.uint8)
    value = handlers.pose_from_photo(lambda image: [_detection(pose, parts, (64, 64))], photo, existing, "", "")
    added = value["people"][1]
    assert len(value["people"]) == 2 and "hand_left_keypoints_2d" not in value["people"][0]
    np.testing.assert_allclose(np.reshape(added[FACE], (70, 3))[:, :2], parts[FACE][:, :2] * 8, atol=1e-9)
    assert len(added[LEFT_HAND]) == len(added[RIGHT_HAND]) == 63
    assert handlers.parse_scene(value, "", "").people[1].parts.keys() == set(PART_KEYPOINTS)


def test_the_editor_gets_the_part_constants_from_python():
    from finecontrol.ui.editor import PoseEditor

    props = PoseEditor().get_config()["props"]
    assert props["part_fields"] == [LEFT_HAND, RIGHT_HAND, FACE]
    assert [tuple(e) for e in props["hand_edges"]] == list(HAND_EDGES)
    assert [tuple(p) for p in props["face_left_right_pairs"]] == list(FACE_LEFT_RIGHT_PAIRS)
