import time

import numpy as np
import pytest
import torch
from conftest import make_scene
from controlnet_aux.open_pose import OpenposeDetector, PoseResult
from controlnet_aux.open_pose.body import Body, BodyResult, Keypoint
from controlnet_aux.open_pose.model import bodypose_model
from PIL import Image

import finecontrol.models as models
from finecontrol.metrics import CLIP_MEAN_RGB, ClipIdentity, PoseFidelity, image_keypoints, person_boxes, square_crop
from finecontrol.models import ModelNotAvailableError
from finecontrol.pose import NUM_KEYPOINTS, translate
from finecontrol.scene import Person, Scene

CLIP_KEYS = {"clip_similarity", "clip_own_wins", "clip_margin", "clip_mean_margin", "clip_own_probability"}


def person_with(points: dict[int, tuple[float, float]]) -> Person:
    """A person whose only visible keypoints are `points` (index -> x, y); the hidden ones lie far off."""
    keypoints = np.zeros((NUM_KEYPOINTS, 3))
    keypoints[:, :2] = 5000.0
    for k, (x, y) in points.items():
        keypoints[k] = (x, y, 1.0)
    return Person(keypoints, prompt="a person")


def noise_image(width: int, height: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


# person_boxes


def test_box_grows_by_the_margin_along_each_axis_and_at_least_by_the_minimum_pad():
    scene = Scene(width=512, height=512, people=[person_with({1: (100, 100), 10: (140, 300)})])  # 40 x 200
    # x grows by the minimum 0.07 x 200 = 14 (more than 0.1 x 40), y by the margin 0.1 x 200 = 20
    assert person_boxes(scene, (512, 512)) == [(86, 80, 154, 320)]
    assert person_boxes(scene, (512, 512), margin=0.2) == [(86, 60, 154, 340)]


def test_box_is_clipped_to_the_image():
    scene = Scene(width=512, height=512, people=[person_with({1: (5, 300), 10: (45, 500)})])
    assert person_boxes(scene, (512, 512)) == [(0, 280, 59, 512)]


def test_box_is_scaled_from_the_canvas_to_the_image_size():
    scene = Scene(width=512, height=256, people=[person_with({1: (100, 50), 10: (140, 150)})])
    # in a 256 x 512 image: x halves (50..70), y doubles (100..300)
    assert person_boxes(scene, (256, 512)) == [(36, 80, 84, 320)]


def test_hidden_keypoints_do_not_count_and_a_person_shown_by_none_or_one_point_has_no_box():
    shown = person_with({1: (100, 100), 10: (140, 300)})
    hidden_far = shown.keypoints.copy()
    hidden_far[4] = (500, 10, 0.0)  # a hidden wrist far away
    nothing_shown = shown.keypoints.copy()
    nothing_shown[:, 2] = 0
    one_point = person_with({0: (100.5, 100.5)})
    scene = Scene(people=[Person(hidden_far), Person(nothing_shown), one_point])
    assert person_boxes(scene, (512, 512)) == [(86, 80, 154, 320), None, None]


def test_a_person_off_the_image_has_no_box():
    scene = Scene(width=512, height=512, people=[person_with({1: (-300, 100), 10: (-200, 300)})])
    assert person_boxes(scene, (512, 512)) == [None]


def test_square_crop_centres_the_box_on_clip_mean_colour():
    image = Image.new("RGB", (100, 100), (255, 0, 0))
    crop = square_crop(image, (10, 20, 30, 80))  # 20 wide, 60 tall
    assert crop.size == (60, 60)
    pixels = np.asarray(crop)
    assert (pixels[:, 20:40] == (255, 0, 0)).all()
    assert (pixels[:, :20] == CLIP_MEAN_RGB).all() and (pixels[:, 40:] == CLIP_MEAN_RGB).all()


# ClipIdentity on a tiny random CLIP


@pytest.fixture
def three_people() -> Scene:
    return make_scene(
        [("walking", "an astronaut", 60.0), ("arms_up", "a red knight", 128.0), ("walking", "a chef", 196.0)],
        width=256,
        height=256,
    )


def one_at_a_time_cosines(model, processor, image: Image.Image, scene: Scene) -> np.ndarray:
    """(people, prompts) cosine similarities, each crop and each prompt through CLIP on its own."""

    def unit(output) -> torch.Tensor:
        features = output if isinstance(output, torch.Tensor) else output.pooler_output
        return features[0] / features[0].norm()

    with torch.no_grad():
        crops = [
            unit(model.get_image_features(**processor(images=[square_crop(image, box)], return_tensors="pt")))
            for box in person_boxes(scene, image.size)
        ]
        prompts = [
            unit(model.get_text_features(**processor(text=[p.prompt], return_tensors="pt"))) for p in scene.people
        ]
    return np.array([[float(c @ t) for t in prompts] for c in crops])


def test_scores_equal_one_crop_and_one_prompt_at_a_time_cosines(tiny_clip, three_people):
    model, processor = tiny_clip
    image = noise_image(192, 192)  # smaller than the 256 px canvas: boxes are scaled
    rows = ClipIdentity.from_components(model, processor).score(image, three_people)
    expected = one_at_a_time_cosines(model, processor, image, three_people)
    logit_scale = model.logit_scale.detach().exp().item()
    assert len(rows) == 3
    for i, row in enumerate(rows):
        assert set(row) == CLIP_KEYS
        others = np.delete(expected[i], i)
        probabilities = np.exp(logit_scale * expected[i]) / np.exp(logit_scale * expected[i]).sum()
        assert row["clip_similarity"] == pytest.approx(expected[i, i], abs=1e-5)
        assert row["clip_margin"] == pytest.approx(expected[i, i] - others.max(), abs=1e-5)
        assert row["clip_mean_margin"] == pytest.approx(expected[i, i] - others.mean(), abs=1e-5)
        assert row["clip_own_probability"] == pytest.approx(probabilities[i], abs=1e-5)
        assert row["clip_own_wins"] is bool(expected[i, i] > others.max())


def test_swapping_two_peoples_prompts_negates_their_margins(tiny_clip):
    model, processor = tiny_clip
    image = noise_image(256, 256, seed=1)
    scene = make_scene([("walking", "an astronaut", 70.0), ("arms_up", "a red knight", 186.0)], width=256, height=256)
    before = ClipIdentity.from_components(model, processor).score(image, scene)
    scene.people[0].prompt, scene.people[1].prompt = scene.people[1].prompt, scene.people[0].prompt
    after = ClipIdentity.from_components(model, processor).score(image, scene)
    for b, a in zip(before, after):
        assert a["clip_margin"] == pytest.approx(-b["clip_margin"], abs=1e-6)
        assert a["clip_own_wins"] is (not b["clip_own_wins"])
        assert a["clip_similarity"] == pytest.approx(b["clip_similarity"] - b["clip_margin"], abs=1e-6)


def test_reordering_the_people_reorders_their_rows(tiny_clip, three_people):
    model, processor = tiny_clip
    image = noise_image(256, 256, seed=2)
    scorer = ClipIdentity.from_components(model, processor)
    rows = scorer.score(image, three_people)
    three_people.people.reverse()
    reversed_rows = scorer.score(image, three_people)
    for row, other in zip(rows, reversed(reversed_rows)):
        assert row == pytest.approx(other, abs=1e-6)


def test_prompts_are_encoded_once_together_and_crops_in_one_forward(tiny_clip, three_people, monkeypatch):
    model, processor = tiny_clip
    text_batches, image_batches = [], []
    get_text, get_image = model.get_text_features, model.get_image_features

    def count_text(**kwargs):
        text_batches.append(len(kwargs["input_ids"]))
        return get_text(**kwargs)

    def count_image(**kwargs):
        image_batches.append(len(kwargs["pixel_values"]))
        return get_image(**kwargs)

    monkeypatch.setattr(model, "get_text_features", count_text)
    monkeypatch.setattr(model, "get_image_features", count_image)
    three_people.people[2].prompt = three_people.people[0].prompt  # a prompt twice is encoded once
    scorer = ClipIdentity.from_components(model, processor)
    first = scorer.score(noise_image(128, 128), three_people)
    second = scorer.score(noise_image(128, 128), three_people)
    assert text_batches == [2]  # the second image reuses the cached embeddings
    assert image_batches == [3, 3]
    assert first == second
    # identical prompts tie: nobody wins against their twin
    assert first[0]["clip_own_wins"] is False and first[0]["clip_margin"] <= 0


def test_one_person_has_a_similarity_but_nothing_to_beat(tiny_clip):
    scene = make_scene([("walking", "an astronaut", 128.0)], width=256, height=256)
    (row,) = ClipIdentity.from_components(*tiny_clip).score(noise_image(256, 256), scene)
    assert isinstance(row["clip_similarity"], float)
    assert row["clip_own_wins"] is row["clip_margin"] is row["clip_mean_margin"] is row["clip_own_probability"] is None


def test_a_person_without_a_box_gets_none_and_their_prompt_still_competes(tiny_clip):
    model, processor = tiny_clip
    scene = make_scene([("walking", "an astronaut", 70.0), ("arms_up", "a red knight", 186.0)], width=256, height=256)
    scene.people[1].keypoints[:, 2] = 0  # nothing of them is shown
    image = noise_image(256, 256)
    rows = ClipIdentity.from_components(model, processor).score(image, scene)
    assert rows[1] == dict.fromkeys(CLIP_KEYS)
    scene.people[1].keypoints[:, 2] = 1
    cosines = one_at_a_time_cosines(model, processor, image, scene)
    assert rows[0]["clip_margin"] == pytest.approx(cosines[0, 0] - cosines[0, 1], abs=1e-5)


def test_clip_not_cached_offline_fails_fast_with_the_download_command(monkeypatch):
    monkeypatch.setattr(models, "_hub_unavailable", lambda: True)
    start = time.monotonic()
    with pytest.raises(ModelNotAvailableError) as err:
        ClipIdentity("finecontrol-tests/clip-not-cached")
    assert time.monotonic() - start < 30
    message = str(err.value)
    assert "hf download finecontrol-tests/clip-not-cached --local-dir models/clip-not-cached" in message
    assert "--clip models/clip-not-cached" in message


def test_missing_clip_folder_is_named(tmp_path):
    with pytest.raises(ModelNotAvailableError, match="does not exist"):
        ClipIdentity(str(tmp_path / "no-clip"))


# PoseFidelity with a fake detector


def detection(points: np.ndarray, image_size: tuple[int, int]) -> PoseResult:
    """A controlnet_aux PoseResult of a body at `points` (image pixels; confidence 0: not found)."""
    width, height = image_size
    keypoints = [Keypoint(x / width, y / height) if c > 0 else None for x, y, c in points]
    return PoseResult(BodyResult(keypoints, 20.0, sum(k is not None for k in keypoints)), None, None, None)


def fake_detector(*bodies: np.ndarray, image_size: tuple[int, int]):
    """detect() that checks it is given the image as an RGB array and finds `bodies`."""

    def detect(rgb: np.ndarray) -> list[PoseResult]:
        assert rgb.shape == (image_size[1], image_size[0], 3) and rgb.dtype == np.uint8
        return [detection(body, image_size) for body in bodies]

    return detect


SIZE = (128, 128)  # the image: half the 256 px canvas


@pytest.fixture
def two_small() -> Scene:
    return make_scene([("walking", "an astronaut", 70.0), ("arms_up", "a red knight", 186.0)], width=256, height=256)


def in_image(scene: Scene, i: int) -> np.ndarray:
    return image_keypoints(scene.people[i].keypoints, scene, SIZE)


def diagonal(points: np.ndarray) -> float:
    return float(np.linalg.norm(points[:, :2].max(axis=0) - points[:, :2].min(axis=0)))


def test_exactly_detected_people_are_found_with_full_pck(two_small):
    detect = fake_detector(in_image(two_small, 0), in_image(two_small, 1), image_size=SIZE)
    rows = PoseFidelity(detect=detect).score(noise_image(*SIZE), two_small)
    assert rows == [{"pose_found": True, "pose_pck": 1.0}, {"pose_found": True, "pose_pck": 1.0}]


def test_keypoints_moved_beyond_the_threshold_lower_the_pck(two_small):
    moved = in_image(two_small, 0)
    step = diagonal(moved)
    moved[[4, 7, 10], 0] += 0.15 * step  # beyond 0.1 x diagonal
    moved[[3, 6], 1] += 0.08 * step  # within it
    detect = fake_detector(moved, in_image(two_small, 1), image_size=SIZE)
    rows = PoseFidelity(detect=detect).score(noise_image(*SIZE), two_small)
    assert rows[0] == {"pose_found": True, "pose_pck": pytest.approx(15 / 18)}
    assert rows[1] == {"pose_found": True, "pose_pck": 1.0}
    assert PoseFidelity(detect=detect, threshold=0.2).score(noise_image(*SIZE), two_small)[0]["pose_pck"] == 1.0


def test_detections_in_any_order_are_matched_to_the_right_people(two_small):
    moved = in_image(two_small, 1)
    moved[[4, 7], 1] -= 0.3 * diagonal(moved)  # person 1's wrists are off: their pck is 16/18
    detect = fake_detector(moved, in_image(two_small, 0), image_size=SIZE)
    rows = PoseFidelity(detect=detect).score(noise_image(*SIZE), two_small)
    assert [row["pose_pck"] for row in rows] == [1.0, pytest.approx(16 / 18)]


def test_a_person_left_without_a_detection_is_not_found(two_small):
    detect = fake_detector(in_image(two_small, 1), image_size=SIZE)
    rows = PoseFidelity(detect=detect).score(noise_image(*SIZE), two_small)
    assert rows == [{"pose_found": False, "pose_pck": 0.0}, {"pose_found": True, "pose_pck": 1.0}]


def test_no_detections_finds_nobody(two_small):
    rows = PoseFidelity(detect=fake_detector(image_size=SIZE)).score(noise_image(*SIZE), two_small)
    assert rows == [{"pose_found": False, "pose_pck": 0.0}] * 2


def test_a_detection_far_from_a_person_is_not_theirs(two_small):
    scene = Scene(width=256, height=256, people=[two_small.people[0]])
    elsewhere = translate(in_image(scene, 0), 100, 0)  # someone a body's length away from where they should be
    rows = PoseFidelity(detect=fake_detector(elsewhere, image_size=SIZE)).score(noise_image(*SIZE), scene)
    assert rows == [{"pose_found": False, "pose_pck": 0.0}]


def test_only_keypoints_on_the_image_are_scored(two_small):
    scene = Scene(width=256, height=256, people=[two_small.people[0]])
    scene.people[0].keypoints = translate(scene.people[0].keypoints, 0, 60)  # feet below the frame
    points = in_image(scene, 0)
    off = points[:, 1] > SIZE[1]
    assert 0 < off.sum() < NUM_KEYPOINTS
    points[off, 2] = 0  # the detector cannot find what is not in the picture
    rows = PoseFidelity(detect=fake_detector(points, image_size=SIZE)).score(noise_image(*SIZE), scene)
    assert rows == [{"pose_found": True, "pose_pck": 1.0}]
    scene.people[0].keypoints = translate(scene.people[0].keypoints, 0, 1000)  # wholly off the image
    rows = PoseFidelity(detect=fake_detector(points, image_size=SIZE)).score(noise_image(*SIZE), scene)
    assert rows == [{"pose_found": None, "pose_pck": None}]  # not scored, rather than missed


def test_pose_fidelity_runs_controlnet_aux_detector_code_with_random_weights(two_small):
    class RandomBody(Body):
        """controlnet_aux's body estimator on a random network (Body's constructor wants a weights file)."""

        def __init__(self):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                self.model = bodypose_model().eval()

    detector = OpenposeDetector(RandomBody())
    rows = PoseFidelity(detect=detector.detect_poses).score(noise_image(64, 64), two_small)
    assert len(rows) == 2 and all(set(row) == {"pose_found", "pose_pck"} for row in rows)


def test_pose_detector_weights_missing_offline_fail_fast_with_instructions(monkeypatch):
    monkeypatch.setattr(models, "_hub_unavailable", lambda: True)
    start = time.monotonic()
    with pytest.raises(ModelNotAvailableError, match="hf download finecontrol-tests/no-annotators .*--annotators"):
        PoseFidelity(annotators="finecontrol-tests/no-annotators")
    assert time.monotonic() - start < 30
