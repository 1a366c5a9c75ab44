"""Realistic hands and faces for tests and for assets/examples/hands_and_faces.json.

Sizes are fractions of the figure's height (about 1/10 from the wrist to the middle fingertip, a
face about 1/10 wide), placed from the body's own wrists, elbows, nose and ears.
"""

from __future__ import annotations

import numpy as np

from finecontrol.pose import FACE, FACE_KEYPOINTS, HAND_KEYPOINTS, LEFT_HAND, RIGHT_HAND, Parts, template_pose

# Per finger (thumb, index, middle, ring, little): its base's offset from the wrist (along the
# forearm, across the palm towards the thumb; the finger's first keypoint), its angle from the
# forearm in degrees, towards the thumb, and the lengths of its three further bones, in figure heights.
FINGERS = (
    (0.012, 0.014, 40, (0.022, 0.018, 0.015)),
    (0.050, 0.010, 10, (0.024, 0.015, 0.011)),
    (0.052, 0.002, 0, (0.027, 0.017, 0.012)),
    (0.050, -0.006, -10, (0.025, 0.016, 0.011)),
    (0.046, -0.013, -20, (0.019, 0.012, 0.010)),
)


def hand(wrist: np.ndarray, elbow: np.ndarray, height: float, thumb_x: float) -> np.ndarray:
    """21 shown points of an open hand at `wrist`, pointing on from `elbow`, its thumb on the side
    towards the sign of `thumb_x` (-1: the image's left)."""
    along = (wrist - elbow) / np.linalg.norm(wrist - elbow)
    across = np.array([along[1], -along[0]])
    across = across if across[0] * thumb_x >= 0 else -across
    points = [wrist]
    for base_along, base_across, angle, bones in FINGERS:
        a = np.deg2rad(angle)
        direction = np.cos(a) * along + np.sin(a) * across
        point = wrist + (base_along * along + base_across * across) * height
        points.append(point)
        for bone in bones:
            point = point + direction * bone * height
            points.append(point)
    points = np.asarray(points)
    return np.concatenate([points, np.ones((HAND_KEYPOINTS, 1))], axis=1)


def face(nose: np.ndarray, height: float) -> np.ndarray:
    """70 shown points of a frontal face around `nose` (the 68-point layout, then the two pupils):
    the person's right side on the image's left, as the body templates are."""
    w, h = 0.045 * height, 0.07 * height  # half the width; eyes to chin
    half = {  # the image's left half (the person's right) of each feature, as (x, y) in units of w, h
        "jaw": [(-np.cos(t), -0.35 + 1.35 * np.sin(t)) for t in np.linspace(0, np.pi / 2, 9)],
        "brow": [(-0.85, -0.55), (-0.7, -0.65), (-0.5, -0.68), (-0.3, -0.65), (-0.12, -0.58)],
        "eye": [(-0.65, -0.35), (-0.52, -0.4), (-0.35, -0.4), (-0.22, -0.35), (-0.35, -0.31), (-0.52, -0.31)],
    }
    jaw = half["jaw"] + [(-x, y) for x, y in reversed(half["jaw"][:-1])]
    brows = half["brow"] + [(-x, y) for x, y in reversed(half["brow"])]
    right_eye = half["eye"]
    left_eye = [(-x, y) for x, y in right_eye]
    left_eye = [left_eye[3], left_eye[2], left_eye[1], left_eye[0], left_eye[5], left_eye[4]]
    bridge = [(0.0, -0.3 + 0.1 * i) for i in range(4)]
    nostrils = [(-0.2, 0.08), (-0.1, 0.11), (0.0, 0.12), (0.1, 0.11), (0.2, 0.08)]
    outer = [(-0.38, 0.42), (-0.24, 0.36), (-0.1, 0.33), (0.0, 0.35), (0.1, 0.33), (0.24, 0.36), (0.38, 0.42)]
    outer += [(0.24, 0.52), (0.1, 0.56), (0.0, 0.57), (-0.1, 0.56), (-0.24, 0.52)]
    inner = [(-0.3, 0.42), (-0.1, 0.4), (0.0, 0.41), (0.1, 0.4), (0.3, 0.42), (0.1, 0.46), (0.0, 0.47), (-0.1, 0.46)]
    pupils = [(-0.43, -0.355), (0.43, -0.355)]
    units = np.asarray(jaw + brows + bridge + nostrils + right_eye + left_eye + outer + inner + pupils)
    xy = nose + units * (w, h)  # the nose's tip (point 30) on the body's nose
    return np.concatenate([xy, np.ones((FACE_KEYPOINTS, 1))], axis=1)


def person_with_hands_and_face(
    template: str, center_x: float, feet_y: float, height: float
) -> tuple[np.ndarray, Parts]:
    """A template pose with both hands (thumbs away from the body) and a face."""
    pose = template_pose(template, center_x, feet_y, height)
    parts = {
        RIGHT_HAND: hand(pose[4, :2], pose[3, :2], height, thumb_x=-1),
        LEFT_HAND: hand(pose[7, :2], pose[6, :2], height, thumb_x=1),
        FACE: face(pose[0, :2], height),
    }
    return pose, parts
