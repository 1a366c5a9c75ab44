import numpy as np
import pytest
import torch
from controlnet_aux.open_pose.body import Keypoint
from controlnet_aux.open_pose.util import draw_bodypose

from finecontrol.pose import mirror, rotate, template_pose, translate
from finecontrol.render import (
    default_dilation,
    hard_masks,
    harmony_steps,
    normalized,
    people_off_canvas,
    raw_masks,
    scene_maps,
    skeleton_image,
    soft_masks,
    uses_soft_masks,
)


def annotator(poses, canvas_size, size):
    """What ControlNet's own OpenPose annotator draws for these poses."""
    width, height = size
    canvas = np.zeros((height, width, 3), dtype=np.uint8)
    for pose in poses:
        points = normalized(pose, *canvas_size)
        keypoints = [Keypoint(x, y) if c > 0 else None for x, y, c in points]
        canvas = draw_bodypose(canvas, keypoints)
    return canvas


POSES = [
    template_pose("standing", 120, 490, 400),
    rotate(template_pose("arms_up", 300, 500, 380), 17),
    mirror(template_pose("walking", 420, 470, 300)),
    template_pose("sitting", 60, 300, 200),
]


@pytest.mark.parametrize("size", [(512, 512), (768, 512), (384, 640), (128, 128)])
def test_skeletons_are_pixel_identical_to_the_openpose_annotator(size):
    ours = skeleton_image(POSES, (512, 512), size)
    assert ours.any()
    np.testing.assert_array_equal(ours, annotator(POSES, (512, 512), size))


def test_hidden_keypoints_and_off_canvas_points_match_the_annotator():
    pose = template_pose("walking", 480, 560, 420)  # feet below the canvas, right arm off the edge
    pose[[3, 4, 14, 16], 2] = 0
    np.testing.assert_array_equal(
        skeleton_image([pose], (512, 512), (512, 512)), annotator([pose], (512, 512), (512, 512))
    )


@pytest.mark.parametrize(
    "width, height, kernel",
    [(512, 512, 65), (768, 768, 97), (512, 768, 65), (768, 512, 65), (640, 1024, 81), (1024, 640, 81)],
)
def test_dilation_is_an_eighth_of_the_shorter_side_made_odd(width, height, kernel):
    assert default_dilation(width, height) == kernel


