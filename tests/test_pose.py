import numpy as np
import pytest

from finecontrol.pose import (
    LIMBS,
    NUM_KEYPOINTS,
    TEMPLATE_NAMES,
    mirror,
    pose_center,
    rotate,
    scale,
    template_pose,
    translate,
    visible_limbs,
)


@pytest.mark.parametrize("name", TEMPLATE_NAMES)
def test_templates_are_whole_upright_bodies(name):
    pose = template_pose(name, 200, 500, 400)
    assert pose.shape == (NUM_KEYPOINTS, 3)
    assert len(visible_limbs(pose)) == len(LIMBS)
    assert pose[0, 1] < pose[1, 1] < pose[8, 1] < pose[10, 1]  # nose above neck above hip above ankle
    assert pose[2, 0] < pose[5, 0]  # the person's right shoulder on the image's left
    assert pose[:, 1].max() <= 500


def test_unknown_template_names_the_choices():
    with pytest.raises(ValueError, match="standing"):
        template_pose("flying", 0, 0, 1)


def test_transforms_do_not_modify_their_input():
    pose = template_pose("walking", 200, 500, 400)
    before = pose.copy()
    for out in (translate(pose, 5, 5), scale(pose, 2), rotate(pose, 30), mirror(pose)):
        assert out is not pose
    np.testing.assert_array_equal(pose, before)


def test_translate_moves_every_keypoint_and_keeps_confidence():
    pose = template_pose("standing", 200, 500, 400)
    moved = translate(pose, 10, -20)
    np.testing.assert_allclose(moved[:, :2] - pose[:, :2], np.tile([10, -20], (18, 1)))
    np.testing.assert_array_equal(moved[:, 2], pose[:, 2])


def test_scale_keeps_the_centre():
    pose = template_pose("arms_up", 200, 500, 400)
    big = scale(pose, 1.5)
    np.testing.assert_allclose(pose_center(big), pose_center(pose))
    np.testing.assert_allclose(np.ptp(big[:, 1]), 1.5 * np.ptp(pose[:, 1]))


def test_rotate_full_turn_is_identity_and_quarter_turn_swaps_axes():
    pose = template_pose("sitting", 200, 500, 400)
    np.testing.assert_allclose(rotate(pose, 360), pose, atol=1e-9)
    quarter = rotate(pose, 90, center=np.zeros(2))
    np.testing.assert_allclose(quarter[:, 0], -pose[:, 1], atol=1e-9)
    np.testing.assert_allclose(quarter[:, 1], pose[:, 0], atol=1e-9)


def test_mirror_swaps_sides_and_twice_is_identity():
    pose = template_pose("walking", 200, 500, 400)
    flipped = mirror(pose)
    assert flipped[2, 0] < flipped[5, 0]  # the right shoulder is still on the image's left
    np.testing.assert_allclose(flipped[4, 0], 2 * pose_center(pose)[0] - pose[7, 0])  # right wrist <- left
    np.testing.assert_allclose(mirror(flipped), pose)