@pytest.mark.parametrize(
    "width, height, kernel", [(96, 96, 13), (64, 96, 9), (96, 64, 9)], ids=["square", "portrait", "landscape"]
)
def test_raw_masks_dilate_by_the_shorter_side_on_any_canvas(width, height, kernel):
    image = np.zeros((height, width, 3), np.uint8)
    image[height // 2, width // 2] = 255  # one lit pixel grows into a kernel x kernel square
    raw = raw_masks([image], (height, width), blur_sigma=0)[0]
    rows, cols = np.nonzero(raw)
    assert np.ptp(rows) + 1 == np.ptp(cols) + 1 == kernel


def test_raw_masks_are_in_unit_range_at_latent_size_and_cover_their_skeleton():
    control, people, raw = scene_maps(POSES[:2], (512, 512), (512, 512), (64, 64))
    assert raw.shape == (2, 64, 64) and raw.dtype == np.float32
    assert raw.min() >= 0 and raw.max() <= 1
    for image, mask in zip(people, raw):
        ys, xs = np.nonzero(image.max(axis=2))
        assert (mask[ys // 8, xs // 8] > 0.99).all()  # dilation covers the whole skeleton
    assert (raw.sum(axis=0) == 0).any()  # and leaves background


def test_raw_mask_dilation_reaches_half_a_kernel_beyond_the_skeleton():
    pose = np.zeros((18, 3))
    pose[1] = (256, 100, 1)
    pose[8] = (256, 400, 1)  # one vertical limb, x = 256
    raw = raw_masks([skeleton_image([pose], (512, 512), (512, 512))], (512, 512), dilation=65, blur_sigma=0)
    row = raw[0, 250]
    covered = np.nonzero(row)[0]
    # limb half-width 4 (ellipse) plus 32 pixels each side
    assert covered.min() == pytest.approx(256 - 4 - 32, abs=1)
    assert covered.max() == pytest.approx(256 + 4 + 32, abs=1)


def _raw() -> torch.Tensor:
    raw = torch.zeros(3, 4, 6)
    raw[0, :, :3] = 1.0  # person 0: left half, area 12
    raw[1, :2, 2:] = 0.7  # person 1: overlaps person 0 at column 2, area 8 * 0.7
    raw[2, 3, 5] = 0.7  # person 2: tiny, ties with nothing
    raw[1, 3, 5] = 0.7  # ...but ties with person 1 here
    return raw


@pytest.mark.parametrize("make", [hard_masks, soft_masks])
def test_masks_sum_to_one_everywhere(make):
    masks = make(_raw(), 0.001)
    torch.testing.assert_close(masks.sum(0), torch.ones(4, 6))


@pytest.mark.parametrize("make", [hard_masks, soft_masks])
def test_background_is_shared_equally(make):
    raw = _raw()
    background = (raw == 0).all(0)
    assert background.any()
    masks = make(raw, 0.001)
    torch.testing.assert_close(masks[:, background], torch.full((3, int(background.sum())), 1 / 3))


def test_early_masks_are_one_hot_on_people():
    raw = _raw()
    masks = hard_masks(raw, 0.001)
    covered = (raw > 0).any(0)
    assert set(masks[:, covered].unique().tolist()) == {0.0, 1.0}
    assert masks[0, 0, 2] == 1  # the stronger mask wins an overlap


def test_ties_go_to_the_person_with_the_smaller_area():
    masks = hard_masks(_raw(), 0.001)
    assert masks[2, 3, 5] == 1 and masks[1, 3, 5] == 0  # person 2 (area 0.7) beats person 1 (5.6)
    swapped = hard_masks(_raw()[[2, 1, 0]], 0.001)
    assert swapped[0, 3, 5] == 1  # whatever the order of people


def test_late_masks_are_soft_where_people_tie():
    masks = soft_masks(_raw(), 0.001)
    torch.testing.assert_close(masks[1:, 3, 5], torch.tensor([0.5, 0.5]))


def test_temperature_sharpens_the_soft_masks():
    raw = torch.tensor([[[0.6]], [[0.5]]])
    assert soft_masks(raw, 0.001)[0, 0, 0] > 0.999
    assert 0.5 < soft_masks(raw, 1.0)[0, 0, 0] < 0.6


def test_harmony_is_the_number_of_final_soft_steps():
    assert harmony_steps(20, 0.5) == 10
    assert harmony_steps(31, 0.5) == 15  # the official demo's steps // 2
    assert harmony_steps(20, 0.0) == 0 and harmony_steps(20, 1.0) == 20
    soft = [uses_soft_masks(i, 20, harmony_steps(20, 0.5)) for i in range(20)]
    assert soft == [False] * 10 + [True] * 10
    with pytest.raises(ValueError):
        harmony_steps(20, 1.5)


def test_labelled_grid_enlarges_small_images_so_labels_fit():
    from PIL import Image

    from finecontrol.render import labelled_grid

    small = Image.new("RGB", (64, 48), "red")
    grid = labelled_grid([[small, small]], ["finecontrol", "controlnet"], ["seed 0"])
    # enlarged 4x to 256x192 (at least 256 px wide), 8 white px apart, a caption band under each
    # (a 16 px font at 256 px: 1/16 of the width, 16 at least; the band 1.8 times the font)
    band = int(16 * 1.8)
    assert grid.size == (2 * 256 + 8, 192 + band)
    pixels = np.asarray(grid)
    assert (pixels[:192, :256] == (255, 0, 0)).all() and (pixels[:192, 264:] == (255, 0, 0)).all()
    assert (pixels[:, 256:264] == 255).all()  # the gap
    for x0 in (0, 264):  # "finecontrol, seed 0" and "controlnet, seed 0" under the images
        caption = pixels[192:, x0 : x0 + 256]
        dark = np.flatnonzero((caption.max(axis=2) < 128).any(axis=0))
        assert dark.size > 50 and abs((dark.min() + dark.max()) / 2 - 128) <= 8  # centred under its image
        assert (pixels[192:, x0 : x0 + 256] == 255).all(axis=2).mean() > 0.8


def test_captioned_puts_each_caption_under_its_image():
    from PIL import Image

    from finecontrol.render import captioned

    left, right = np.zeros((512, 768, 3), np.uint8), np.full((512, 768, 3), 200, np.uint8)
    image = np.asarray(captioned([left, right], ["early", "a much longer caption"]))
    band = int(768 // 16 * 1.8)  # no enlargement at 768 px; a 48 px font
    assert image.shape == (512 + band, 2 * 768 + 8, 3)
    assert (image[:512, :768] == 0).all() and (image[:512, 776:] == 200).all()
    widths = []
    for x0 in (0, 776):
        dark = np.flatnonzero((image[512:, x0 : x0 + 768].max(axis=2) < 128).any(axis=0))
        widths.append(dark.max() - dark.min())
    assert widths[0] < widths[1]  # each caption under its own image
    assert isinstance(captioned([Image.fromarray(left)], ["pil"]), Image.Image)


def test_people_off_canvas_are_those_that_draw_nothing_on_it():
    """Over 3,000 random placements: never listed when it draws a pixel; (strokes counted at
    twice their reach) hardly ever missed when it draws none (19 of 3,000 measured)."""
    rng = np.random.default_rng(0)
    listed_but_drawn = drawn_nothing_not_listed = 0
    for _ in range(3000):
        pose = translate(template_pose("standing", 256, 480, 380), *rng.uniform(-700, 700, 2))
        pose[rng.random(18) < 0.3, 2] = 0
        listed = people_off_canvas([pose], (512, 512)) == [0]
        drawn = skeleton_image([pose], (512, 512), (512, 512)).any()
        listed_but_drawn += listed and drawn
        drawn_nothing_not_listed += not listed and not drawn
    assert listed_but_drawn == 0 and drawn_nothing_not_listed < 30
